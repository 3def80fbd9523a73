"""Datasets: the built-ins through a mirror, .npz files, image folders, and their failures."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_JOB, clean_environ, run_entrypoint

from trainer.data import BUILTIN_ARCHIVES, Archive, load_dataset
from trainer.errors import DataError


def _pickle(obj: dict) -> bytes:
    return pickle.dumps(obj, protocol=4)


def _cifar_archive(path: Path, classes: int, folder: str, files: dict[str, int],
                   label_key: bytes, names_file: str, names_key: bytes) -> None:
    """A .tar.gz laid out as the real CIFAR python archives, with `files` of N images each."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as tar:
        def add(name: str, payload: bytes) -> None:
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

        for name, count in files.items():
            data = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
            add(name, _pickle({b"data": data, label_key: [i % classes for i in range(count)]}))
        add(names_file, _pickle({names_key: [f"class{i}".encode() for i in range(classes)]}))


def _idx(path: Path, array: np.ndarray, labels: bool) -> None:
    header = (b"\x00\x00\x08\x01" + len(array).to_bytes(4, "big") if labels else
              b"\x00\x00\x08\x03" + len(array).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path, dict]]:
    """Archives in the real formats, served over HTTP on loopback, with their own sha256."""
    root = tmp_path_factory.mktemp("mirror")
    _cifar_archive(root / "cifar-10-python.tar.gz", 10, "cifar-10-batches-py",
                   {**{f"data_batch_{i}": 4 for i in range(1, 6)}, "test_batch": 6},
                   b"labels", "batches.meta", b"label_names")
    _cifar_archive(root / "cifar-100-python.tar.gz", 100, "cifar-100-python",
                   {"train": 200, "test": 100}, b"fine_labels", "meta", b"fine_label_names")
    rng = np.random.default_rng(0)
    np.savez(root / "mnist.npz", x_train=rng.integers(0, 256, (30, 28, 28), dtype=np.uint8),
             y_train=np.arange(30) % 10, x_test=rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
             y_test=np.arange(10))
    for prefix, count in (("train", 20), ("t10k", 10)):
        _idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(count) % 10, labels=True)
        _idx(root / f"{prefix}-images-idx3-ubyte.gz",
             rng.integers(0, 256, (count, 28, 28)), labels=False)
    table = {
        name: tuple(Archive(a.file_name, a.origin,
                            hashlib.sha256((root / a.file_name).read_bytes()).hexdigest())
                    for a in archives)
        for name, archives in BUILTIN_ARCHIVES.items()
    }
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", root, table
    server.shutdown()


@pytest.mark.parametrize(("name", "train", "val", "side", "classes", "first"), [
    ("cifar10", 20, 6, 32, 10, "class0"), ("cifar100", 200, 100, 32, 100, "class0"),
    ("mnist", 30, 10, 28, 10, "0"), ("fashion_mnist", 20, 10, 28, 10, "T-shirt/top"),
])
def test_builtin_datasets_load_through_an_http_mirror(
    mirror: tuple, tmp_path: Path, name: str, train: int, val: int, side: int, classes: int,
    first: str,
) -> None:
    url, _, table = mirror
    data = load_dataset(name, validation_split=0.1, seed=0, mirror=url, archives=table,
                        cache_dir=str(tmp_path))
    assert (len(data.train), len(data.val), data.native_size) == (train, val, side)
    assert len(data.class_names) == classes and data.class_names[0] == first
    assert data.train.images.dtype == np.uint8 and data.train.images.shape[1] == side
    assert set(data.train.labels) <= set(range(classes))


def test_a_mirror_folder_works_like_a_url(mirror: tuple, tmp_path: Path) -> None:
    _, root, table = mirror
    data = load_dataset("mnist", validation_split=0.1, seed=0, mirror=str(root), archives=table,
                        cache_dir=str(tmp_path))
    assert len(data.train) == 30


def test_an_archive_with_the_wrong_sha256_is_refused(mirror: tuple, tmp_path: Path) -> None:
    url, _, _ = mirror
    # The real published hash: the test's stand-in archive can never pass for the real one.
    with pytest.raises(DataError, match="DATASET=mnist: could not fetch mnist.npz"):
        load_dataset("mnist", validation_split=0.1, seed=0, mirror=url, cache_dir=str(tmp_path))


def test_an_unreachable_mirror_is_transient_and_a_missing_archive_is_not(
        mirror: tuple, tmp_path: Path) -> None:
    from conftest import free_ports

    from trainer.errors import TransientError

    _, _, table = mirror
    dead = f"http://127.0.0.1:{free_ports(1)[0]}/"  # nothing listens there: connection refused
    with pytest.raises(TransientError, match=f"could not fetch {dead}mnist.npz"):
        load_dataset("mnist", validation_split=0.1, seed=0, mirror=dead, archives=table,
                     cache_dir=str(tmp_path))
    empty = tmp_path / "empty-mirror"
    empty.mkdir()
    with pytest.raises(DataError, match="could not fetch mnist.npz"):
        load_dataset("mnist", validation_split=0.1, seed=0, mirror=str(empty), archives=table,
                     cache_dir=str(tmp_path))


def test_digits_is_offline_with_a_seeded_validation_split() -> None:
    data = load_dataset("digits", validation_split=0.1, seed=3)
    again = load_dataset("digits", validation_split=0.1, seed=3)
    assert (len(data.train), len(data.val), data.native_size, data.channels) == (1617, 180, 8, 1)
    assert np.array_equal(data.val.labels, again.val.labels)
    assert data.train.images.max() == 255


def test_npz_without_test_split_holds_out_validation(tiny_npz: Path) -> None:
    data = load_dataset(str(tiny_npz), validation_split=0.25, seed=0)
    assert (len(data.train), len(data.val)) == (36, 12)
    assert data.class_names == ("0", "1", "2", "3")


def test_image_folder_uses_its_train_and_val_splits(image_folder: Path) -> None:
    data = load_dataset(str(image_folder), validation_split=0.1, seed=0)
    assert data.class_names == ("cats", "dogs")
    assert (len(data.train), len(data.val), data.native_size) == (20, 8, 12)
    assert all(Path(p).exists() for p in data.train.images)


def _bad_npz(tmp_path: Path, name: str, **arrays: np.ndarray) -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_data_errors(tmp_path: Path) -> None:
    cases = {
        "does not exist": str(tmp_path / "missing.npz"),
        "has 5 images but 4 labels": str(_bad_npz(tmp_path, "lengths.npz",
                                                  x_train=np.zeros((5, 8, 8)),
                                                  y_train=np.zeros(4, int))),
        "single class": str(_bad_npz(tmp_path, "one.npz", x_train=np.zeros((5, 8, 8)),
                                     y_train=np.zeros(5, int))),
    }
    for expected, dataset in cases.items():
        with pytest.raises(DataError, match=expected):
            load_dataset(dataset, validation_split=0.2, seed=0)


@pytest.fixture()
def one_class_folder(tmp_path: Path) -> Path:
    from PIL import Image

    (tmp_path / "one-class" / "only").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "one-class" / "only" / "a.png")
    return tmp_path / "one-class"


@pytest.mark.parametrize("kind", ["missing", "corrupt", "mismatched", "one-class-folder"])
def test_entrypoint_exits_3_for_bad_data(kind: str, tmp_path: Path, one_class_folder: Path) -> None:
    dataset = {
        "missing": tmp_path / "nowhere.npz",
        "corrupt": tmp_path / "corrupt.npz",
        "mismatched": tmp_path / "mismatched.npz",
        "one-class-folder": one_class_folder,
    }[kind]
    if kind == "corrupt":
        dataset.write_bytes(b"PK\x03\x04 not really a zip")
    if kind == "mismatched":
        np.savez(dataset, x_train=np.zeros((6, 8, 8)), y_train=np.array([0, 1, 0, 1]))
    env = clean_environ(TINY_JOB, DATASET=str(dataset), ARTIFACT_URI=str(tmp_path / "runs"))
    result = run_entrypoint(env, timeout=120)
    assert result.returncode == 3, result.stderr
    assert f"DATASET={dataset}" in result.stderr and "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1

"""Datasets: the built-ins through a mirror, .npz files, image folders, and their failures."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import io
import logging
import pickle
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_JOB, clean_environ, run_entrypoint

from trainer.data.builtin import BUILTIN_ARCHIVES, Archive
from trainer.data.load import load_dataset
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


def test_a_download_reports_through_the_log_with_bytes_and_percent(
        mirror: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Keras' own "Downloading data from" line and progress bar would land on stdout, between
    the JSON log lines; the job's log says it instead, with the bytes and percent done."""
    import keras

    from trainer import logs

    keras.config.enable_interactive_logging()  # as a fresh process starts
    monkeypatch.setattr(logs, "DOWNLOAD_PROGRESS_SECONDS", 0.0)  # a line per block
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("trainer")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        url, root, table = mirror
        load_dataset("cifar10", validation_split=0.1, seed=0, mirror=url, archives=table,
                     cache_dir=str(tmp_path))
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert "Downloading data from" not in capsys.readouterr().out
    size = (root / "cifar-10-python.tar.gz").stat().st_size
    lines = [r for r in records if r.getMessage().startswith(
        ("downloading cifar-10-python.tar.gz of cifar10", "downloaded cifar-10-python"))]
    assert lines[0].getMessage() == "downloading cifar-10-python.tar.gz of cifar10"
    assert lines[0].url == f"{url}cifar-10-python.tar.gz"
    percents = [r.percent for r in lines[1:]]
    assert percents == sorted(percents) and percents[-1] == 100.0 and len(percents) > 1
    assert lines[-1].bytes_done == lines[-1].bytes_total == size
    assert lines[-1].getMessage().startswith("downloaded cifar-10-python.tar.gz of cifar10: ")


def test_a_mirror_folder_works_like_a_url(mirror: tuple, tmp_path: Path) -> None:
    _, root, table = mirror
    data = load_dataset("mnist", validation_split=0.1, seed=0, mirror=str(root), archives=table,
                        cache_dir=str(tmp_path))
    assert len(data.train) == 30


def test_a_run_reads_dataset_mirror(mirror: tuple, tmp_path: Path) -> None:
    """DATASET_MIRROR as a run reads it (settings from the environment, trainer.job's loading,
    Keras' own cache in an empty KERAS_HOME): fashion_mnist, which has no published sha256,
    comes from the mirror's stand-in files, not from its origin (unreachable here)."""
    import json
    import subprocess
    import sys

    url, _, _ = mirror
    script = ("import json, os; from trainer.job import load_run_dataset; "
              "from trainer.settings import load_settings; "
              "d = load_run_dataset(load_settings(os.environ)); "
              "print(json.dumps([len(d.train), len(d.val), d.class_names[0]]))")
    env = clean_environ(DATASET="fashion_mnist", DATASET_MIRROR=url,
                        KERAS_HOME=str(tmp_path / "keras"))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [20, 10, "T-shirt/top"]
    assert any(p.name == "train-images-idx3-ubyte.gz"
               for p in (tmp_path / "keras" / "datasets").rglob("*"))


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
    with pytest.raises(TransientError, match=f"could not fetch {dead}mnist.npz") as caught:
        load_dataset("mnist", validation_split=0.1, seed=0, mirror=dead, archives=table,
                     cache_dir=str(tmp_path))
    # How to run where there is no internet, in the message that exit 75 prints.
    assert "Without internet: DATASET_MIRROR=<folder or URL holding mnist.npz>" in str(
        caught.value) and "DATASET=digits, which needs no download" in str(caught.value)
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


def _npz_with(tmp_path: Path, name: str, **arrays: np.ndarray) -> str:
    rng = np.random.default_rng(0)
    arrays.setdefault("x_train", rng.integers(0, 256, (len(arrays["y_train"]), 8, 8),
                                              dtype=np.uint8))
    np.savez(tmp_path / name, **arrays)
    return str(tmp_path / name)


def test_one_hot_and_probability_labels_are_taken_by_argmax(tmp_path: Path) -> None:
    classes = np.arange(20) % 4
    one_hot = np.eye(5, dtype=np.float32)[classes]  # 5 columns: class 4 has no example
    data = load_dataset(_npz_with(tmp_path, "onehot.npz", y_train=one_hot),
                        validation_split=0.25, seed=0)
    assert data.class_names == ("0", "1", "2", "3", "4")
    assert sorted(np.concatenate([data.train.labels, data.val.labels])) == sorted(classes)
    soft = np.full((20, 4), 0.1) + 0.6 * np.eye(4)[classes]
    test_labels = np.eye(4)[np.arange(8) % 4]
    data = load_dataset(_npz_with(tmp_path, "soft.npz", y_train=soft,
                                  x_test=np.zeros((8, 8, 8), np.uint8), y_test=test_labels),
                        validation_split=0.25, seed=0)
    assert np.array_equal(data.train.labels, classes)
    assert np.array_equal(data.val.labels, np.arange(8) % 4)
    column = load_dataset(_npz_with(tmp_path, "column.npz", y_train=classes[:, None]),
                          validation_split=0.25, seed=0)
    assert column.train.labels.ndim == 1 and len(column.train) == 15


@pytest.mark.parametrize(("labels", "message"), [
    (np.array([0, 1, 2.5, 1] * 5), "y_train holds non-integer labels \\(e.g. 2.5\\)"),
    (np.array([0, 1, -1, 1] * 5), "y_train holds negative labels"),
    (np.array(["a", "b"] * 10), "y_train holds <U1 values"),
    (np.zeros((20, 2, 2)), "y_train has shape \\(20, 2, 2\\)"),
])
def test_unusable_labels_are_data_errors_naming_y_train(tmp_path: Path, labels: np.ndarray,
                                                         message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(_npz_with(tmp_path, "bad.npz", y_train=labels), validation_split=0.25,
                     seed=0)


def test_labels_out_of_range_of_the_class_names_name_the_array(tmp_path: Path) -> None:
    dataset = _npz_with(tmp_path, "range.npz", y_train=np.arange(20) % 3,
                        x_test=np.zeros((4, 8, 8), np.uint8), y_test=np.array([0, 1, 2, 7]),
                        class_names=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="y_test holds label 7, out of range for the 3 names"):
        load_dataset(dataset, validation_split=0.25, seed=0)
    whole = load_dataset(_npz_with(tmp_path, "whole.npz", y_train=(np.arange(20) % 3) * 1.0),
                         validation_split=0.25, seed=0)
    assert whole.train.labels.dtype == np.int64  # 2.0 is the class 2


def test_sixteen_bit_arrays_are_scaled_not_clipped(tmp_path: Path) -> None:
    deep = (np.arange(20 * 8 * 8).reshape(20, 8, 8) % 256).astype(np.uint16) * 257
    data = load_dataset(_npz_with(tmp_path, "deep.npz", x_train=deep, y_train=np.arange(20) % 2),
                        validation_split=0.25, seed=0)
    images = np.concatenate([data.train.images, data.val.images])
    assert images.dtype == np.uint8 and images.max() == 255 and images.min() == 0
    assert (images == 255).mean() < 0.01  # clipping would make nearly every pixel 255
    floats = load_dataset(_npz_with(tmp_path, "floats.npz", x_train=deep / 65535.0,
                                    y_train=np.arange(20) % 2), validation_split=0.25, seed=0)
    assert np.array_equal(np.sort(floats.train.images, axis=None),
                          np.sort(data.train.images, axis=None))


def test_the_default_image_size_is_capped_at_the_backbones_native_size() -> None:
    from trainer.models.backbones import NATIVE_IMAGE_SIZE, default_image_size

    assert default_image_size(1600, "MobileNetV2")[0] == 224
    assert default_image_size(1600, "Xception")[0] == 299
    assert default_image_size(1600, "EfficientNetB3")[0] == 300
    assert default_image_size(4032, "NASNetLarge")[0] == 331
    assert default_image_size(32, "ResNet50") == (32, "the images' own side")
    assert default_image_size(8, "VGG16")[0] == 32
    assert default_image_size(40, "InceptionV3")[0] == 75
    assert [NATIVE_IMAGE_SIZE[f"EfficientNetB{i}"] for i in range(8)] == [
        224, 240, 260, 300, 380, 456, 528, 600]
    assert "native input size, 224" in default_image_size(1600, "MobileNetV2")[1]


def test_a_folder_of_photos_has_its_typical_side_whatever_comes_first(tmp_path: Path) -> None:
    from PIL import Image

    from trainer.models.backbones import default_image_size

    for name in ("beach", "forest"):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (1600, 1200), (i * 40, 90, 10)).save(
                tmp_path / "photos" / name / f"IMG_{i}.jpg", quality=50)
    # One small image first in every order: the side is still the photos'.
    Image.new("RGB", (10, 10)).save(tmp_path / "photos" / "beach" / "0-thumb.png")
    for seed in (0, 1, 2):
        data = load_dataset(str(tmp_path / "photos"), validation_split=0.25, seed=seed)
        assert data.native_size == 1600
        assert default_image_size(data.native_size, "MobileNetV2")[0] == 224

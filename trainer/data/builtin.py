"""The built-in datasets: keras.datasets' cifar10, cifar100, mnist and fashion_mnist, downloaded
(or taken from DATASET_MIRROR) and cached by Keras' get_file, and scikit-learn's digits.

    if is_builtin("cifar10"):
        dataset = load_builtin("cifar10", validation_split=0.1, seed=0, mirror=None)

The keras.datasets archives are read here, not by keras.datasets, so that a mirror (a URL or a
folder holding the archives) and the cache folder can be given. They have a test split, used for
validation. Keras (which starts TensorFlow) and scikit-learn are imported only on these paths.
A failed download is a TransientError (exit 75) when the network is down, else a DataError.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.arrays import from_arrays
from trainer.data.splits import Dataset, random_split
from trainer.errors import DataError, TransientError, first_line, is_network_outage
from trainer.logs import downloads_logged, get_logger

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


@dataclass(frozen=True)
class Archive:
    """One file a built-in dataset downloads: where it lives and its published sha256."""

    file_name: str
    origin: str
    sha256: str | None


_KERAS_BUCKET = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
# Origins and hashes as keras.datasets has them (Keras publishes no hash for fashion_mnist).
BUILTIN_ARCHIVES: dict[str, tuple[Archive, ...]] = {
    "cifar10": (Archive("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/",
                        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"),),
    "cifar100": (Archive("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/",
                         "85cd44d02ba6437773c5bbd22e183051d648de2e7d6b014e1ef29b855ba677a7"),),
    "mnist": (Archive("mnist.npz", _KERAS_BUCKET,
                      "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"),),
    "fashion_mnist": tuple(
        Archive(name, _KERAS_BUCKET, None)
        for name in ("train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
                     "t10k-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz")
    ),
}


def is_builtin(name: str) -> bool:
    return name == "digits" or name in BUILTIN_ARCHIVES


def load_builtin(name: str, *, validation_split: float, seed: int, mirror: str | None = None,
                 archives: dict[str, tuple[Archive, ...]] | None = None,
                 cache_dir: str | None = None) -> Dataset:
    """The built-in dataset `name`; its archives fetched from `mirror` (else their origin)
    into `cache_dir` (else Keras' cache, ~/.keras), as `archives` (else BUILTIN_ARCHIVES)
    lists them."""
    if name == "digits":
        return _digits(validation_split, seed)
    table = archives or BUILTIN_ARCHIVES
    files = [_fetch(name, archive, mirror, cache_dir) for archive in table[name]]
    return _builtin(name, files, validation_split, seed)


def _fetch(name: str, archive: Archive, mirror: str | None, cache_dir: str | None) -> str:
    import keras  # starts TensorFlow: only for a download

    base = archive.origin
    if mirror:
        base = mirror if "://" in mirror else Path(mirror).resolve().as_uri()
        base = base.rstrip("/") + "/"
    get_logger().info(f"fetching {archive.file_name} of {name} (cached after the first time)",
                      extra={"origin": base + archive.file_name})
    try:
        with downloads_logged(f"{archive.file_name} of {name}"):
            return keras.utils.get_file(fname=archive.file_name,
                                        origin=base + archive.file_name,
                                        file_hash=archive.sha256, cache_dir=cache_dir,
                                        cache_subdir=os.path.join("datasets", name))
    except Exception as error:  # noqa: BLE001 - get_file raises bare Exception on fetch failures
        reason = first_line(error)
        if is_network_outage(error):
            raise TransientError(
                f"DATASET={name}: could not fetch {base + archive.file_name} ({reason}); the "
                "network or the server is down: retry later. Without internet: DATASET_MIRROR="
                f"<folder or URL holding {archive.file_name}>, a DATASET of your own (a path or "
                "s3:// URI), or DATASET=digits, which needs no download") from error
        raise DataError(
            f"DATASET={name}: could not fetch {archive.file_name} from {base} ({reason}); "
            "set DATASET_MIRROR to a URL or folder holding the archive, or use a local dataset path"
        ) from error


def _builtin(name: str, files: list[str], validation_split: float, seed: int) -> Dataset:
    if name in ("cifar10", "cifar100"):
        (x_train, y_train), (x_test, y_test), names = _read_cifar(name, files[0])
    elif name == "mnist":
        with np.load(files[0], allow_pickle=False) as f:
            x_train, y_train, x_test, y_test = (f[k] for k in ("x_train", "y_train",
                                                                "x_test", "y_test"))
        names = [str(i) for i in range(10)]
    else:
        y_train, x_train, y_test, x_test = (_read_idx(path) for path in files)
        names = FASHION_NAMES
    del validation_split, seed  # the built-ins have a test split, used for validation
    return from_arrays(name, x_train, y_train, x_test, y_test, names)


def _read_cifar(name: str, archive: str) -> tuple[Any, Any, list[str]]:
    # Keras' reader of the pickled batches, and its unpickler that loads no code.
    from keras.src.datasets import cifar, npz_utils

    folder = Path(archive + ".extracted")
    if not folder.is_dir():
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(str(folder) + ".tmp", filter="data")
        except (tarfile.TarError, OSError) as error:
            raise DataError(f"DATASET={name}: {archive} is not a readable archive ({error}); "
                            "delete it so it is fetched again") from error
        os.replace(str(folder) + ".tmp", folder)
    inner = next(folder.iterdir())
    if name == "cifar10":
        parts = [cifar.load_batch(str(inner / f"data_batch_{i}")) for i in range(1, 6)]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        test = cifar.load_batch(str(inner / "test_batch"))
        meta_file, meta_key = inner / "batches.meta", b"label_names"
    else:
        train = cifar.load_batch(str(inner / "train"), label_key="fine_labels")
        test = cifar.load_batch(str(inner / "test"), label_key="fine_labels")
        meta_file, meta_key = inner / "meta", b"fine_label_names"
    with open(meta_file, "rb") as f:
        unpickler = npz_utils.RestrictedUnpickler(f, encoding="bytes")
        names = [n.decode() for n in unpickler.load()[meta_key]]
    nhwc = [(x.transpose(0, 2, 3, 1), np.asarray(y)) for x, y in (train, test)]
    return nhwc[0], nhwc[1], names


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if "labels" in Path(path).name:
        return np.frombuffer(data, np.uint8, offset=8)
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


def _digits(validation_split: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits  # optional path: only for DATASET=digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    train, val = random_split("digits", images, bunch.target, validation_split, seed)
    return Dataset(train, val, tuple(str(i) for i in range(10)), native_size=8, channels=1,
                   source="digits")

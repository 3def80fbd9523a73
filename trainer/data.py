"""Datasets as arrays or file lists: the keras.datasets built-ins, scikit-learn's digits, an
.npz in the keras.datasets layout, a folder of class-named sub-folders of images, or a folder of
TFRecord files (`image`: encoded bytes, `label`: int64).

Every failure here is a DataError (exit 3) that names the dataset and what to do.
"""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainer.errors import DataError, TransientError, is_network_outage
from trainer.logs import get_logger

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]


@dataclass(frozen=True)
class Split:
    """`images` is a uint8 NHWC (or NHW) array, or a list of image file paths."""

    images: Any
    labels: np.ndarray
    encoded: bool = False  # images are encoded bytes (from TFRecords), not paths or pixels

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)


def pixels(split: Split, indices: Any) -> list[np.ndarray]:
    """The images at `indices` as uint8 arrays, decoded where the split holds files or bytes
    (for pictures; training decodes in its tf.data pipeline)."""
    if split.in_memory:
        return [split.images[i] for i in indices]
    sources = [io.BytesIO(split.images[i]) if split.encoded else split.images[i]
               for i in indices]
    return [np.asarray(Image.open(source).convert("RGB")) for source in sources]


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    class_names: tuple[str, ...]
    native_size: int
    channels: int


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


def load_dataset(
    name: str,
    *,
    validation_split: float,
    seed: int,
    mirror: str | None = None,
    archives: dict[str, tuple[Archive, ...]] | None = None,
    cache_dir: str | None = None,
) -> Dataset:
    """Load DATASET (a built-in name or a local path) with a validation split."""
    if name == "digits":
        return _digits(validation_split, seed)
    if name in BUILTIN_ARCHIVES:
        table = archives or BUILTIN_ARCHIVES
        files = [_fetch(name, archive, mirror, cache_dir) for archive in table[name]]
        return _builtin(name, files, validation_split, seed)
    path = Path(name)
    if not path.exists():
        raise DataError(f"DATASET={name} does not exist; give a built-in name (cifar10, "
                        "cifar100, mnist, fashion_mnist, digits), an .npz file or a folder")
    if path.is_dir():
        if _tfrecord_files(path) or _tfrecord_files(path / "train"):
            return _tfrecord_folder(path, validation_split, seed)
        return _image_folder(path, validation_split, seed)
    return _npz(path, validation_split, seed)


def _fetch(name: str, archive: Archive, mirror: str | None, cache_dir: str | None) -> str:
    import keras
    from keras.utils import get_file

    # get_file's progress bar would break the one-JSON-object-per-line log on stdout.
    keras.config.disable_interactive_logging()
    base = archive.origin
    if mirror:
        base = mirror if "://" in mirror else Path(mirror).resolve().as_uri()
        base = base.rstrip("/") + "/"
    get_logger().info(f"fetching {archive.file_name} of {name} (cached after the first time)",
                      extra={"origin": base + archive.file_name})
    try:
        return get_file(fname=archive.file_name, origin=base + archive.file_name,
                        file_hash=archive.sha256, cache_dir=cache_dir,
                        cache_subdir=os.path.join("datasets", name))
    except Exception as error:  # noqa: BLE001 - get_file raises bare Exception on fetch failures
        reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
        if is_network_outage(error):
            raise TransientError(
                f"DATASET={name}: could not fetch {base + archive.file_name} ({reason}); the "
                "network or the server is down: retry later, or set DATASET_MIRROR") from error
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
    return _from_arrays(name, x_train, y_train, x_test, y_test, names)


def _read_cifar(name: str, archive: str) -> tuple[Any, Any, list[str]]:
    from keras.src.datasets.cifar import load_batch
    from keras.src.datasets.npz_utils import RestrictedUnpickler

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
        parts = [load_batch(str(inner / f"data_batch_{i}")) for i in range(1, 6)]
        train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        test = load_batch(str(inner / "test_batch"))
        meta_file, meta_key = inner / "batches.meta", b"label_names"
    else:
        train = load_batch(str(inner / "train"), label_key="fine_labels")
        test = load_batch(str(inner / "test"), label_key="fine_labels")
        meta_file, meta_key = inner / "meta", b"fine_label_names"
    with open(meta_file, "rb") as f:
        names = [n.decode() for n in RestrictedUnpickler(f, encoding="bytes").load()[meta_key]]
    nhwc = [(x.transpose(0, 2, 3, 1), np.asarray(y)) for x, y in (train, test)]
    return nhwc[0], nhwc[1], names


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    if "labels" in Path(path).name:
        return np.frombuffer(data, np.uint8, offset=8)
    return np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)


def _digits(validation_split: float, seed: int) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    train, val = _split("digits", images, bunch.target, validation_split, seed)
    return Dataset(train, val, tuple(str(i) for i in range(10)), native_size=8, channels=1)


def _npz(path: Path, validation_split: float, seed: int) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except Exception as error:  # noqa: BLE001 - numpy raises many kinds for a corrupt file
        raise DataError(f"DATASET={path} is not a readable .npz file ({type(error).__name__}); "
                        "give an .npz with x_train and y_train arrays") from error
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(f"DATASET={path} has no x_train and y_train arrays (it has "
                        f"{', '.join(sorted(arrays)) or 'none'}); use the keras.datasets layout")
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    if x_test is None or y_test is None:
        _check_pair(str(path), "x_train", arrays["x_train"], arrays["y_train"])
        train, val = _split(str(path), arrays["x_train"], arrays["y_train"],
                            validation_split, seed)
        x_test, y_test = val.images, val.labels
        arrays["x_train"], arrays["y_train"] = train.images, train.labels
    return _from_arrays(str(path), arrays["x_train"], arrays["y_train"], x_test, y_test, names)


def _check_pair(source: str, key: str, images: np.ndarray, labels: np.ndarray) -> None:
    if len(images) != len(labels):
        raise DataError(f"DATASET={source}: {key} has {len(images)} images but "
                        f"{len(labels)} labels; give arrays of equal length")
    if len(images) == 0:
        raise DataError(f"DATASET={source}: {key} is empty; give at least one image per class")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"DATASET={source}: {key} has shape {images.shape}; give N x H x W or "
                        "N x H x W x C images with C = 1 or 3")


def _from_arrays(source: str, x_train: Any, y_train: Any, x_val: Any, y_val: Any,
                 names: list[str] | None) -> Dataset:
    _check_pair(source, "x_train", x_train, np.asarray(y_train))
    _check_pair(source, "x_test", x_val, np.asarray(y_val))
    y_train, y_val = (_labels(source, y) for y in (y_train, y_val))
    classes = int(max(y_train.max(), y_val.max())) + 1
    if len(np.unique(y_train)) < 2:
        raise DataError(f"DATASET={source} has a single class; a classifier needs two or more")
    names = names or [str(i) for i in range(classes)]
    if len(names) < classes:
        raise DataError(f"DATASET={source}: labels go up to {classes - 1} but only "
                        f"{len(names)} class names are given")
    x_train, x_val = (_to_uint8(source, x) for x in (x_train, x_val))
    channels = 1 if x_train.ndim == 3 else x_train.shape[-1]
    return Dataset(Split(x_train, y_train), Split(x_val, y_val), tuple(names),
                   native_size=max(x_train.shape[1:3]), channels=channels)


def _labels(source: str, labels: Any) -> np.ndarray:
    labels = np.asarray(labels).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise DataError(f"DATASET={source}: labels must be whole numbers from 0; "
                        f"got {labels.dtype} values")
    return labels.astype(np.int64)


def _to_uint8(source: str, images: np.ndarray) -> np.ndarray:
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.number) or not np.isfinite(images).all():
        raise DataError(f"DATASET={source}: images must be finite numbers (got {images.dtype})")
    scale = 255.0 if images.max() <= 1.0 else 1.0
    return np.clip(np.round(images * scale), 0, 255).astype(np.uint8)


def _split(source: str, images: Any, labels: np.ndarray, fraction: float,
           seed: int) -> tuple[Split, Split]:
    labels = np.asarray(labels).reshape(-1)
    order = np.random.default_rng(seed).permutation(len(labels))
    held = max(1, int(round(len(labels) * fraction)))
    if held >= len(labels):
        raise DataError(f"DATASET={source} has only {len(labels)} images, too few to hold out "
                        "a validation split; give more images or a validation split")
    val, train = order[:held], order[held:]

    def take(index: np.ndarray) -> Any:
        if isinstance(images, np.ndarray):
            return images[index]
        return [images[i] for i in index]

    encoded = bool(len(images)) and isinstance(images[0], bytes)
    return (Split(take(train), labels[train], encoded),
            Split(take(val), labels[val], encoded))


def _image_folder(root: Path, validation_split: float, seed: int) -> Dataset:
    splits = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    train_root = splits.get("train", root)
    class_names = sorted(p.name for p in train_root.iterdir()
                         if p.is_dir() and p.name not in ("train", "val", "test"))
    if len(class_names) < 2:
        raise DataError(f"DATASET={root} has {len(class_names)} class folder(s); give a folder "
                        "with one sub-folder of images per class, at least two classes")
    train = _list_images(train_root, class_names)
    if len(np.unique(train.labels)) < 2:
        raise DataError(f"DATASET={root} has images in only one class folder; a classifier "
                        "needs images of two or more classes")
    val_root = splits.get("val", splits.get("test"))
    if val_root is not None:
        val = _list_images(val_root, class_names)
    else:
        train, val = _split(str(root), train.images, train.labels, validation_split, seed)
    return Dataset(train, val, tuple(class_names), native_size=_image_side(train.images[0]),
                   channels=3)


def _list_images(folder: Path, class_names: list[str]) -> Split:
    paths, labels = [], []
    for label, name in enumerate(class_names):
        for file in sorted((folder / name).rglob("*")) if (folder / name).is_dir() else ():
            if file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(str(file))
                labels.append(label)
    if not paths:
        raise DataError(f"DATASET={folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in "
                        "its class folders")
    return Split(paths, np.asarray(labels, dtype=np.int64))


TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")


def _tfrecord_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in TFRECORD_SUFFIXES)


def _read_tfrecords(source: Path, files: list[Path]) -> Split:
    """Every record's encoded `image` bytes and int64 `label`, read in file order."""
    import tensorflow as tf

    features = {"image": tf.io.FixedLenFeature([], tf.string),
                "label": tf.io.FixedLenFeature([], tf.int64)}
    images, labels = [], []
    try:
        for record in tf.data.TFRecordDataset([str(f) for f in files]):
            example = tf.io.parse_single_example(record, features)
            images.append(example["image"].numpy())
            labels.append(int(example["label"]))
    except (tf.errors.OpError, ValueError) as error:
        message = str(error).splitlines()[0][:200]
        raise DataError(f"DATASET={source}: TFRecords unreadable ({message}); give records "
                        "with an `image` (encoded bytes) and an int64 `label`") from None
    if not images:
        raise DataError(f"DATASET={source}: the TFRecord files hold no records")
    return Split(images, _labels(str(source), labels), encoded=True)


def _tfrecord_folder(root: Path, validation_split: float, seed: int) -> Dataset:
    """TFRecords in the folder (or its train/ and val/ or test/); class names from an optional
    classes.txt, one per line in label order."""
    train_files = _tfrecord_files(root / "train") or _tfrecord_files(root)
    train = _read_tfrecords(root, train_files)
    val_files = _tfrecord_files(root / "val") or _tfrecord_files(root / "test")
    if val_files:
        val = _read_tfrecords(root, val_files)
    else:
        train, val = _split(str(root), train.images, train.labels, validation_split, seed)
    if len(np.unique(train.labels)) < 2:
        raise DataError(f"DATASET={root} has a single class; a classifier needs two or more")
    classes = int(max(train.labels.max(), val.labels.max())) + 1
    names_file = root / "classes.txt"
    names = (names_file.read_text().split("\n") if names_file.is_file() else [])
    names = [n.strip() for n in names if n.strip()] or [str(i) for i in range(classes)]
    if len(names) < classes:
        raise DataError(f"DATASET={root}: labels go up to {classes - 1} but classes.txt names "
                        f"{len(names)} classes")
    return Dataset(train, val, tuple(names), native_size=_image_side(train.images[0]),
                   channels=3)


def _image_side(path: str | bytes) -> int:
    source = io.BytesIO(path) if isinstance(path, bytes) else path
    try:
        with Image.open(source) as image:
            return max(image.size)
    except (OSError, UnidentifiedImageError) as error:
        where = "a TFRecord image" if isinstance(path, bytes) else path
        raise DataError(f"DATASET: {where} is not a readable image ({error}); remove or "
                        "replace it") from error

"""Datasets as arrays, file lists or TFRecord streams: the keras.datasets built-ins,
scikit-learn's digits, an .npz in the keras.datasets layout, a folder of class-named
sub-folders of images (trainer.folders), or a folder of TFRecord files (trainer.tfrecords).

    data = load_dataset("/data/flowers", validation_split=0.1, seed=0)
    data.train, data.val, data.class_names, data.native_size, data.bad_images

No TensorFlow here (see trainer/__init__.py); TFRecords are counted later, by
trainer.tfrecords.count_records, once the strategy is made. Every failure is a DataError
(exit 3) that names the dataset and what to do.
"""

from __future__ import annotations

import gzip
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainer.errors import DataError, TransientError, is_network_outage
from trainer.folders import IMAGE_SUFFIXES, BadImage, scan_images, typical_side
from trainer.logs import get_logger
from trainer.tfrecords import Records, find_records, is_tfrecord_folder

__all__ = ["IMAGE_SUFFIXES", "BadImage", "Dataset", "Records", "Split", "load_dataset"]

FASHION_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
BAD_IMAGES_NAMED = 20  # in a log line or an error; config.json lists them all


@dataclass(frozen=True)
class Split:
    """`images` is a uint8 NHWC (or NHW) array, or a list of image file paths."""

    images: Any
    labels: np.ndarray
    # (worker, workers) when the split holds only that worker's share of the records (a
    # TFRecord shard decoded into memory); None when every worker holds all of it.
    shard: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)


def pixels(split: Split, indices: Any) -> list[np.ndarray]:
    """The images at `indices` as uint8 arrays, decoded where the split holds files (for
    pictures; training decodes in its tf.data pipeline). A file that cannot be read shows as
    gray."""
    if split.in_memory:
        return [split.images[i] for i in indices]
    return [_picture(split.images[i]) for i in indices]


def _picture(path: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError):
        return np.full((8, 8, 3), 128, np.uint8)


@dataclass(frozen=True)
class Dataset:
    train: Split | Records
    val: Split | Records
    class_names: tuple[str, ...]  # empty for TFRecords without classes.txt until counted
    native_size: int  # the images' typical larger side; 0 for TFRecords until counted
    channels: int
    source: str = ""  # DATASET as given, for messages
    bad_images: tuple[BadImage, ...] = ()  # left out (BAD_IMAGES=skip)

    @property
    def streamed(self) -> bool:
        """TFRecords: read from their files every epoch, never all in memory."""
        return isinstance(self.train, Records)


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
    bad_images: Literal["skip", "fail"] = "skip",
) -> Dataset:
    """Load DATASET (a built-in name or a local path) with a validation split. Broken image
    files are left out and logged (`bad_images` "skip") or a DataError (`"fail"`)."""
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
        if is_tfrecord_folder(path):
            return _tfrecord_folder(path, validation_split, seed)
        return _image_folder(path, validation_split, seed, bad_images)
    return _npz(path, validation_split, seed)


def fetch_dataset(location: str, cache: Path, endpoint_url: str | None,
                  addressing_style: str) -> str:
    """An s3:// dataset fetched into `cache` (kept between calls); other locations as given."""
    if not location.startswith("s3://"):
        return location
    from trainer.s3 import download_uri  # boto3 only where S3 is used

    get_logger().info(f"fetching {location}")
    return str(download_uri(location, cache, endpoint_url, addressing_style))


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
    return Dataset(train, val, tuple(str(i) for i in range(10)), native_size=8, channels=1,
                   source="digits")


def _npz(path: Path, validation_split: float, seed: int) -> Dataset:
    source = str(path)
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
    y_train, width = labels_of(source, "y_train", arrays["y_train"])
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    if x_test is None or y_test is None:
        _check_pair(source, "x_train", arrays["x_train"], y_train)
        train, val = _split(source, arrays["x_train"], y_train, validation_split, seed)
        return _from_arrays(source, train.images, train.labels, val.images, val.labels, names,
                            width, ("y_train", "y_train"))
    y_test, test_width = labels_of(source, "y_test", y_test)
    return _from_arrays(source, arrays["x_train"], y_train, x_test, y_test, names,
                        max(width, test_width))


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
                 names: list[str] | None, width: int = 0,
                 keys: tuple[str, str] = ("y_train", "y_test")) -> Dataset:
    """`width`: the number of classes one-hot labels encode (0 for class indices)."""
    y_train, _ = labels_of(source, keys[0], y_train)
    y_val, _ = labels_of(source, keys[1], y_val)
    _check_pair(source, "x_train", x_train, y_train)
    _check_pair(source, "x_test", x_val, y_val)
    if len(np.unique(y_train)) < 2:
        raise DataError(f"DATASET={source} has a single class; a classifier needs two or more")
    classes = max(width, int(max(y_train.max(), y_val.max())) + 1)
    if names:
        for key, labels in zip(keys, (y_train, y_val), strict=True):
            if labels.max() >= len(names):
                raise DataError(f"DATASET={source}: {key} holds label {int(labels.max())}, out "
                                f"of range for the {len(names)} names in class_names; give "
                                f"labels from 0 to {len(names) - 1}")
    names = names or [str(i) for i in range(classes)]
    x_train, x_val = (_to_uint8(source, x) for x in (x_train, x_val))
    channels = 1 if x_train.ndim == 3 else x_train.shape[-1]
    return Dataset(Split(x_train, y_train), Split(x_val, y_val), tuple(names),
                   native_size=max(x_train.shape[1:3]), channels=channels, source=source)


def labels_of(source: str, key: str, labels: Any) -> tuple[np.ndarray, int]:
    """Class indices from `labels`: whole numbers from 0 (N or N x 1), or one-hot or
    probability rows (N x K) taken by argmax; and K for rows (0 otherwise). Anything else is a
    DataError naming `key` (y_train or y_test)."""
    values = np.asarray(labels)
    if values.dtype == bool:
        values = values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.number):
        raise DataError(f"DATASET={source}: {key} holds {values.dtype} values; give whole "
                        "numbers from 0, or one-hot rows")
    if values.size and not np.isfinite(values).all():
        raise DataError(f"DATASET={source}: {key} holds NaN or infinite labels")
    if values.ndim == 2 and values.shape[1] > 1:
        if values.size and values.min() < 0:
            raise DataError(f"DATASET={source}: {key} holds rows of {values.shape[1]} values "
                            "with negative ones; give one-hot or probability rows")
        return values.argmax(axis=1).astype(np.int64), values.shape[1]
    if values.ndim > 2 or (values.ndim == 2 and values.shape[1] != 1):
        raise DataError(f"DATASET={source}: {key} has shape {values.shape}; give N labels, "
                        "or N one-hot rows")
    values = values.reshape(-1)
    if not values.size:
        return values.astype(np.int64), 0
    if np.issubdtype(values.dtype, np.floating) and (values != np.round(values)).any():
        example = values[values != np.round(values)][0]
        raise DataError(f"DATASET={source}: {key} holds non-integer labels (e.g. {example:g}); "
                        "give whole numbers from 0, or one-hot rows")
    if values.min() < 0:
        raise DataError(f"DATASET={source}: {key} holds negative labels (e.g. "
                        f"{values.min():g}); give whole numbers from 0")
    return values.astype(np.int64), 0


def _to_uint8(source: str, images: np.ndarray) -> np.ndarray:
    """uint8 as it is; 16-bit scaled (x / 257, so 65535 is 255) unless its values all fit in 8
    bits; floats in [0, 1] scaled by 255; other numbers rounded and clipped to 0-255."""
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.number) or not np.isfinite(images).all():
        raise DataError(f"DATASET={source}: images must be finite numbers (got {images.dtype})")
    if images.dtype == np.uint16 and images.max() > 255:
        return np.round(images / 257.0).astype(np.uint8)
    scale = 255.0 if images.max() <= 1.0 and np.issubdtype(images.dtype, np.floating) else 1.0
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

    return Split(take(train), labels[train]), Split(take(val), labels[val])


def _image_folder(root: Path, validation_split: float, seed: int,
                  policy: Literal["skip", "fail"]) -> Dataset:
    splits = {name: root / name for name in ("train", "val", "test") if (root / name).is_dir()}
    train_root = splits.get("train", root)
    class_names = sorted(p.name for p in train_root.iterdir()
                         if p.is_dir() and p.name not in ("train", "val", "test")
                         and not p.name.startswith(".") and p.name != "__MACOSX")
    if len(class_names) < 2:
        raise DataError(f"DATASET={root} has {len(class_names)} class folder(s); give a folder "
                        "with one sub-folder of images per class, at least two classes")
    val_root = splits.get("val", splits.get("test"))
    scans = [scan_images(folder, class_names) for folder in (train_root, val_root) if folder]
    bad = [b for scan in scans for b in scan.bad]
    report_bad_images(str(root), bad, policy)
    ignored = sum(scan.ignored for scan in scans)
    if ignored:
        get_logger().info(f"DATASET={root}: left out {ignored} hidden, AppleDouble (._*) or "
                          "non-image file(s)", extra={"ignored_files": ignored})
    train = _listed(root, train_root, scans[0])
    if len(np.unique(train.labels)) < 2:
        raise DataError(f"DATASET={root} has images in only one class folder; a classifier "
                        "needs images of two or more classes")
    if val_root is not None:
        val = _listed(root, val_root, scans[1])
    else:
        train, val = _split(str(root), train.images, train.labels, validation_split, seed)
    return Dataset(train, val, tuple(class_names), native_size=typical_side(train.images),
                   channels=3, source=str(root), bad_images=tuple(bad))


def _listed(root: Path, folder: Path, scan: Any) -> Split:
    if not scan.paths:
        raise DataError(f"DATASET={root}: {folder} holds no readable images "
                        f"({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return Split(scan.paths, scan.labels)


def report_bad_images(source: str, bad: list[BadImage], policy: str) -> None:
    """Broken image files: a DataError naming them (BAD_IMAGES=fail), else one log line naming
    the first BAD_IMAGES_NAMED of them."""
    if not bad:
        return
    named = "; ".join(str(b) for b in bad[:BAD_IMAGES_NAMED])
    more = f" and {len(bad) - BAD_IMAGES_NAMED} more" if len(bad) > BAD_IMAGES_NAMED else ""
    if policy == "fail":
        raise DataError(f"DATASET={source}: {len(bad)} broken image file(s): {named}{more}; "
                        "remove or replace them, or set BAD_IMAGES=skip to leave them out")
    get_logger().warning(f"DATASET={source}: left out {len(bad)} broken image file(s): "
                         f"{named}{more}", extra={"bad_images": len(bad)})


def _tfrecord_folder(root: Path, validation_split: float, seed: int) -> Dataset:
    """TFRecords in the folder (or its train/ and val/ or test/), counted later (see
    trainer.tfrecords)."""
    train, val, names = find_records(root, validation_split, seed)
    return Dataset(train, val, names, native_size=0, channels=3, source=str(root))

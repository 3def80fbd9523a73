"""Loading DATASET: a built-in name (trainer.data.builtin), an .npz in the keras.datasets
layout (trainer.data.arrays), a folder of class-named sub-folders of images
(trainer.data.folders), or a folder of TFRecord files (trainer.data.tfrecords); each with a
validation split.

    data = load_dataset("/data/flowers", validation_split=0.1, seed=0)
    data.train, data.val, data.class_names, data.native_size, data.bad_images

The Dataset and Split it returns are defined in trainer.data.splits (and importable from here). No
TensorFlow here (see trainer/__init__.py), so that a bad dataset fails in a second: TFRecords
are only listed, and counted later by trainer.data.counting.count_records, once the
strategy is made. Every failure is a DataError (exit 3) that names the dataset and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from trainer.data.arrays import load_npz
from trainer.data.bad_images import report_bad_images
from trainer.data.builtin import Archive, is_builtin, load_builtin
from trainer.data.folders import IMAGE_SUFFIXES, FolderScan, scan_images, typical_side
from trainer.data.splits import Dataset, Split, random_split
from trainer.data.tfrecords import files_to_fetch, find_records, is_tfrecord_folder, write_listing
from trainer.errors import DataError
from trainer.logs import get_logger

__all__ = ["Dataset", "Split", "fetch_dataset", "load_dataset"]


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
    if is_builtin(name):
        return load_builtin(name, validation_split=validation_split, seed=seed, mirror=mirror,
                            archives=archives, cache_dir=cache_dir)
    path = Path(name)
    if not path.exists():
        raise DataError(f"DATASET={name} does not exist; give a built-in name (cifar10, "
                        "cifar100, mnist, fashion_mnist, digits), an .npz file or a folder")
    if path.is_dir():
        if is_tfrecord_folder(path):
            return _tfrecord_folder(path, validation_split, seed)
        return _image_folder(path, validation_split, seed, bad_images)
    return load_npz(path, validation_split, seed)


def fetch_dataset(location: str, cache: Path, endpoint_url: str | None,
                  addressing_style: str, worker: int = 0, workers: int = 1) -> str:
    """An s3:// dataset (or weights file) fetched into `cache` (kept between calls); other
    locations as given. Worker `worker` of several fetches only the TFRecord files it reads
    (trainer.data.tfrecords.files_to_fetch) and keeps the prefix's listing beside them."""
    if not location.startswith("s3://"):
        return location
    from trainer.store.s3 import download_uri, list_uri  # boto3 only where S3 is used

    get_logger().info(f"fetching {location}")
    if workers <= 1:
        return str(download_uri(location, cache, endpoint_url, addressing_style))
    names = list_uri(location, endpoint_url, addressing_style)
    local = download_uri(location, cache, endpoint_url, addressing_style,
                         select=files_to_fetch(names, worker, workers))
    if local.is_dir():
        write_listing(local, names)
    return str(local)


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
        train, val = random_split(str(root), train.images, train.labels, validation_split, seed)
    return Dataset(train, val, tuple(class_names), native_size=typical_side(train.images),
                   channels=3, source=str(root), bad_images=tuple(bad))


def _listed(root: Path, folder: Path, scan: FolderScan) -> Split:
    if not scan.paths:
        raise DataError(f"DATASET={root}: {folder} holds no readable images "
                        f"({', '.join(IMAGE_SUFFIXES)}) in its class folders")
    return Split(scan.paths, scan.labels)


def _tfrecord_folder(root: Path, validation_split: float, seed: int) -> Dataset:
    """TFRecords in the folder (or its train/ and val/ or test/), counted later (see
    trainer.data.counting)."""
    train, val, names = find_records(root, validation_split, seed)
    return Dataset(train, val, names, native_size=0, channels=3, source=str(root))

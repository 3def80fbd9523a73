"""Loading DATASET: a built-in name (trainer.data.builtin), an .npz in the keras.datasets
layout (trainer.data.arrays), a folder of class-named sub-folders of images
(trainer.data.folders), or a folder or s3:// prefix of TFRecord, WebDataset or Parquet shards
(trainer.data.shards); each with a validation split.

    data = load_dataset("/data/flowers", validation_split=0.1, seed=0)
    data.train, data.val, data.class_names, data.native_size, data.bad_images

The Dataset and Split it returns are defined in trainer.data.splits (and importable from here). No
TensorFlow here (see trainer/__init__.py), so that a bad dataset fails in a second: shards are
only listed, and counted later by trainer.data.counting.count_records, once the strategy is
made; shards in S3 are streamed, never fetched whole (`fetch_dataset` fetches the rest).
Every failure is a DataError (exit 3) that names the dataset and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from trainer.data.arrays import load_npz
from trainer.data.bad_images import report_bad_images
from trainer.data.builtin import Archive, is_builtin, load_builtin
from trainer.data.folders import IMAGE_SUFFIXES, FolderScan, scan_images, typical_side
from trainer.data.shards import local_shards, remote_shards
from trainer.data.splits import Dataset, Split, random_split
from trainer.data.tfrecords import Remote
from trainer.errors import ConfigError, DataError
from trainer.logs import get_logger

__all__ = ["Dataset", "Split", "fetch_dataset", "load_dataset", "remote_dataset"]


def load_dataset(
    name: str,
    *,
    validation_split: float,
    seed: int,
    mirror: str | None = None,
    archives: dict[str, tuple[Archive, ...]] | None = None,
    cache_dir: str | None = None,
    bad_images: Literal["skip", "fail"] = "skip",
    dataset_format: str | None = None,
) -> Dataset:
    """Load DATASET (a built-in name or a local path) with a validation split. Broken image
    files are left out and logged (`bad_images` "skip") or a DataError (`"fail"`).
    `dataset_format` (DATASET_FORMAT) decides where the files alone would not."""
    if is_builtin(name):
        return load_builtin(name, validation_split=validation_split, seed=seed, mirror=mirror,
                            archives=archives, cache_dir=cache_dir)
    path = Path(name)
    if not path.exists():
        raise DataError(f"DATASET={name} does not exist; give a built-in name (cifar10, "
                        "cifar100, mnist, fashion_mnist, digits), an .npz file or a folder")
    if path.is_dir():
        if dataset_format == "npz":
            raise ConfigError(f"DATASET_FORMAT=npz but DATASET={name} is a folder; give the "
                              ".npz file, or another DATASET_FORMAT")
        shards = local_shards(path, dataset_format, validation_split, seed)
        if shards is not None:
            return shards
        return _image_folder(path, validation_split, seed, bad_images)
    if dataset_format not in (None, "npz"):
        raise ConfigError(f"DATASET_FORMAT={dataset_format} needs a folder or an s3:// prefix, "
                          f"but DATASET={name} is a file")
    return load_npz(path, validation_split, seed)


def remote_dataset(location: str, remote: Remote, *, validation_split: float, seed: int,
                   dataset_format: str | None = None) -> Dataset | None:
    """An s3:// prefix of shards, listed to be streamed through `remote`'s cache; None when
    `location` holds no shards (an .npz or an image folder: `fetch_dataset` fetches those)."""
    if not location.startswith("s3://"):
        return None
    return remote_shards(location, remote, dataset_format, validation_split, seed)


def fetch_dataset(location: str, cache: Path, endpoint_url: str | None,
                  addressing_style: str) -> str:
    """An s3:// .npz, image folder (or weights file) fetched into `cache` (kept between calls);
    other locations as given."""
    if not location.startswith("s3://"):
        return location
    from trainer.store.s3 import download_uri  # boto3 only where S3 is used

    get_logger().info(f"fetching {location}")
    return str(download_uri(location, cache, endpoint_url, addressing_style))


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

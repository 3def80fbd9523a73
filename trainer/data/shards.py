"""Shard datasets: a folder or an S3 prefix of TFRecord, WebDataset (`.tar`) or Parquet files,
listed (never read whole) before the strategy is made.

    dataset = local_shards(Path("/data/imagenet"), None, validation_split=0.1, seed=0)
    dataset = remote_shards("s3://bucket/imagenet", remote, None, validation_split=0.1, seed=0)
    # None when the place holds no shards (an image folder, an .npz)

The format is the files' (`DATASET_FORMAT` picks one when a place holds several). Splits come from
the names: files under a `train/` folder or named with a `train` token (`train-00000.tar`) train,
those with a `validation`, `val` or `valid` token (else `test`) validate; without such files
VALIDATION_SPLIT of the training examples is held out by fingerprint (trainer.data.tfrecords).
Class names: `classes.txt` or `labels.txt` beside the shards (one per line, in label order), else
the Parquet files' Hugging Face metadata, else numbered by the count. Shards in S3 are streamed
through a local cache of DATA_CACHE_BYTES (trainer.data.shard_cache), which must hold the
largest shard. No TensorFlow here; boto3 and pyarrow are imported where they are used.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from trainer.data.splits import Dataset
from trainer.data.tfrecords import TFRECORD_SUFFIXES, Holdout, Records, Remote
from trainer.errors import ConfigError, DataError

SHARD_SUFFIXES = {"tfrecord": TFRECORD_SUFFIXES, "webdataset": (".tar",),
                  "parquet": (".parquet",)}
DATASET_FORMATS = ("npz", "folder", *SHARD_SUFFIXES)
CLASS_FILES = ("classes.txt", "labels.txt")
SEARCH_DEPTH = 3  # folder levels below a local dataset's root where shards are looked for
DEFAULT_CACHE_SHARE = 0.5  # of the free disk under WORK_DIR, when DATA_CACHE_BYTES is not set
_ROLES = {"train": "train", "training": "train", "validation": "val", "val": "val",
          "valid": "val", "test": "test"}


def format_of(name: str) -> str | None:
    """The shard format of a file name (relative path), None for anything else (hidden files,
    index files, images...)."""
    path = PurePosixPath(name)
    if any(part.startswith(".") for part in path.parts):
        return None
    suffix = path.suffix.lower()
    return next((fmt for fmt, suffixes in SHARD_SUFFIXES.items() if suffix in suffixes), None)


def shard_format(names: Sequence[str], forced: str | None, source: str) -> str | None:
    """The shard format of a dataset whose files are `names`; None when it has no shards (or
    DATASET_FORMAT says it is a folder or an .npz)."""
    if forced in ("npz", "folder"):
        return None
    found = sorted({fmt for name in names if (fmt := format_of(name))})
    if forced is not None:
        if forced not in found:
            raise DataError(f"DATASET={source} holds no {forced} files "
                            f"({', '.join(SHARD_SUFFIXES[forced])}); check DATASET and "
                            "DATASET_FORMAT")
        return forced
    if len(found) > 1:
        raise ConfigError(f"DATASET={source} holds {' and '.join(found)} files; set "
                          "DATASET_FORMAT to the one to train on")
    return found[0] if found else None


def _role(name: str) -> str | None:
    path = PurePosixPath(name)
    tokens = [p.lower() for p in path.parts[:-1]] + re.split(r"[-_.]", path.name.lower())
    roles = {_ROLES[t] for t in tokens if t in _ROLES}
    return next((role for role in ("train", "val", "test") if role in roles), None)


def split_files(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(training files, validation files) by their names; no validation files means a holdout."""
    roles = {name: _role(name) for name in sorted(names)}
    train = [n for n, r in roles.items() if r == "train"] or [
        n for n, r in roles.items() if r is None]
    val = [n for n, r in roles.items() if r == "val"] or [
        n for n, r in roles.items() if r == "test"]
    return train, val


def parse_class_names(text: str) -> tuple[str, ...]:
    return tuple(line.strip() for line in text.splitlines() if line.strip())


def _records(source: str, names: list[str], fmt: str, validation_split: float, seed: int,
             locate: Callable[[str], str], details: Callable[[list[str]], dict[str, Any]]
             ) -> tuple[Records, Records]:
    train, val = split_files(names)
    if not train:
        raise DataError(f"DATASET={source} has validation {fmt} files but no training files; "
                        "name them train-*")

    def split(files: list[str], holdout: Holdout | None = None) -> Records:
        return Records(tuple(locate(f) for f in files), holdout, format=fmt, **details(files))

    if val:
        return split(train), split(val)
    return (split(train, Holdout(validation_split, seed, "train")),
            split(train, Holdout(validation_split, seed, "val")))


def _columns(schema: Any, source: str, fmt: str) -> tuple[tuple[str, str], tuple[str, ...]]:
    if fmt != "parquet":
        return ("image", "label"), ()
    from trainer.data.parquet import columns_of

    image, label, names = columns_of(schema, source)
    return (image, label), names


def local_shards(root: Path, forced: str | None, validation_split: float, seed: int
                 ) -> Dataset | None:
    """The shards in a local folder (up to SEARCH_DEPTH levels down), read in place."""
    names = []
    for top, folders, files in os.walk(root):
        depth = len(Path(top).relative_to(root).parts)
        folders[:] = [] if depth + 1 >= SEARCH_DEPTH else sorted(
            f for f in folders if not f.startswith("."))
        names += [str(Path(top, f).relative_to(root).as_posix()) for f in files]
    fmt = shard_format(names, forced, str(root))
    if fmt is None:
        return None
    shards = [n for n in names if format_of(n) == fmt]
    train, val = _records(str(root), shards, fmt, validation_split, seed,
                          lambda name: str(root / name), lambda files: {})
    schema = None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        schema = _readable(lambda: pq.read_schema(train.files[0]), train.files[0])
    columns, class_names = _columns(schema, train.files[0], fmt)
    class_names = next((parse_class_names((root / f).read_text()) for f in CLASS_FILES
                        if (root / f).is_file()), class_names)
    return _dataset(train, val, class_names, columns, str(root))


def _dataset(train: Records, val: Records, class_names: tuple[str, ...],
             columns: tuple[str, str], source: str) -> Dataset:
    from dataclasses import replace

    return Dataset(replace(train, columns=columns), replace(val, columns=columns), class_names,
                   native_size=0, channels=3, source=source)


def _readable(read: Callable[[], Any], name: str) -> Any:
    try:
        return read()
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"DATASET: {name} is not a readable Parquet file "
                        f"({' '.join(str(error).split())[:200]})") from None


def remote_shards(uri: str, remote: Remote, forced: str | None, validation_split: float,
                  seed: int) -> Dataset | None:
    """The shards under an s3:// prefix, to stream; None when it holds none (an .npz or an image
    folder, which are fetched whole)."""
    from trainer.store.s3 import S3Store, split_uri  # boto3 only where S3 is used

    bucket, prefix = split_uri(uri)
    store = S3Store(f"s3://{bucket}", remote.endpoint_url, remote.addressing_style)
    folder = prefix + "/" if prefix else ""
    listing = {o["Key"][len(folder):]: o for o in store.list_objects(folder)
               if o["Key"].startswith(folder) and not o["Key"].endswith("/")}
    fmt = shard_format(list(listing), forced, uri)
    if fmt is None:
        return None
    shards = [n for n in listing if format_of(n) == fmt]
    largest = max(shards, key=lambda n: listing[n]["Size"])
    if listing[largest]["Size"] > remote.cache_bytes:
        raise ConfigError(f"DATA_CACHE_BYTES={remote.cache_bytes} cannot hold the shard "
                          f"{uri.rstrip('/')}/{largest} ({listing[largest]['Size']} bytes); give "
                          "DATA_CACHE_BYTES at least the largest shard's size (or a WORK_DIR "
                          "on a larger disk)")

    def details(files: list[str]) -> dict[str, Any]:
        return {"remote": remote, "sizes": tuple(listing[f]["Size"] for f in files),
                "etags": tuple(listing[f]["ETag"] for f in files)}

    train, val = _records(uri, shards, fmt, validation_split, seed,
                          lambda name: f"s3://{bucket}/{folder}{name}", details)
    schema = None
    if fmt == "parquet":
        import pyarrow.parquet as pq

        from trainer.data.parquet import ObjectFile

        first = train.files[0][len(f"s3://{bucket}/"):]
        schema = _readable(lambda: pq.ParquetFile(
            ObjectFile(store.read_range, first, train.sizes[0])).schema_arrow, train.files[0])
    columns, class_names = _columns(schema, train.files[0], fmt)
    for name in CLASS_FILES:
        if name in listing:
            text = store.read_bytes(folder + name) or b""
            class_names = parse_class_names(text.decode("utf-8", "replace"))
            break
    return _dataset(train, val, class_names, columns, uri)


def default_cache_bytes(work_dir: str) -> int:
    """DEFAULT_CACHE_SHARE of the free disk where WORK_DIR is (or would be made)."""
    place = Path(work_dir).absolute()
    while not place.exists():
        place = place.parent
    return int(shutil.disk_usage(place).free * DEFAULT_CACHE_SHARE)

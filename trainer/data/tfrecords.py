"""TFRecord datasets: files of tf.train.Example records, `image` (encoded bytes) and `label`
(int64), streamed by tf.data and never held in memory as a whole. This module lists and shards
them, without TensorFlow:

    train, val, names = find_records(Path("/data/records"), validation_split=0.1, seed=0)
    indices, by_record = shard(len(train.files), worker, workers)

Reading them needs TensorFlow (trainer.data.reading), and TensorFlow may only start once
the strategy is made (MultiWorkerMirroredStrategy and CPU_REPLICAS configure it at start);
trainer.data.counting then counts them (`count_records`) before training.

The layout is a folder of `*.tfrecord` (`.tfrecords`, `.tfrec`) files, or `train/` with `val/`
or `test/` beside it, and an optional `classes.txt` (one class name per line, in label order).

Sharding, the same in the count and in the pipeline (both read by trainer.data.reading):
with W workers and at least W files, worker w reads files w, w + W, w + 2W... of the sorted list
(so a worker needs only its files, see `files_to_fetch`); with fewer files, every worker reads
every file and keeps record p of file f when (p + f) % W == w.

Without val/ or test/, a record is held out for validation when the FarmHash fingerprint of
"SEED:FILE NAME:POSITION" falls in the first VALIDATION_SPLIT of its range: the same records on
every worker and in `trainer evaluate` with that seed, whatever the order or number of workers
(so the share held out is VALIDATION_SPLIT on average, not exactly).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")
CLASSES_FILE = "classes.txt"
LISTING_FILE = ".s3-listing.json"  # hidden: image folder scans leave it out


@dataclass(frozen=True)
class Holdout:
    """Records chosen by their fingerprint: `part` "val" keeps the held-out ones."""

    fraction: float
    seed: int
    part: Literal["train", "val"]


@dataclass(frozen=True)
class Records:
    """A split streamed from TFRecord files; its counts are known after `count_records`."""

    files: tuple[str, ...]  # every file of the split, sorted: the same list on every worker
    holdout: Holdout | None = None
    count: int | None = None  # records in the split, over every worker
    shard_counts: tuple[int, ...] = ()  # records each worker reads, by worker index
    mean_bytes: float = 0.0  # of a record's encoded image

    def __len__(self) -> int:
        if self.count is None:
            raise RuntimeError("TFRecords not counted yet: call "
                               "trainer.data.counting.count_records")
        return self.count


def is_tfrecord(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in TFRECORD_SUFFIXES and not name.startswith(".")


def tfrecord_files(folder: Path, listing: Sequence[str] | None = None) -> list[Path]:
    """The TFRecord files directly in `folder`; with the `listing` of the dataset's S3 prefix
    (see `write_listing`), the files it names there, fetched or not."""
    if listing is not None:
        root = folder.parent if folder.name in ("train", "val", "test") else folder
        sub = "" if folder == root else folder.name + "/"
        return sorted(root / name for name in listing if name.startswith(sub)
                      and "/" not in name[len(sub):] and is_tfrecord(name[len(sub):]))
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and is_tfrecord(p.name))


def write_listing(root: Path, names: Sequence[str]) -> None:
    """Keep, in the folder of an S3 prefix that a worker fetched only its share of (see
    `files_to_fetch`), the names of every object under the prefix: every worker lists and
    shards the same files from it, those it did not fetch included."""
    (root / LISTING_FILE).write_text(json.dumps(sorted(names)))


def _listing(root: Path) -> list[str] | None:
    try:
        return list(json.loads((root / LISTING_FILE).read_text()))
    except (OSError, ValueError):
        return None


def is_tfrecord_folder(root: Path) -> bool:
    listing = _listing(root)
    return bool(tfrecord_files(root, listing) or tfrecord_files(root / "train", listing))


def find_records(root: Path, validation_split: float, seed: int
                 ) -> tuple[Records, Records, tuple[str, ...]]:
    """The train and validation splits of a TFRecord folder, and the names in classes.txt
    (none when it has no classes.txt: `count_records` numbers the classes then)."""
    listing = _listing(root)
    train_files = tfrecord_files(root / "train", listing) or tfrecord_files(root, listing)
    val_files = (tfrecord_files(root / "val", listing)
                 or tfrecord_files(root / "test", listing))
    names_file = root / CLASSES_FILE
    names = tuple(n.strip() for n in names_file.read_text().splitlines()
                  if n.strip()) if names_file.is_file() else ()
    files = tuple(str(f) for f in train_files)
    if val_files:
        return Records(files), Records(tuple(str(f) for f in val_files)), names
    return (Records(files, Holdout(validation_split, seed, "train")),
            Records(files, Holdout(validation_split, seed, "val")), names)


def shard(files: int, worker: int, workers: int) -> tuple[list[int], bool]:
    """The indices of the files worker `worker` of `workers` reads, and whether it keeps only
    its share of their records (fewer files than workers)."""
    if workers <= 1:
        return list(range(files)), False
    if files >= workers:
        return list(range(worker, files, workers)), False
    return list(range(files)), True


# --- Fetching from S3: each worker what it reads ---------------------------------------------

def files_to_fetch(names: Sequence[str], worker: int, workers: int) -> Callable[[str], bool]:
    """For a TFRecord prefix in S3: which of its objects (`names`, relative to the prefix, e.g.
    `train/part-3.tfrecord`) worker `worker` of `workers` needs: its own share of the training
    files (see `shard`), every validation file and classes.txt. The chief (worker 0) needs every
    training file when the validation split is held out of them, as it evaluates the best
    model on all of it at the end. Anything else (an image folder, an .npz) is fetched whole.

    For trainer.store.s3.download_uri's `select` (the prefix listed first with list_uri), as
    trainer.data.load.fetch_dataset does for a worker of several.
    """
    top = [n for n in names if "/" not in n and is_tfrecord(n)]
    train = sorted(n for n in names if n.startswith("train/") and is_tfrecord(n.split("/", 1)[1]))
    train = train or sorted(top)
    has_val = any(n.split("/", 1)[0] in ("val", "test") and is_tfrecord(n.rsplit("/", 1)[-1])
                  for n in names if "/" in n)
    if not train or workers <= 1 or (worker == 0 and not has_val):
        return lambda name: True
    indices, _ = shard(len(train), worker, workers)
    mine = {train[i] for i in indices}
    return lambda name: name not in train or name in mine

"""Counting TFRecord splits before training: every record a worker reads (labels and image
sizes only), shared between the workers.

    dataset = count_records(dataset, strategy, worker, workers)   # after the strategy is made

Every worker then runs the same number of steps, the class names are known (numbered when the
folder has no classes.txt), the dataset's side is read from the first images' headers, and a
malformed record is a DataError (exit 3) before training, not an internal error during it.

TensorFlow is imported at the top: this module runs only after the strategy is made (see
trainer/__init__.py). The listing without TensorFlow is trainer.data.tfrecords.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from trainer.data.reading import FEATURES, file_records, held_out, parse
from trainer.data.splits import Dataset
from trainer.data.tfrecords import CLASSES_FILE, Holdout, Records, shard
from trainer.errors import DataError, first_line
from trainer.logs import get_logger

SIDE_SAMPLE = 16  # records of the first file whose image headers give the dataset's side
SCAN_THREADS = 4


@dataclass
class _Tally:
    count: int = 0
    image_bytes: int = 0
    low: int = 2**62
    high: int = -1

    def add(self, labels: np.ndarray, sizes: np.ndarray) -> None:
        if len(labels):
            self.count += len(labels)
            self.image_bytes += int(sizes.sum())
            self.low, self.high = min(self.low, int(labels.min())), max(self.high,
                                                                         int(labels.max()))

    def merge(self, other: _Tally) -> None:
        self.count += other.count
        self.image_bytes += other.image_bytes
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)

    def row(self) -> list[int]:
        return [self.count, self.image_bytes, self.low, self.high]


def _tally_file(path: str, index: int, worker: int, workers: int, by_record: bool,
                holdout: Holdout | None) -> tuple[_Tally, _Tally]:
    """This worker's records of one file: (kept for training or "all", held out)."""
    name = tf.constant(Path(path).name)
    ds = file_records(tf.constant(path), tf.constant(index, tf.int64), name, worker, workers,
                      by_record, None)

    def summary(positions: tf.Tensor, records: tf.Tensor) -> tuple:
        example = tf.io.parse_example(records, FEATURES)
        held = (held_out(holdout, name, positions) if holdout is not None
                else tf.zeros_like(positions, tf.bool))
        return example["label"], tf.strings.length(example["image"]), held

    kept, held = _Tally(), _Tally()
    try:
        for labels, sizes, flags in ds.batch(4096).map(summary).as_numpy_iterator():
            kept.add(labels[~flags], sizes[~flags])
            held.add(labels[flags], sizes[flags])
    except (tf.errors.OpError, ValueError) as error:
        message = first_line(error)
        raise DataError(f"DATASET: {path} holds unreadable TFRecords ({message}); give records "
                        "with an `image` (encoded bytes) and an int64 `label`") from None
    if min(kept.low, held.low) < 0:
        raise DataError(f"DATASET: {path} holds a negative label; labels are whole numbers "
                        "from 0")
    return kept, held


def _tally(records: Records, worker: int, workers: int) -> tuple[_Tally, _Tally]:
    indices, by_record = shard(len(records.files), worker, workers)
    kept, held = _Tally(), _Tally()
    with ThreadPoolExecutor(SCAN_THREADS) as pool:
        results = pool.map(lambda i: _tally_file(records.files[i], i, worker, workers, by_record,
                                                 records.holdout), indices)
        for file_kept, file_held in results:
            kept.merge(file_kept)
            held.merge(file_held)
    return kept, held


def _first_side(path: str) -> int:
    """The median larger side of the first images of `path` (their headers only)."""
    sides = []
    try:
        records = list(tf.data.TFRecordDataset(path).take(SIDE_SAMPLE).map(parse)
                       .as_numpy_iterator())
    except tf.errors.OpError:
        return 0  # the count names the file
    for encoded, _ in records:
        try:
            with Image.open(io.BytesIO(encoded)) as image:
                sides.append(max(image.size))
        except (OSError, UnidentifiedImageError, ValueError):
            continue
    return int(np.median(sides)) if sides else 0


def _gather_rows(row: list[int], strategy: Any, workers: int) -> np.ndarray:
    """Every worker's `row`, by worker index (a collective: every worker calls it)."""
    if strategy is None or (workers <= 1 and strategy.num_replicas_in_sync == 1):
        return np.asarray([row], np.int64)
    local_replicas = strategy.num_replicas_in_sync // workers
    # float64: collectives on every device type carry it, and it holds these counts exactly.
    value = tf.constant([row], tf.float64)

    @tf.function
    def gather() -> Any:
        return strategy.run(
            lambda: tf.distribute.get_replica_context().all_gather(value, axis=0))

    gathered = strategy.experimental_local_results(gather())[0].numpy()
    return np.round(gathered[::local_replicas]).astype(np.int64)  # each worker's first replica


def count_records(dataset: Dataset, strategy: Any = None, worker: int = 0, workers: int = 1
                  ) -> Dataset:
    """A TFRecord dataset with its counts, class names and side filled in (other datasets as
    they are). Every worker calls it at the same point: the counts are shared by a collective.
    A worker that finds its records unusable makes every worker exit 3."""
    train, val = dataset.train, dataset.val
    if not isinstance(train, Records) or not isinstance(val, Records):
        return dataset
    error: DataError | None = None
    row = [0] * 10
    files, by_record = shard(len(train.files), worker, workers)
    get_logger().info(f"reading {len(files)} of {len(train.files)} training TFRecord file(s)"
                      + (", a share of their records" if by_record else ""),
                      extra={"worker": worker, "tfrecord_files": len(files)})
    try:
        if val.holdout is not None:
            kept, held = _tally(train, worker, workers)
        else:
            kept, _ = _tally(train, worker, workers)
            held, _ = _tally(val, worker, workers)
        side = _first_side(train.files[0]) if worker == 0 else 0
        row = [0, side, *kept.row(), *held.row()]
    except DataError as found:
        error, row[0] = found, 1
    rows = _gather_rows(row, strategy, workers)
    if error is not None:
        raise error
    if rows[:, 0].any():
        failed = ", ".join(str(i) for i in np.flatnonzero(rows[:, 0]))
        raise DataError(f"DATASET={dataset.source}: worker(s) {failed} found unreadable "
                        "TFRecords; their log names the file")
    return _counted(dataset, train, val, rows, workers)


def _counted(dataset: Dataset, train: Records, val: Records, rows: np.ndarray,
             workers: int) -> Dataset:
    source = dataset.source
    train_counts, val_counts = rows[:, 2], rows[:, 6]
    if not train_counts.sum():
        raise DataError(f"DATASET={source}: the TFRecord files hold no training records")
    if not val_counts.sum():
        raise DataError(f"DATASET={source}: no record was held out for validation; give more "
                        "records, a larger VALIDATION_SPLIT, or a val/ folder of TFRecords")
    if workers > 1 and not train_counts.all():
        idle = ", ".join(str(i) for i in np.flatnonzero(train_counts == 0))
        raise DataError(f"DATASET={source}: worker(s) {idle} of {workers} would read no "
                        "training records; give more (or more even) TFRecord files")
    train_low, train_high = rows[:, 4][train_counts > 0].min(), rows[:, 5].max()
    high = int(max(train_high, rows[:, 9].max()))
    if train_low == train_high:
        raise DataError(f"DATASET={source} has a single class; a classifier needs two or more")
    names = dataset.class_names or tuple(str(i) for i in range(high + 1))
    if high >= len(names):
        raise DataError(f"DATASET={source}: labels go up to {high} but {CLASSES_FILE} names "
                        f"{len(names)} classes")

    def filled(split: Records, counts: np.ndarray, image_bytes: int) -> Records:
        total = int(counts.sum())
        return replace(split, count=total, shard_counts=tuple(int(c) for c in counts),
                       mean_bytes=image_bytes / max(total, 1))

    return replace(dataset, train=filled(train, train_counts, int(rows[:, 3].sum())),
                   val=filled(val, val_counts, int(rows[:, 7].sum())), class_names=names,
                   native_size=int(rows[:, 1].max()))

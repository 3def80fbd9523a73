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

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.data.reading import FEATURES, file_records, held_out, parse
from trainer.data.shard_counting import count_shards
from trainer.data.splits import Dataset
from trainer.data.tallies import SIDE_SAMPLE, counted, gather_or_fail, side_of
from trainer.data.tfrecords import Holdout, Records, shard
from trainer.errors import DataError, first_line
from trainer.logs import get_logger

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
    try:
        records = list(tf.data.TFRecordDataset(path).take(SIDE_SAMPLE).map(parse)
                       .as_numpy_iterator())
    except tf.errors.OpError:
        return 0  # the count names the file
    return side_of([encoded for encoded, _ in records])


def count_records(dataset: Dataset, strategy: Any = None, worker: int = 0, workers: int = 1
                  ) -> Dataset:
    """A TFRecord dataset with its counts, class names and side filled in (WebDataset and
    Parquet shards, and shards in S3, by trainer.data.shard_counting; other datasets as they
    are). Every worker calls it at the same point: the counts are shared by a collective.
    A worker that finds its records unusable makes every worker exit 3."""
    train, val = dataset.train, dataset.val
    if not isinstance(train, Records) or not isinstance(val, Records):
        return dataset
    if not train.native:
        return count_shards(dataset, strategy, worker, workers)
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
    rows = gather_or_fail(row, strategy, workers, error,
                          f"DATASET={dataset.source}: worker(s) {{failed}} found unreadable "
                          "TFRecords; their log names the file")
    return counted(dataset, train, val, rows, workers)

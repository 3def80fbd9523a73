"""Counts of a shard dataset shared by the workers, and what they must allow: every worker
finds its own, a collective gives each worker all of them.

    rows = gather_rows(row, strategy, workers)        # every worker's row, by worker index
    dataset = counted(dataset, train, val, rows, workers)

TensorFlow is imported at the top: this runs after the strategy is made.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import tensorflow as tf
from PIL import Image, UnidentifiedImageError

from trainer.data.splits import Dataset
from trainer.data.tfrecords import Records
from trainer.errors import DataError

SIDE_SAMPLE = 16  # images of the first shard whose headers give the dataset's side


def side_of(encoded: Sequence[bytes]) -> int:
    """The median larger side of encoded images (their headers only); 0 when none is readable."""
    sides = []
    for data in encoded:
        try:
            with Image.open(io.BytesIO(data)) as image:
                sides.append(max(image.size))
        except (OSError, UnidentifiedImageError, ValueError):
            continue
    return int(np.median(sides)) if sides else 0


def gather_or_fail(row: Sequence[float], strategy: Any, workers: int,
                   error: Exception | None, failure: str) -> np.ndarray:
    """gather_rows, which every worker must reach, then the first failure: this worker's own
    `error`, else a DataError naming the workers whose row flags one in column 0 (`failure`
    with `{failed}` standing for their indexes)."""
    rows = gather_rows(row, strategy, workers)
    if error is not None:
        raise error
    if rows[:, 0].any():
        failed = ", ".join(str(i) for i in np.flatnonzero(rows[:, 0]))
        raise DataError(failure.replace("{failed}", failed))
    return rows


def gather_rows(row: Sequence[float], strategy: Any, workers: int) -> np.ndarray:
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



def counted(dataset: Dataset, train: Records, val: Records, rows: np.ndarray,
             workers: int) -> Dataset:
    """The dataset with the counts of `rows` (one per worker: failed, side, then the training and
    the validation part's count, image bytes, lowest and highest label) filled in, and its class
    names; DataError (exit 3) when they cannot make a classifier."""
    source = dataset.source
    train_counts, val_counts = rows[:, 2], rows[:, 6]
    if not train_counts.sum():
        raise DataError(f"DATASET={source}: the shards hold no training records")
    if not val_counts.sum():
        raise DataError(f"DATASET={source}: no record was held out for validation; give more "
                        "records, a larger VALIDATION_SPLIT, or validation shards (val/, val-*)")
    if workers > 1 and not train_counts.all():
        idle = ", ".join(str(i) for i in np.flatnonzero(train_counts == 0))
        raise DataError(f"DATASET={source}: worker(s) {idle} of {workers} would read no "
                        "training records; give more (or more even) shards")
    train_low, train_high = rows[:, 4][train_counts > 0].min(), rows[:, 5].max()
    high = int(max(train_high, rows[:, 9].max()))
    if train_low == train_high:
        raise DataError(f"DATASET={source} has a single class; a classifier needs two or more")
    names = dataset.class_names or tuple(str(i) for i in range(high + 1))
    if high >= len(names):
        raise DataError(f"DATASET={source}: labels go up to {high} but classes.txt names "
                        f"{len(names)} classes")

    def filled(split: Records, counts: np.ndarray, image_bytes: int) -> Records:
        total = int(counts.sum())
        return replace(split, count=total, shard_counts=tuple(int(c) for c in counts),
                       mean_bytes=image_bytes / max(total, 1))

    return replace(dataset, train=filled(train, train_counts, int(rows[:, 3].sum())),
                   val=filled(val, val_counts, int(rows[:, 7].sum())), class_names=names,
                   native_size=int(rows[:, 1].max()))

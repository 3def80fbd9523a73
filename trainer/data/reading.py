"""Reading TFRecord splits (trainer.data.tfrecords) with tf.data: each worker its share of the
records, of the train or held-out part, as serialized records named `FILE#POSITION`.

    ds = read_records(records, worker, workers, order_seed=seed)   # (record, name)
    encoded, label = parse(record)

TensorFlow is imported at the top: this module runs only after the strategy is made (see
trainer/__init__.py). Sharding and the held-out fingerprint are described in trainer.data.tfrecords.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from trainer.data.tfrecords import Holdout, Records, shard

HOLDOUT_BUCKETS = 1_000_000
FEATURES = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}


def held_out(holdout: Holdout, name: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
    """Whether the record at `position` of file `name` is held out for validation."""
    key = tf.strings.join([f"{holdout.seed}:", name, ":", tf.strings.as_string(position)])
    bucket = tf.strings.to_hash_bucket_fast(key, HOLDOUT_BUCKETS)
    return bucket < int(round(holdout.fraction * HOLDOUT_BUCKETS))


def held_mask(holdout: Holdout, name: str, count: int) -> np.ndarray:
    """Which of the `count` records of file `name` are held out (bool per position)."""
    if count == 0:
        return np.zeros(0, bool)
    return held_out(holdout, tf.constant(name), tf.range(count, dtype=tf.int64)).numpy()


def kept_positions(split: Records, index: int, count: int, worker: int, workers: int,
                   by_record: bool, held: np.ndarray | None = None) -> np.ndarray:
    """The positions of file `index` (of `count` records) that worker `worker` reads in
    `split`: its share by record, of the holdout's part. `held`: the file's `held_mask`, when
    the caller has it already."""
    positions = np.arange(count, dtype=np.int64)
    if by_record:
        positions = positions[(positions + index) % workers == worker]
    if split.holdout is not None:
        if held is None:
            held = held_mask(split.holdout, Path(split.files[index]).name, count)
        chosen = held[positions]
        positions = positions[chosen if split.holdout.part == "val" else ~chosen]
    return positions


def file_records(path: tf.Tensor, index: tf.Tensor, name: tf.Tensor, worker: int,
                 workers: int, by_record: bool, holdout: Holdout | None) -> tf.data.Dataset:
    """(position, serialized record) of one file: this worker's share of its records, of the
    holdout's part."""
    ds = tf.data.TFRecordDataset(path).enumerate()
    if by_record:
        ds = ds.filter(lambda position, _: (position + index) % workers == worker)
    if holdout is not None:
        keep_held = holdout.part == "val"

        def wanted(position: tf.Tensor, _: tf.Tensor) -> tf.Tensor:
            held = held_out(holdout, name, position)
            return held if keep_held else tf.logical_not(held)

        ds = ds.filter(wanted)
    return ds


def read_records(records: Records, worker: int, workers: int, order_seed: int | None = None,
                 ) -> tf.data.Dataset:
    """(serialized record, "FILE#POSITION") of the records worker `worker` of `workers` reads:
    files in a shuffled order when `order_seed` is given (the same on every worker), read in
    parallel and interleaved in a deterministic order."""
    indices, by_record = shard(len(records.files), worker, workers)
    paths = [records.files[i] for i in indices]
    names = [Path(p).name for p in paths]
    ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(indices, np.int64), names))
    if order_seed is not None and len(paths) > 1:
        ds = ds.shuffle(len(paths), seed=order_seed, reshuffle_each_iteration=False)

    def file(path: tf.Tensor, index: tf.Tensor, name: tf.Tensor) -> tf.data.Dataset:
        return file_records(path, index, name, worker, workers, by_record,
                            records.holdout).map(lambda position, record: (
                                record, tf.strings.join([name, "#",
                                                         tf.strings.as_string(position)])))

    return ds.interleave(file, cycle_length=max(1, min(len(paths), 16)), block_length=1,
                         num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A serialized record -> (encoded image bytes, int64 label)."""
    example = tf.io.parse_single_example(record, FEATURES)
    return example["image"], example["label"]

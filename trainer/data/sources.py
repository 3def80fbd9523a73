"""What the tf.data pipelines read: which elements of a split a worker reads, in which order,
and those elements decoded (trainer.data.pipeline builds on them, trainer.data.memory caches them).

    ds = decoded(elements(split, worker, workers, order_seed, budget), split, image_size)
    ds = training_elements(split, worker, workers, order_seed, budget, skip)   # repeated
    local_count(split, worker, workers)      # how many elements that worker reads

Shuffling is of indices, not images (the shuffle buffer holds no second copy of the images),
of TFRecords through a bounded buffer of encoded records, and of streamed shards (WebDataset,
Parquet, S3: trainer.data.streaming) by windows of as many. In-memory images become one
tensor for the whole run (`as_tensor`). Files and records are decoded by trainer.data.images at the
training size, in parallel; one that does not decode is left out and named (trainer.
decode_failures). TensorFlow is imported at the top: this runs after the strategy is made.
"""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from trainer.data.decode_failures import guarded
from trainer.data.images import decode, resize
from trainer.data.reading import parse, read_records
from trainer.data.splits import Split
from trainer.data.streaming import raise_on_failure, stream
from trainer.data.tfrecords import Records

# Encoded TFRecords in the training shuffle buffer: at most this many, and at most a tenth of
# the memory budget.
RECORD_SHUFFLE_BUFFER = 10_000
# Streamed shards read in order (evaluation) are read into memory this many examples at a time.
READ_WINDOW = 1024

_tensors: dict[int, tf.Tensor] = {}


def as_tensor(images: np.ndarray) -> tf.Tensor:
    """One tensor per in-memory image array for the whole run, not a copy per epoch."""
    key = id(images)
    if key not in _tensors:
        _tensors[key] = tf.convert_to_tensor(images)
        weakref.finalize(images, _tensors.pop, key, None)
    return _tensors[key]


def as_array(tensor: tf.Tensor) -> np.ndarray:
    """A numpy view of `tensor` (not a copy) that `as_tensor` maps back to `tensor`."""
    view = np.asarray(tensor)
    _tensors[id(view)] = tensor
    weakref.finalize(view, _tensors.pop, id(view), None)
    return view


def elements(split: Split | Records, worker: int, workers: int, order_seed: int | None,
             budget: int) -> tf.data.Dataset:
    """Undecoded elements of this worker's share, shuffled by `order_seed` when given: indices
    into a Split (images in memory or files), (record, name) for TFRecords, (payload, label,
    name) for streamed shards."""
    if isinstance(split, Records) and not split.native:
        buffer = (_stream_window(split, worker, workers, budget) if order_seed is not None
                  else READ_WINDOW)
        return stream(split, worker, workers, order_seed, buffer)
    if isinstance(split, Records):
        ds = read_records(split, worker, workers, order_seed)
        if order_seed is not None:
            ds = ds.shuffle(_record_buffer(split, worker, workers, budget), seed=order_seed,
                            reshuffle_each_iteration=False)
        return ds
    ds = tf.data.Dataset.range(len(split))
    if split.shard is None:
        ds = ds.shard(workers, worker)
    elif split.shard != (worker, workers):
        raise RuntimeError(f"split of worker {split.shard} read by worker {worker}/{workers}")
    if order_seed is not None:
        ds = ds.shuffle(max(1, len(split)), seed=order_seed, reshuffle_each_iteration=False)
    return ds


def training_elements(split: Split | Records, worker: int, workers: int, order_seed: int,
                      budget: int, skip: int) -> tf.data.Dataset:
    """`elements`, repeated, from `skip` elements in: streamed shards start reading there,
    the rest skip what comes before (without decoding it)."""
    if isinstance(split, Records) and not split.native:
        return stream(split, worker, workers, order_seed,
                      _stream_window(split, worker, workers, budget), skip=skip, cyclic=True)
    return elements(split, worker, workers, order_seed, budget).repeat().skip(skip)


def _record_buffer(split: Records, worker: int, workers: int, budget: int) -> int:
    local = local_count(split, worker, workers)
    by_memory = budget // 10 // max(1, int(split.mean_bytes))
    return int(max(1, min(local, RECORD_SHUFFLE_BUFFER, max(by_memory, 64))))


def _stream_window(split: Records, worker: int, workers: int, budget: int) -> int:
    """Streamed shards are shuffled in windows of as many examples as a buffer of records
    holds, and at most an eighth of a worker's share: a window is read whole before its first
    example trains, so a smaller one is less to wait for at the start of an epoch."""
    eighth = local_count(split, worker, workers) // 8
    return min(_record_buffer(split, worker, workers, budget), max(eighth, 64))


def local_count(split: Split | Records, worker: int, workers: int) -> int:
    """The elements of `split` worker `worker` of `workers` reads."""
    if isinstance(split, Records):
        if workers == 1:
            return len(split)
        if len(split.shard_counts) != workers:
            raise RuntimeError(f"TFRecords counted for {len(split.shard_counts)} workers, "
                               f"read by {workers}")
        return split.shard_counts[worker]
    if split.shard is not None:
        return len(split)
    return len(range(worker, len(split), workers))


def decoded(ds: tf.data.Dataset, split: Split | Records, image_size: int,
            finite: bool = False) -> tf.data.Dataset:
    """`elements` -> (uint8 image, label): images in memory looked up, files and records
    decoded at the training size in parallel (broken ones left out and named)."""
    if isinstance(split, Records) and not split.native:
        def convert_payload(payload: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            if split.format == "tfrecord":
                payload, label = parse(payload)
            return resize(decode(payload), image_size), label

        return raise_on_failure(guarded(ds, convert_payload, image_size, finite))
    if isinstance(split, Records):
        def convert_record(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            encoded, label = parse(record)
            return resize(decode(encoded), image_size), label

        return guarded(ds, convert_record, image_size, finite)
    labels = tf.constant(split.labels, tf.int64)
    # Looked up a batch of indices at a time: one lookup per element costs 4 times as much.
    ds = ds.batch(256)
    if split.in_memory:
        images = as_tensor(split.images)
        return ds.map(lambda i: (tf.gather(images, i), tf.gather(labels, i)),
                      num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    paths = tf.constant(list(split.images), tf.string)
    ds = ds.map(lambda i: (tf.gather(paths, i), tf.gather(labels, i), tf.gather(paths, i)))
    return guarded(ds.unbatch(), lambda path, label: (
        resize(decode(tf.io.read_file(path)), image_size), label), image_size, finite)

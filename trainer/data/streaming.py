"""Streamed shards as tf.data elements: WebDataset and Parquet files, and any shards in S3
(downloaded ahead into trainer.data.shard_cache), read by a Python generator while training.

    ds = stream(split, worker, workers, order_seed, buffer, skip=0, cyclic=True)
    # (payload, label, name): encoded image bytes and the label; for TFRecords the serialized
    # record and -1 (parsed in the pipeline)

An epoch of a worker is one pass over its shards: its shards (trainer.data.tfrecords.shard) in an
order shuffled by `order_seed`, each shard's examples in their order (its share of them, of the
holdout's part), cut into windows of `buffer` examples, each window shuffled as a whole (by
`order_seed`, the worker and the window's number). Everything about this order follows from the
per-shard counts, so a resumed epoch (`skip` examples already trained on) starts in the right
window without reading the ones before it: at most one window is read again. A window is read
into memory from its shards (the next one by a thread while this one trains), and a shard is
deleted from the cache once the pass is done with it. `cyclic` passes repeat (the training
stream); otherwise one pass.

A reader that fails (storage unreachable past UPLOAD_TIMEOUT, a shard unreadable) records why
(trainer.data.shard_cache.record_failure) and ends its stream; `raise_on_failure` makes the
pipeline fail then, and the job exits with that failure's code. TensorFlow is imported at the
top: this runs after the strategy is made.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tensorflow as tf

from trainer.data.reading import held_mask, kept_positions
from trainer.data.shard_cache import Reader
from trainer.data.shard_downloads import cache_for
from trainer.data.shard_files import Example, read_shard, shard_name
from trainer.data.stream_failures import failure, record_failure
from trainer.data.tfrecords import Records, shard

YIELD_BATCH = 256  # examples per call into Python: one call per example would cost 50x more
SIGNATURE = (tf.TensorSpec([None], tf.string), tf.TensorSpec([None], tf.int64),
             tf.TensorSpec([None], tf.string))


@functools.lru_cache(maxsize=16)
def _positions(split: Records, worker: int, workers: int) -> tuple[tuple[int, np.ndarray], ...]:
    """(file index, positions) of every shard this worker reads something of, in file order."""
    indices, by_record = shard(len(split.files), worker, workers)
    found = []
    for i in indices:
        count = split.file_counts[i]
        held = (held_mask(split.holdout, shard_name(split.files[i]), count)
                if split.holdout is not None else None)
        positions = kept_positions(split, i, count, worker, workers, by_record, held)
        if len(positions):
            found.append((i, positions))
    return tuple(found)


def plan(split: Records, worker: int, workers: int, order_seed: int | None
         ) -> list[tuple[int, np.ndarray]]:
    """One pass of this worker: (file index, positions) in reading order."""
    found = list(_positions(split, worker, workers))
    if order_seed is not None and len(found) > 1:
        order = np.random.default_rng(order_seed).permutation(len(found))
        found = [found[i] for i in order]
    return found


class _Shards:
    """Opens the shards of a pass: local files in place, S3 shards through the cache."""

    def __init__(self, split: Records, order: list[tuple[int, np.ndarray]], cyclic: bool,
                 start: int) -> None:
        self.split = split
        self.files = [split.files[i] for i, _ in order]
        self.reader: Reader | None = None
        if split.remote is not None:
            bucket = self.files[0][len("s3://"):].split("/", 1)[0]
            base = len(f"s3://{bucket}/")
            self.reader = cache_for(split.remote, bucket).reader(
                [(f[base:], split.sizes[i]) for f, (i, _) in zip(self.files, order,
                                                                   strict=True)], cyclic, start)

    def read(self, step: int, wanted: np.ndarray, done: bool) -> list[Example]:
        """The examples at `wanted` of the shard at `step` of the reading order (pass after
        pass); `done`: the pass reads nothing more of it."""
        location = self.files[step % len(self.files)]
        if self.reader is None:
            return list(read_shard(Path(location), self.split.format, wanted.tolist(),
                                   self.split.columns))
        path = self.reader.open(step)
        try:
            return list(read_shard(path, self.split.format, wanted.tolist(),
                                   self.split.columns, name=shard_name(location)))
        finally:
            self.reader.close(step, done)

    def stop(self) -> None:
        if self.reader is not None:
            self.reader.stop()


def _windows(split: Records, order: list[tuple[int, np.ndarray]], buffer: int, skip: int,
             cyclic: bool, seed: tuple[int, ...] | None) -> Iterator[list[Example]]:
    """Each window's examples, shuffled, from `skip` examples into the stream on; the next
    window is read by a thread while this one is consumed."""
    ends = np.cumsum([len(positions) for _, positions in order])
    total = int(ends[-1])
    starts = ends - [len(positions) for _, positions in order]
    first, within = divmod(skip % total if cyclic else skip, buffer)
    shards = _Shards(split, order, cyclic, int(np.searchsorted(ends, first * buffer, "right")))
    count = -(-total // buffer)
    places = ((passes, window) for passes in (itertools.count() if cyclic else [0])
              for window in range(first if passes == 0 else 0, count))
    stopped = threading.Event()

    def load(passes: int, window: int) -> list[Example]:
        low, high = window * buffer, min(total, (window + 1) * buffer)
        examples: list[Example] = []
        for j in np.flatnonzero((starts < high) & (ends > low)):
            if stopped.is_set():  # the stream was abandoned (the epoch ended)
                return []
            _, positions = order[j]
            begin, end = max(low, starts[j]), min(high, ends[j])
            examples += shards.read(passes * len(order) + int(j),
                                    positions[begin - starts[j]:end - starts[j]],
                                    done=end == ends[j])
        if seed is not None:
            rng = np.random.default_rng([*seed, window])
            examples = [examples[i] for i in rng.permutation(len(examples))]
        return examples

    pool = ThreadPoolExecutor(1, thread_name_prefix="shard-window")
    try:
        pending: Future | None = pool.submit(load, *next(places))
        while pending is not None:
            examples = pending.result()
            following = next(places, None)
            pending = pool.submit(load, *following) if following else None
            yield examples[within:]
            within = 0
    finally:
        stopped.set()
        pool.shutdown(wait=False, cancel_futures=True)
        shards.stop()


def stream(split: Records, worker: int, workers: int, order_seed: int | None, buffer: int,
           skip: int = 0, cyclic: bool = False) -> tf.data.Dataset:
    """(payload, label, name) of this worker's share of `split`, `skip` examples in."""
    order = plan(split, worker, workers, order_seed)
    seed = None if order_seed is None else (order_seed, worker)

    def generate() -> Iterator[tuple[list[bytes], np.ndarray, list[str]]]:
        if not order:
            return
        try:
            for examples in _windows(split, order, max(1, buffer), skip, cyclic, seed):
                for start in range(0, len(examples), YIELD_BATCH):
                    chunk = examples[start:start + YIELD_BATCH]
                    yield ([payload for _, payload, _, _ in chunk],
                           np.asarray([label for _, _, label, _ in chunk], np.int64),
                           [name for _, _, _, name in chunk])
        except Exception as error:  # noqa: BLE001 - recorded, raised by raise_on_failure
            record_failure(error)

    return tf.data.Dataset.from_generator(generate, output_signature=SIGNATURE).unbatch()


def raise_on_failure(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds`, followed by an element that fails when a stream stopped for a failure (after the
    decoding, which skips failing elements, so nothing swallows it)."""

    def check(*_: tf.Tensor) -> tf.Tensor:
        def look() -> bool:
            found = failure()
            if found is not None:
                raise RuntimeError(f"a streamed DATASET reader stopped: {found}")
            return False

        return tf.reshape(tf.py_function(look, [], tf.bool), [])

    blank = tuple(tf.zeros([d or 1 for d in spec.shape], spec.dtype)
                  for spec in ds.element_spec)
    return ds.concatenate(tf.data.Dataset.from_tensors(blank).filter(check))

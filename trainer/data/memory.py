"""Images in memory: the memory budget, and image files or TFRecords decoded once into memory
when they fit in it, so that epochs after the first spend no time decoding.

    budget = memory_budget()                       # a quarter of the container's memory
    dataset = cache_dataset(dataset, image_size, budget, worker, workers)

The limit is the cgroup's in a container (v2 `memory.max`, or v1 `memory.limit_in_bytes`), else
the machine's. Images that fail to decode while caching are left out and named (see
trainer.data.decode_failures). TensorFlow is imported at the top: this runs after the strategy is
made.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from trainer.data.sources import as_array, decoded, elements, local_count
from trainer.data.splits import Dataset, Split
from trainer.data.tfrecords import Records

_NO_LIMIT = 2**62  # cgroup v1 writes a huge number (rounded 2**63 - 1) for "no limit"


def memory_budget(fraction: float = 0.25) -> int:
    """`fraction` of the memory this process may use: the cgroup's limit in a container
    (v2 `memory.max`, or v1 `memory.limit_in_bytes`), else the machine's."""
    return int(memory_limit() * fraction)


def memory_limit(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for file in (cgroup_root / "memory.max", cgroup_root / "memory" / "memory.limit_in_bytes"):
        try:
            limit = file.read_text().strip()
        except OSError:
            continue
        if limit.isdigit() and int(limit) < _NO_LIMIT:  # v2 writes "max" for no limit
            return min(int(limit), machine)
    return machine


def cache_decoded(split: Split | Records, image_size: int, budget: int, worker: int = 0,
                  workers: int = 1) -> Split | Records:
    """Image files or TFRecords decoded once, at the training size, into memory when they fit
    in `budget` bytes, so that epochs after the first spend no time decoding; otherwise the
    split as it is (decoded anew every epoch); shards in S3 always stream. TFRecords: worker
    `worker`'s share of them;
    image files: all of them, as every worker reads its share of the list.
    Images that fail to decode are left out (see `take_decode_failures`)."""
    if isinstance(split, Split):
        if split.in_memory:
            return split
        worker, workers = 0, 1
    elif split.remote is not None:
        return split  # shards in S3 stream while training: reading all first is the wait to avoid
    local = local_count(split, worker, workers)
    if local * image_size * image_size * 3 > budget:
        return split
    ds = decoded(elements(split, worker, workers, None, 0), split, image_size,
                 finite=True).batch(256)
    images = np.empty((local, image_size, image_size, 3), np.uint8)
    labels = np.empty(local, np.int64)
    filled = 0
    for image_batch, label_batch in ds.as_numpy_iterator():
        images[filled:filled + len(label_batch)] = image_batch
        labels[filled:filled + len(label_batch)] = label_batch
        filled += len(label_batch)
    # The pipeline reads the images from this tensor; the array is a view of it, not a copy.
    tensor = tf.convert_to_tensor(images[:filled])
    del images
    view = as_array(tensor)
    sharded = isinstance(split, Records) and workers > 1
    return Split(view, labels[:filled], shard=(worker, workers) if sharded else None)


def cache_dataset(dataset: Dataset, image_size: int, budget: int, worker: int = 0,
                  workers: int = 1) -> Dataset:
    """`cache_decoded` for both splits, the training split first, within one `budget`. With
    several workers, TFRecords' validation split stays streamed: each worker evaluates its
    share every epoch, and the chief all of it at the end."""
    train = cache_decoded(dataset.train, image_size, budget, worker, workers)
    used = train.images.nbytes if train is not dataset.train and isinstance(train, Split) else 0
    val = dataset.val
    if not (isinstance(val, Records) and workers > 1):
        val = cache_decoded(val, image_size, budget - used)
    return replace(dataset, train=train, val=val)

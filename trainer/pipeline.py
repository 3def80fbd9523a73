"""tf.data input pipelines: shard per worker, shuffle per epoch, decode and preprocess in
parallel, batch per replica, prefetch.

    fn = training_input(split, size, preprocess, global_batch, seed, epoch)
    strategy.distribute_datasets_from_function(fn)

A split is images in memory, image files, or TFRecord files (trainer.data). Training shuffles
indices, not images (the shuffle buffer holds no second copy of the images), and TFRecords
through a bounded buffer of encoded records. Training batches repeat so that every worker runs
the same number of steps; evaluation is padded to the same number of batches on every worker
with zero-weight examples, so its metrics are exact, and each label travels with its image.

Images are decoded by trainer.images. A file or record that does not decode is left out, its
name recorded (`take_decode_failures`), never an error that ends the run: the caller applies
BAD_IMAGES to them (`apply_bad_images_policy`).
"""

from __future__ import annotations

import math
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import tensorflow as tf

from trainer.data import BAD_IMAGES_NAMED, Dataset, Split
from trainer.errors import DataError
from trainer.images import decode, resize
from trainer.logs import get_logger
from trainer.tfrecords import Records, parse, read_records

AUTOTUNE = tf.data.AUTOTUNE
# Encoded TFRecords in the training shuffle buffer: at most this many, and at most a tenth of
# the memory budget.
RECORD_SHUFFLE_BUFFER = 10_000
_NO_LIMIT = 2**62  # cgroup v1 writes a huge number (rounded 2**63 - 1) for "no limit"


def batch_preprocessor(image_size: int, preprocess_input: Callable) -> Callable:
    """uint8 NHW[C] batch -> float32 N x size x size x 3, the backbone's preprocessing applied."""

    def preprocess(images: tf.Tensor) -> tf.Tensor:
        images = tf.cast(images, tf.float32)
        if images.shape.rank == 3:
            images = images[..., tf.newaxis]
        if images.shape[-1] == 1:
            images = tf.image.grayscale_to_rgb(images)
        if images.shape[1] != image_size or images.shape[2] != image_size:
            images = tf.image.resize(images, (image_size, image_size))
        return preprocess_input(images)

    return preprocess


# --- Images that do not decode -----------------------------------------------------------

# A failed element is named by the next one that decodes, which carries the names of the
# FAILURE_WINDOW - 1 elements before it (longer runs of failures are counted, not named).
FAILURE_WINDOW = 16
_failures: list[str] = []
_unnamed_failures = [0]
_failures_lock = threading.Lock()


def _note_failures(window: tf.Tensor, missing: tf.Tensor) -> tf.Tensor:
    count = int(missing)
    named = min(count, FAILURE_WINDOW - 1)
    names = [n.decode("utf-8", "replace") for n in window.numpy()[-1 - named:-1]]
    with _failures_lock:
        _failures.extend(names)
        _unnamed_failures[0] += count - named
    return tf.constant(True)


def take_decode_failures() -> list[str]:
    """The files (or `FILE#POSITION` records) that failed to decode since the last call, each
    once, in order (and "N more" for failures too close together to be named)."""
    with _failures_lock:
        found = list(dict.fromkeys(_failures))
        if _unnamed_failures[0]:
            found.append(f"{_unnamed_failures[0]} more image(s) next to those")
        _failures.clear()
        _unnamed_failures[0] = 0
    return found


def apply_bad_images_policy(names: list[str], policy: str, run_id: str = "") -> list[str]:
    """Images found broken while decoding: a DataError naming them (BAD_IMAGES=fail), else a
    warning naming the first few; returns `names`."""
    if not names:
        return names
    named = "; ".join(names[:BAD_IMAGES_NAMED])
    more = f" and {len(names) - BAD_IMAGES_NAMED} more" if len(names) > BAD_IMAGES_NAMED else ""
    if policy == "fail":
        raise DataError(f"DATASET: {len(names)} image(s) failed to decode: {named}{more}; "
                        "remove or replace them, or set BAD_IMAGES=skip to leave them out")
    get_logger().warning(f"left out {len(names)} image(s) that failed to decode: {named}{more}",
                         extra={"run_id": run_id, "bad_images": len(names)})
    return names


def _guarded(ds: tf.data.Dataset, convert: Callable, image_size: int,
             finite: bool) -> tf.data.Dataset:
    """Elements (*payload, name) -> (image, label) by `convert(*payload)`, in parallel and in
    order; an element whose conversion fails (a broken file, a malformed record) is left out,
    and its name recorded (see `take_decode_failures`).

    tf.data cannot catch an error, only skip the element (`ignore_errors`). So each element
    carries its sequence number and the names of the elements up to it, and the first element
    after a gap in the numbers names the ones missing. A `finite` stream ends with a blank
    element, never converted, so that failures at its very end are found too."""
    ds = ds.map(lambda *fields: (fields, tf.constant(False)))
    if finite:
        blank = tuple(tf.zeros(spec.shape, spec.dtype) for spec in ds.element_spec[0])
        ds = ds.concatenate(tf.data.Dataset.from_tensors((blank, tf.constant(True))))

    def remember(window: tf.Tensor, element: tuple) -> tuple:
        fields, last = element
        window = tf.concat([window[1:], tf.reshape(fields[-1], [1])], 0)
        return window, (fields[:-1], last, window)

    def attempt(number: tf.Tensor, element: tuple) -> tuple:
        payload, last, window = element
        image, label = tf.cond(last, lambda: (tf.zeros((image_size, image_size, 3), tf.uint8),
                                              tf.constant(-1, tf.int64)),
                               lambda: convert(*payload))
        return number, image, label, last, window

    def gap(previous: tf.Tensor, element: tuple) -> tuple:
        number, image, label, last, window = element
        return number, (image, label, last, window, number - previous - 1)

    def report(image: tf.Tensor, label: tf.Tensor, last: tf.Tensor, window: tf.Tensor,
               missing: tf.Tensor) -> tuple:
        # Python runs only after a failure.
        noted = tf.cond(missing > 0, lambda: tf.reshape(
            tf.py_function(_note_failures, [window, missing], tf.bool), []),
            lambda: tf.constant(True))
        with tf.control_dependencies([noted]):
            return tf.identity(image), tf.identity(label), last

    ds = ds.scan(tf.fill([FAILURE_WINDOW], ""), remember).enumerate()
    ds = ds.map(attempt, num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors()
    ds = ds.scan(tf.constant(-1, tf.int64), gap).map(report)
    if finite:
        ds = ds.filter(lambda image, label, last: tf.logical_not(last))
    return ds.map(lambda image, label, last: (image, label))


# --- Sources: which elements a worker reads, in which order ---------------------------------

_tensors: dict[int, tf.Tensor] = {}


def _as_tensor(images: np.ndarray) -> tf.Tensor:
    """One tensor per in-memory image array for the whole run, not a copy per epoch."""
    key = id(images)
    if key not in _tensors:
        _tensors[key] = tf.convert_to_tensor(images)
        weakref.finalize(images, _tensors.pop, key, None)
    return _tensors[key]


def _elements(split: Split | Records, worker: int, workers: int, order_seed: int | None,
              budget: int) -> tf.data.Dataset:
    """Undecoded elements of this worker's share, shuffled by `order_seed` when given: indices
    into a Split (images in memory or files), (record, name) for TFRecords."""
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


def _record_buffer(split: Records, worker: int, workers: int, budget: int) -> int:
    local = _local_count(split, worker, workers)
    by_memory = budget // 10 // max(1, int(split.mean_bytes))
    return int(max(1, min(local, RECORD_SHUFFLE_BUFFER, max(by_memory, 64))))


def _local_count(split: Split | Records, worker: int, workers: int) -> int:
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


def _decoded(ds: tf.data.Dataset, split: Split | Records, image_size: int,
             finite: bool = False) -> tf.data.Dataset:
    """`_elements` -> (uint8 image, label): images in memory looked up, files and records
    decoded at the training size in parallel (broken ones left out and named)."""
    if isinstance(split, Records):
        def convert_record(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
            encoded, label = parse(record)
            return resize(decode(encoded), image_size), label

        return _guarded(ds, convert_record, image_size, finite)
    labels = tf.constant(split.labels, tf.int64)
    # Looked up a batch of indices at a time: one lookup per element costs 4 times as much.
    ds = ds.batch(256)
    if split.in_memory:
        images = _as_tensor(split.images)
        return ds.map(lambda i: (tf.gather(images, i), tf.gather(labels, i)),
                      num_parallel_calls=AUTOTUNE).unbatch()
    paths = tf.constant(list(split.images), tf.string)
    ds = ds.map(lambda i: (tf.gather(paths, i), tf.gather(labels, i), tf.gather(paths, i)))
    return _guarded(ds.unbatch(), lambda path, label: (
        resize(decode(tf.io.read_file(path)), image_size), label), image_size, finite)


def augmenter(kinds: tuple[str, ...]) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """One uint8 image (H x W or H x W x C) and a stateless seed -> the image augmented:
    `flip` left-right, `translate` by up to 1/8 of the side (reflected padding, then a crop back
    to the size), `crop` a random 70-100% square resized back."""

    def augment(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        grayscale = image.shape.rank == 2
        if grayscale:
            image = image[..., tf.newaxis]
        shape = tf.shape(image)
        seeds = tf.random.experimental.stateless_split(seed, 3)
        if "flip" in kinds:
            image = tf.image.stateless_random_flip_left_right(image, seeds[0])
        if "crop" in kinds:
            side = tf.minimum(shape[0], shape[1])
            fraction = tf.random.stateless_uniform((), seeds[1], 0.7, 1.0)
            crop = tf.maximum(1, tf.cast(tf.cast(side, tf.float32) * fraction, tf.int32))
            image = tf.image.stateless_random_crop(image, (crop, crop, shape[2]), seeds[1])
            image = tf.image.resize(image, shape[:2])
            image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
        if "translate" in kinds:
            pad = tf.maximum(1, tf.minimum(shape[0], shape[1]) // 8)
            padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]], mode="REFLECT")
            image = tf.image.stateless_random_crop(padded, shape, seeds[2])
        return image[..., 0] if grayscale else image

    return augment


def training_input(
    split: Split | Records, image_size: int, preprocess: Callable, global_batch: int, seed: int,
    epoch: int, skip_steps: int = 0, augment: tuple[str, ...] = (), budget: int | None = None,
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A dataset function for `strategy.distribute_datasets_from_function`, for one epoch,
    starting after `skip_steps` steps (a run resumed mid-epoch), with the `augment`
    augmentations (see `augmenter`) applied to each image."""
    order_seed = seed * 100_003 + epoch  # by epoch: a resumed run sees the order it would have
    budget = memory_budget() if budget is None else budget

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(global_batch)
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        ds = _elements(split, context.input_pipeline_id, context.num_input_pipelines,
                       order_seed, budget)
        ds = ds.repeat().skip(skip_steps * local_replicas * per_replica)
        ds = _decoded(ds, split, image_size)
        if augment:
            # Seeded by (SEED, epoch, worker), so that a rerun of an epoch sees the same images.
            seeds = tf.data.Dataset.random(seed=order_seed * 1009
                                           + context.input_pipeline_id).batch(2)
            transform = augmenter(augment)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda pair, key: (transform(pair[0], key), pair[1]),
                num_parallel_calls=AUTOTUNE)
        ds = ds.batch(per_replica, drop_remainder=True)
        ds = ds.map(lambda x, y: (preprocess(x), y), num_parallel_calls=AUTOTUNE)
        return ds.prefetch(AUTOTUNE)

    return dataset_fn


def padded_length(examples: int, global_batch: int) -> int:
    return -(-examples // global_batch) * global_batch


def evaluation_steps(split: Split | Records, global_batch: int, pipelines: int = 1) -> int:
    """Batches each of `pipelines` input pipelines (workers) gives in `evaluation_input`: the
    same on all of them, enough for the largest share."""
    local_batch = global_batch // pipelines
    largest = max(_local_count(split, w, pipelines) for w in range(pipelines))
    return max(1, math.ceil(largest / local_batch))


def evaluation_input(
    split: Split | Records, image_size: int, preprocess: Callable, global_batch: int
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """(images, labels, weights) batches: every example once, each with its label, then
    zero-weight padding up to `evaluation_steps` batches on every worker."""

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        workers = context.num_input_pipelines
        per_replica = context.get_per_replica_batch_size(global_batch)
        local_batch = per_replica * (context.num_replicas_in_sync // workers)
        steps = evaluation_steps(split, global_batch, workers)
        ds = _decoded(_elements(split, context.input_pipeline_id, workers, None, 0), split,
                      image_size, finite=True)
        ds = ds.map(lambda x, y: (x, y, tf.constant(1.0)))
        shape = (split.images.shape[1:] if isinstance(split, Split) and split.in_memory
                 else (image_size, image_size, 3))
        padding = tf.data.Dataset.from_tensors(
            (tf.zeros(shape, tf.uint8), tf.constant(0, tf.int64), tf.constant(0.0))).repeat()
        ds = ds.concatenate(padding).take(steps * local_batch)
        ds = ds.batch(per_replica, drop_remainder=True)
        ds = ds.map(lambda x, y, w: (preprocess(x), y, w), num_parallel_calls=AUTOTUNE)
        return ds.prefetch(AUTOTUNE)

    return dataset_fn


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
    split as it is (decoded anew every epoch). TFRecords: worker `worker`'s share of them;
    image files: all of them, as every worker reads its share of the list.
    Images that fail to decode are left out (see `take_decode_failures`)."""
    if isinstance(split, Split):
        if split.in_memory:
            return split
        worker, workers = 0, 1
    local = _local_count(split, worker, workers)
    if local * image_size * image_size * 3 > budget:
        return split
    ds = _decoded(_elements(split, worker, workers, None, 0), split, image_size,
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
    view = np.asarray(tensor)
    _tensors[id(view)] = tensor
    weakref.finalize(view, _tensors.pop, id(view), None)
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


def fit_batch(batch_size: int, replicas: int, examples: int) -> tuple[int, int]:
    """The batch size per replica and the steps per epoch: BATCH_SIZE, unless the global batch
    (BATCH_SIZE x replicas) is more than the training examples; then the largest per-replica
    batch that the examples fill (at least 1), so a tiny dataset trains as model.fit would."""
    if examples >= batch_size * replicas:
        return batch_size, examples // (batch_size * replicas)
    per_replica = max(1, examples // replicas)
    return per_replica, max(1, examples // (per_replica * replicas))


def first_images(split: Split | Records, image_size: int, count: int, worker: int = 0,
                 workers: int = 1) -> Split:
    """Up to `count` images of `split` (this worker's share of TFRecords) in memory, with their
    labels: what pictures and export checks can index, whatever the split holds."""
    if isinstance(split, Split) and split.in_memory:
        return Split(split.images[:count], split.labels[:count])
    ds = _decoded(_elements(split, worker, workers, None, 0), split, image_size,
                  finite=True).take(count).batch(max(1, count))
    images, labels = next(ds.as_numpy_iterator(), (np.zeros((0, image_size, image_size, 3),
                                                            np.uint8), np.zeros(0, np.int64)))
    return Split(images, labels)


def preview(dataset: Dataset, image_size: int, worker: int = 0, workers: int = 1,
            count: int = 32) -> Dataset:
    """The dataset with a training split that pictures can index: TFRecords' first `count`
    images (of this worker's share) decoded; other datasets as they are."""
    if not isinstance(dataset.train, Records):
        return dataset
    return replace(dataset, train=first_images(dataset.train, image_size, count, worker,
                                               workers))

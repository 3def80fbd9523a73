"""tf.data input pipelines: shard per worker, shuffle per epoch, decode and preprocess in
parallel, batch per replica, prefetch.

    fn = training_input(split, size, preprocess, global_batch, seed, epoch)
    strategy.distribute_datasets_from_function(fn)

A split is images in memory, image files, or TFRecord files (trainer.data.splits); which elements a
worker reads, and their decoding, are trainer.data.sources. Training batches repeat so that every
worker runs the same number of steps; evaluation is padded to the same number of batches on
every worker with zero-weight examples, so its metrics are exact, and each label travels with
its image. The in-memory cache and the memory budget are trainer.data.memory; images that do not
decode are left out and named (trainer.data.decode_failures, trainer.data.bad_images).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import tensorflow as tf

from trainer.data.memory import memory_budget
from trainer.data.sources import decoded, elements, local_count, training_elements
from trainer.data.splits import Dataset, Split
from trainer.data.tfrecords import Records
from trainer.settings import Settings

AUTOTUNE = tf.data.AUTOTUNE


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


def epoch_input(settings: Settings, split: Split | Records, image_size: int, preprocess: Callable,
                global_batch: int, epoch: int, skip_steps: int = 0
                ) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """The training input of `epoch` as a run's settings make it: SEED's order, AUGMENT."""
    return training_input(split, image_size, preprocess, global_batch, settings.seed, epoch,
                          skip_steps=skip_steps, augment=settings.augmentations)


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
        ds = training_elements(split, context.input_pipeline_id, context.num_input_pipelines,
                               order_seed, budget, skip_steps * local_replicas * per_replica)
        ds = decoded(ds, split, image_size)
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
    largest = max(local_count(split, w, pipelines) for w in range(pipelines))
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
        ds = decoded(elements(split, context.input_pipeline_id, workers, None, 0), split,
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
    ds = decoded(elements(split, worker, workers, None, 0), split, image_size,
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

"""tf.data input pipelines: shard per worker, shuffle per epoch, decode and preprocess in
parallel, batch per replica, prefetch.

Training batches repeat so that every worker runs the same number of steps; evaluation is
padded to whole global batches with zero-weight examples, so its metrics are exact.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.data import Split

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


def _source(split: Split, weights: np.ndarray | None = None) -> tf.data.Dataset:
    columns: tuple[Any, ...] = (split.images, split.labels)
    if weights is not None:
        columns += (weights,)
    return tf.data.Dataset.from_tensor_slices(columns)


def _decoded(ds: tf.data.Dataset, split: Split, image_size: int) -> tf.data.Dataset:
    """File paths or encoded bytes become uint8 images of the training size, in parallel."""
    if split.in_memory:
        return ds

    def decode(source: tf.Tensor, *rest: tf.Tensor) -> tuple:
        encoded = source if split.encoded else tf.io.read_file(source)
        image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
        image = tf.image.resize(image, (image_size, image_size))
        return (tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8), *rest)

    return ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=False)


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
    split: Split, image_size: int, preprocess: Callable, global_batch: int, seed: int, epoch: int,
    skip_steps: int = 0, augment: tuple[str, ...] = (),
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """A dataset function for `strategy.distribute_datasets_from_function`, for one epoch,
    starting after `skip_steps` steps (a run resumed mid-epoch), with the `augment`
    augmentations (see `augmenter`) applied to each image."""

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(global_batch)
        local_replicas = context.num_replicas_in_sync // context.num_input_pipelines
        ds = _source(split).shard(context.num_input_pipelines, context.input_pipeline_id)
        # Seeded by epoch, so a resumed run sees the order it would have seen.
        ds = ds.shuffle(len(split), seed=seed * 100_003 + epoch, reshuffle_each_iteration=False)
        ds = ds.repeat().skip(skip_steps * local_replicas * per_replica)
        ds = _decoded(ds, split, image_size)
        if augment:
            # Seeded by (SEED, epoch, worker), so that a rerun of an epoch sees the same images.
            seeds = tf.data.Dataset.random(seed=(seed * 100_003 + epoch) * 1009
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


def evaluation_input(
    split: Split, image_size: int, preprocess: Callable, global_batch: int
) -> Callable[[tf.distribute.InputContext], tf.data.Dataset]:
    """Every example once, padded to whole global batches; padding has weight 0."""
    total = padded_length(len(split), global_batch)
    pad = total - len(split)
    index = np.concatenate([np.arange(len(split)), np.zeros(pad, dtype=np.int64)])
    weights = np.concatenate([np.ones(len(split)), np.zeros(pad)]).astype(np.float32)
    images = split.images[index] if split.in_memory else [split.images[i] for i in index]
    padded = Split(images, split.labels[index], split.encoded)

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(global_batch)
        ds = _source(padded, weights).shard(context.num_input_pipelines,
                                            context.input_pipeline_id)
        ds = _decoded(ds, padded, image_size).batch(per_replica, drop_remainder=True)
        ds = ds.map(lambda x, y, w: (preprocess(x), y, w), num_parallel_calls=AUTOTUNE)
        return ds.prefetch(AUTOTUNE)

    return dataset_fn


def memory_budget(fraction: float = 0.25) -> int:
    """`fraction` of the memory this process may use: the cgroup's limit in a container, else
    the machine's."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit.isdigit():
            return int(int(limit) * fraction)
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * fraction)


def cache_decoded(split: Split, image_size: int, budget: int) -> Split:
    """Image files or encoded bytes decoded once, at the training size, into memory when they
    fit in `budget` bytes, so that epochs after the first spend no time decoding; otherwise
    the split as it is (decoded anew every epoch)."""
    if split.in_memory or len(split) * image_size * image_size * 3 > budget:
        return split
    ds = _decoded(_source(split), split, image_size).batch(256)
    images, labels = [], []
    for image_batch, label_batch in ds.as_numpy_iterator():
        images.append(image_batch)
        labels.append(label_batch)
    return Split(np.concatenate(images), np.concatenate(labels))

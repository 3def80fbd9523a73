"""The one decode and resize of images, shared by training, evaluation, `trainer predict` and
the serving exports, so that a model sees the same pixels wherever an image comes from.

    images = resize(decode(tf.io.read_file(path)), 224)   # uint8 224 x 224 x 3

TensorFlow's own decoder reads JPEG, PNG, GIF (first frame) and BMP; 16-bit PNGs are scaled to
8 bits (the high byte, as `tf.image.convert_image_dtype` does), not clipped, so a 16-bit image
gives the pixels of its 8-bit twin; grayscale becomes RGB and an alpha channel is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from trainer.errors import DataError


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes (a scalar string tensor) -> uint8 H x W x 3."""
    # dtype uint8 makes the decoder scale 16-bit PNGs down (v >> 8) rather than clip them.
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def to_rgb(images: tf.Tensor) -> tf.Tensor:
    """uint8 [..., H, W, C] with 1 (grayscale), 3 or 4 (RGBA: alpha dropped) channels ->
    [..., H, W, 3]."""
    channels = images.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(images)
    if channels == 4:
        return images[..., :3]
    return images


def resize(images: tf.Tensor, size: int | tuple[int, int]) -> tf.Tensor:
    """uint8 H x W x C or N x H x W x C -> uint8 size x size (or height x width): bilinear
    (`tf.image.resize`), then rounded and clipped, as training resizes; an image already of
    that size is unchanged."""
    height, width = (size, size) if isinstance(size, int) else size
    images = tf.convert_to_tensor(images)
    if images.shape[-3] == height and images.shape[-2] == width:
        return tf.cast(images, tf.uint8)
    resized = tf.image.resize(images, (height, width), method="bilinear")
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def read(path: str | Path) -> np.ndarray:
    """An image file decoded to uint8 H x W x 3; DataError naming the file if it is not one."""
    try:
        return decode(tf.io.read_file(str(path))).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as error:
        reason = " ".join(str(error.message).split())[:200]
        raise DataError(f"IMAGE {path} is not a readable JPEG, PNG, GIF or BMP image "
                        f"({reason})") from error


def batch(images: Sequence[np.ndarray] | np.ndarray, size: int) -> np.ndarray:
    """uint8 images of any sizes (H x W, H x W x 1, H x W x 3 or 4 each) -> one uint8
    N x size x size x 3 array, each converted to RGB and resized the training way."""
    resized = []
    for image in images:
        image = np.asarray(image)
        if image.ndim == 2:
            image = image[..., np.newaxis]
        resized.append(resize(to_rgb(tf.convert_to_tensor(image, tf.uint8)), size).numpy())
    return np.stack(resized) if resized else np.zeros((0, size, size, 3), np.uint8)

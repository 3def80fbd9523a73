"""The one decode and resize of images, shared by training, evaluation, `trainer predict` and
the serving exports, so that a model sees the same pixels wherever an image comes from.

    images = resize(decode(tf.io.read_file(path)), 224)   # uint8 224 x 224 x 3

TensorFlow's decoders read PNG, JPEG, GIF (the first frame) and BMP. Grayscale becomes RGB, an
alpha channel is dropped, and a 16-bit PNG is scaled to 8 bits (x / 257, rounded: 65535 is 255),
not clipped, so it gives the pixels of its 8-bit twin. 8-bit images decode exactly as
`tf.io.decode_image(channels=3)` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from trainer.errors import DataError, first_line

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A PNG's first chunk is IHDR; its bit depth is byte 24 of the file.
_PNG_BIT_DEPTH_OFFSET = 24


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded image bytes (a scalar string tensor) -> uint8 H x W x 3.

    Raises tf.errors.InvalidArgumentError for bytes that are no readable image."""
    encoded = tf.convert_to_tensor(encoded, tf.string)
    # The first bytes, padded: substr past the end of a short (broken) file would raise.
    head = tf.strings.join([tf.strings.substr(encoded, 0, _PNG_BIT_DEPTH_OFFSET + 1),
                            b"\0" * (_PNG_BIT_DEPTH_OFFSET + 1)])
    is_png16 = tf.logical_and(
        tf.equal(tf.strings.substr(head, 0, len(PNG_SIGNATURE)), PNG_SIGNATURE),
        tf.equal(tf.strings.substr(head, _PNG_BIT_DEPTH_OFFSET, 1), b"\x10"))

    def deep() -> tf.Tensor:
        # decode_image(dtype=uint16) would widen 8-bit JPEGs by 256 but 8-bit PNGs by 257, so
        # only true 16-bit PNGs take this branch, and x / 257 maps 0..65535 onto 0..255.
        image = tf.io.decode_png(encoded, channels=3, dtype=tf.uint16)
        return tf.cast(tf.round(tf.cast(image, tf.float32) / 257.0), tf.uint8)

    def shallow() -> tf.Tensor:
        return tf.io.decode_image(encoded, channels=3, expand_animations=False)

    image = tf.cond(is_png16, deep, shallow)
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
        reason = first_line(Exception(error.message))
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

"""The one decode-and-resize: encoded image bytes become the uint8 pixels that training,
evaluation and prediction feed the model.

    image = decode(tf.io.read_file("photo.jpg"))   # uint8 H x W x 3
    batch = resize(images, 224)                     # uint8 N x 224 x 224 x 3 (or H x W x 3)

TensorFlow's decoders read PNG, JPEG, GIF (the first frame) and BMP. Grayscale becomes RGB, an
alpha channel is dropped, and a 16-bit PNG is scaled to 8 bits (x / 257, rounded: 65535 is 255),
not clipped. 8-bit images decode exactly as `tf.io.decode_image(channels=3)` does.
"""

from __future__ import annotations

import tensorflow as tf

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


def resize(images: tf.Tensor, size: int) -> tf.Tensor:
    """uint8 H x W x C (or N x H x W x C) -> uint8 size x size: bilinear, rounded, clipped."""
    resized = tf.image.resize(images, (size, size))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)

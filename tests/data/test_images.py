"""The one decode-and-resize: 8-bit images as TensorFlow decodes them, 16-bit PNGs scaled."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from trainer.data.images import decode, resize


def _encoded(image: np.ndarray, kind: str) -> bytes:
    if kind == "png16":
        return tf.io.encode_png(tf.constant(image)).numpy()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=kind.upper())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    rng = np.random.default_rng(0)
    smooth = np.linspace(0, 255, 24)[None, :, None] * np.ones((20, 1, 3))
    return np.clip(smooth + rng.normal(0, 20, (20, 24, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif", "bmp"])
def test_eight_bit_images_decode_as_tensorflow_decodes_them(photo: np.ndarray, kind: str) -> None:
    encoded = _encoded(photo, kind)
    expected = tf.io.decode_image(encoded, channels=3, expand_animations=False).numpy()
    decoded = decode(tf.constant(encoded)).numpy()
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, expected)
    if kind in ("png", "bmp"):  # lossless
        assert np.array_equal(decoded, photo)


def test_a_16_bit_png_decodes_to_its_8_bit_twin(photo: np.ndarray) -> None:
    rng = np.random.default_rng(1)
    # The 16-bit image carries more precision than its 8-bit twin: noise below 1/255.
    deep = (photo.astype(np.int64) * 257 + rng.integers(-128, 128, photo.shape)).clip(0, 65535)
    from_deep = decode(tf.constant(_encoded(deep.astype(np.uint16), "png16"))).numpy()
    from_eight = decode(tf.constant(_encoded(photo, "png"))).numpy()
    assert from_deep.dtype == np.uint8
    assert np.abs(from_deep.astype(int) - from_eight.astype(int)).max() <= 1
    assert (from_deep == 255).mean() == pytest.approx((photo == 255).mean(), abs=0.01)
    # Pillow, by contrast, clips a 16-bit image to 255 almost everywhere.


def test_grayscale_becomes_rgb_also_16_bit(photo: np.ndarray) -> None:
    gray = photo[..., 0]
    from_gray = decode(tf.constant(_encoded(gray, "png"))).numpy()
    assert from_gray.shape == (*gray.shape, 3) and np.array_equal(from_gray[..., 2], gray)
    deep = gray.astype(np.uint16)[..., None] * 257
    assert np.array_equal(decode(tf.constant(_encoded(deep, "png16"))).numpy(), from_gray)


def test_broken_bytes_raise_inside_tensorflow() -> None:
    for broken in (b"", b"hello, not an image", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40):
        with pytest.raises(tf.errors.InvalidArgumentError):
            decode(tf.constant(broken))


def test_resize_is_bilinear_rounded_and_works_on_batches(photo: np.ndarray) -> None:
    one = resize(tf.constant(photo), 12).numpy()
    expected = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(photo, (12, 12))), 0, 255),
                       tf.uint8).numpy()
    assert one.dtype == np.uint8 and np.array_equal(one, expected)
    batch = resize(tf.constant(np.stack([photo, photo])), 12).numpy()
    assert batch.shape == (2, 12, 12, 3) and np.array_equal(batch[1], one)

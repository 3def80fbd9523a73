"""The tf.data pipeline: arrays, image files and TFRecord bytes become the same batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_tfrecords

from trainer.data import Split, load_dataset
from trainer.errors import DataError
from trainer.pipeline import (
    augmenter,
    batch_preprocessor,
    cache_decoded,
    evaluation_input,
    padded_length,
    training_input,
)


def _identity(images: tf.Tensor) -> tf.Tensor:
    return images


def _batches(dataset_fn, count: int) -> list:  # noqa: ANN001
    dataset = dataset_fn(tf.distribute.InputContext())
    return [tuple(t.numpy() for t in batch) for batch in dataset.take(count)]


def test_grayscale_arrays_become_rgb_at_the_training_size() -> None:
    data = load_dataset("digits", validation_split=0.1, seed=0)
    prep = batch_preprocessor(32, _identity)
    (images, labels), = _batches(training_input(data.train, 32, prep, 16, 0, 1), 1)
    assert images.shape == (16, 32, 32, 3) and images.dtype == np.float32
    assert np.array_equal(images[..., 0], images[..., 2]) and images.max() <= 255
    assert set(labels) <= set(range(10))


def test_each_epoch_has_its_own_reproducible_order() -> None:
    data = load_dataset("digits", validation_split=0.1, seed=0)
    prep = batch_preprocessor(8, _identity)
    first = _batches(training_input(data.train, 8, prep, 32, 0, 1), 3)
    again = _batches(training_input(data.train, 8, prep, 32, 0, 1), 3)
    second = _batches(training_input(data.train, 8, prep, 32, 0, 2), 3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(first, second, strict=True))


def test_evaluation_pads_with_zero_weights() -> None:
    data = load_dataset("digits", validation_split=0.1, seed=0)
    prep = batch_preprocessor(8, _identity)
    steps = padded_length(len(data.val), 64) // 64
    batches = _batches(evaluation_input(data.val, 8, prep, 64), steps + 1)
    assert len(batches) == steps == 3
    weights = np.concatenate([b[2] for b in batches])
    assert weights.sum() == len(data.val) == 180 and set(weights) == {0.0, 1.0}
    labels = np.concatenate([b[1] for b in batches])[weights == 1]
    assert np.array_equal(labels, data.val.labels)


def test_image_files_and_tfrecords_decode_to_the_same_pixels(image_folder: Path,
                                                             tmp_path: Path) -> None:
    from PIL import Image

    files = load_dataset(str(image_folder), validation_split=0.1, seed=0)
    pixels = [np.asarray(Image.open(p)) for p in files.val.images]
    records = write_tfrecords(tmp_path / "records", pixels, list(files.val.labels))
    (records / "classes.txt").write_text("cats\ndogs\n")
    from_records = load_dataset(str(records), validation_split=0.25, seed=0)
    assert from_records.class_names == ("cats", "dogs") and from_records.native_size == 12
    assert len(from_records.train) + len(from_records.val) == len(files.val)
    prep = batch_preprocessor(12, _identity)
    (a_images, a_labels, _), = _batches(evaluation_input(files.val, 12, prep, 8), 1)
    assert np.array_equal(a_images, np.stack(pixels).astype(np.float32))
    assert np.array_equal(a_labels, files.val.labels)
    (b_images, b_labels, _), = _batches(evaluation_input(from_records.val, 12, prep, 2), 1)
    assert b_images.shape == (2, 12, 12, 3)
    for image, label in zip(b_images, b_labels, strict=True):
        # every decoded record is one of the source images, with its label
        assert any(np.array_equal(image, p) and label == y
                   for p, y in zip(pixels, files.val.labels, strict=True))


def test_unreadable_tfrecords_are_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "broken.tfrecord").write_bytes(b"definitely not a record" * 10)
    with pytest.raises(DataError, match="TFRecords unreadable"):
        load_dataset(str(tmp_path), validation_split=0.1, seed=0)


def _gradient_image(channels: int | None = 3) -> np.ndarray:
    """An image whose every pixel differs from its mirror and its neighbours."""
    row = np.arange(16, dtype=np.uint8) * 15
    image = np.tile(row, (16, 1)) + np.arange(16, dtype=np.uint8)[:, None]
    return image if channels is None else np.repeat(image[..., None], channels, axis=-1)


@pytest.mark.parametrize("kind", ["flip", "crop", "translate"])
def test_each_augmentation_changes_images_keeping_shape_and_type(kind: str) -> None:
    image = _gradient_image()
    transform = augmenter((kind,))
    outputs = [transform(tf.constant(image), tf.constant([s, 1], tf.int64)).numpy()
               for s in range(8)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    assert any(not np.array_equal(o, image) for o in outputs)
    if kind == "flip":
        assert all(np.array_equal(o, image) or np.array_equal(o, image[:, ::-1]) for o in outputs)
    again = transform(tf.constant(image), tf.constant([3, 1], tf.int64)).numpy()
    assert np.array_equal(again, outputs[3])  # the same seed, the same image


def test_augmentation_handles_grayscale_and_reaches_the_batches() -> None:
    image = _gradient_image(channels=None)
    assert augmenter(("translate",))(tf.constant(image), tf.constant([0, 1], tf.int64)).shape == (
        16, 16)
    split = Split(np.stack([image] * 8), np.zeros(8, dtype=np.int64))
    prep = batch_preprocessor(16, _identity)
    (plain, _), = _batches(training_input(split, 16, prep, 8, 0, 1), 1)
    (augmented, _), = _batches(training_input(split, 16, prep, 8, 0, 1,
                                              augment=("flip", "translate")), 1)
    assert np.array_equal(plain[0], plain[1])
    assert not all(np.array_equal(augmented[0], a) for a in augmented[1:])


def test_decoded_images_are_cached_in_memory_when_they_fit(image_folder: Path) -> None:
    data = load_dataset(str(image_folder), validation_split=0.1, seed=0)
    assert not data.train.in_memory
    cached = cache_decoded(data.train, 16, budget=10**9)
    assert cached.in_memory and cached.images.shape == (len(data.train), 16, 16, 3)
    prep = batch_preprocessor(16, _identity)
    # The same images as decoding every epoch gives, each with its own label.
    fresh = _batches(evaluation_input(data.train, 16, prep, 4), 5)
    kept = _batches(evaluation_input(cached, 16, prep, 4), 5)

    def pairs(batches: list) -> list:
        return sorted((int(y), x.tobytes()) for xs, ys, _ in batches
                      for x, y in zip(xs, ys, strict=True))

    assert pairs(fresh) == pairs(kept)
    assert cache_decoded(data.train, 16, budget=100) is data.train  # too big: decoded per epoch

"""The tf.data pipeline: arrays, image files and TFRecord bytes become the same batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import write_tfrecords

from trainer.data.counting import count_records
from trainer.data.decode_failures import take_decode_failures
from trainer.data.load import Split, load_dataset
from trainer.data.memory import cache_decoded, memory_limit
from trainer.data.pipeline import (
    augmenter,
    batch_preprocessor,
    epoch_input,
    evaluation_input,
    evaluation_steps,
    fit_batch,
    training_input,
)
from trainer.errors import DataError
from trainer.settings import load_settings


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
    steps = evaluation_steps(data.val, 64)
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
    from_records = count_records(load_dataset(str(records), validation_split=0.25, seed=0))
    assert from_records.class_names == ("cats", "dogs") and from_records.native_size == 12
    assert len(from_records.train) + len(from_records.val) == len(files.val)
    prep = batch_preprocessor(12, _identity)
    (a_images, a_labels, _), = _batches(evaluation_input(files.val, 12, prep, 8), 1)
    assert np.array_equal(a_images, np.stack(pixels).astype(np.float32))
    assert np.array_equal(a_labels, files.val.labels)
    steps = evaluation_steps(from_records.val, 2)
    batches = _batches(evaluation_input(from_records.val, 12, prep, 2), steps + 1)
    assert len(batches) == steps and batches[0][0].shape == (2, 12, 12, 3)
    real = [(image, label) for images, labels, weights in batches
            for image, label, weight in zip(images, labels, weights, strict=True) if weight]
    assert len(real) == len(from_records.val) > 0
    for image, label in real:
        # every decoded record is one of the source images, with its label
        assert any(np.array_equal(image, p) and label == y
                   for p, y in zip(pixels, files.val.labels, strict=True))


def test_unreadable_tfrecords_are_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "broken.tfrecord").write_bytes(b"definitely not a record" * 10)
    with pytest.raises(DataError, match="broken.tfrecord holds unreadable TFRecords"):
        count_records(load_dataset(str(tmp_path), validation_split=0.1, seed=0))


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
    """Through epoch_input, as training reads AUGMENT: `auto` augments cifar10 only."""
    image = _gradient_image(channels=None)
    assert augmenter(("translate",))(tf.constant(image), tf.constant([0, 1], tf.int64)).shape == (
        16, 16)
    split = Split(np.stack([image] * 8), np.zeros(8, dtype=np.int64))
    prep = batch_preprocessor(16, _identity)

    def batch(**variables: str) -> np.ndarray:
        settings = load_settings({"DATASET": "digits", **variables})
        (images, _), = _batches(epoch_input(settings, split, 16, prep, 8, epoch=1), 1)
        return images

    for plain in (batch(AUGMENT="none"), batch(AUGMENT="auto")):
        assert all(np.array_equal(plain[0], p) for p in plain[1:])
    for augmented in (batch(AUGMENT="flip,translate"), batch(AUGMENT="auto", DATASET="cifar10")):
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


def test_images_that_fail_to_decode_are_left_out_and_named(image_folder: Path,
                                                           tmp_path: Path) -> None:
    data = load_dataset(str(image_folder), validation_split=0.1, seed=0)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    take_decode_failures()
    files = Split([*data.val.images, str(broken), str(tmp_path / "deleted.png")],
                  np.array([*data.val.labels, 0, 1]))
    prep = batch_preprocessor(12, _identity)
    batches = _batches(training_input(files, 12, prep, 4, 0, 1), 6)  # 3 rounds of 8 good
    assert all(image.std() > 0 for images, _ in batches for image in images)
    assert set(take_decode_failures()) == {str(broken), str(tmp_path / "deleted.png")}
    evaluated = _batches(evaluation_input(files, 12, prep, 4), evaluation_steps(files, 4))
    weights = np.concatenate([w for _, _, w in evaluated])
    assert weights.sum() == len(data.val)  # only the images that decode count
    assert set(take_decode_failures()) == {str(broken), str(tmp_path / "deleted.png")}
    cached = cache_decoded(files, 12, budget=10**9)
    assert len(cached) == len(data.val) and set(take_decode_failures()) == {
        str(broken), str(tmp_path / "deleted.png")}


def test_the_batch_is_capped_to_what_the_data_allows() -> None:
    assert fit_batch(64, 1, 1000) == (64, 15)
    assert fit_batch(64, 1, 20) == (20, 1)
    assert fit_batch(64, 2, 37) == (18, 1)  # 2 x 18: the per-replica batch divides evenly
    assert fit_batch(8, 4, 3) == (1, 1)  # fewer examples than replicas: the data repeats


def test_the_memory_limit_comes_from_cgroup_v2_or_v1(tmp_path: Path) -> None:
    import os

    machine = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "memory.max").write_text("1073741824\n")
    assert memory_limit(v2) == 2**30
    (v2 / "memory.max").write_text("max\n")
    assert memory_limit(v2) == machine
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("536870912\n")
    assert memory_limit(v1) == 2**29
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    assert memory_limit(v1) == machine
    assert memory_limit(tmp_path / "none") == machine


def test_failures_are_named_also_in_a_row_and_at_the_end(image_folder: Path,
                                                         tmp_path: Path) -> None:
    data = load_dataset(str(image_folder), validation_split=0.1, seed=0)
    good = list(data.val.images[:3])
    missing = [str(tmp_path / f"gone-{i}.png") for i in range(22)]
    # two failures together, then a run longer than the window, then two at the very end
    paths = [good[0], *missing[:2], good[1], *missing[2:20], good[2], *missing[20:]]
    files = Split(paths, np.zeros(len(paths), np.int64))
    take_decode_failures()
    prep = batch_preprocessor(12, _identity)
    batches = _batches(evaluation_input(files, 12, prep, 4), evaluation_steps(files, 4))
    assert sum(w.sum() for _, _, w in batches) == 3
    failures = take_decode_failures()
    # The 15 just before the good image that ends the run are named, the 3 before them counted.
    assert failures == [*missing[:2], *missing[5:22], "3 more image(s) next to those"]


def test_first_images_of_any_split_can_be_indexed(image_folder: Path, tmp_path: Path) -> None:
    from trainer.data.pipeline import first_images

    files = load_dataset(str(image_folder), validation_split=0.1, seed=0)
    records = count_records(load_dataset(str(write_tfrecords(
        tmp_path / "r", [np.full((12, 12, 3), 9, np.uint8)] * 6, [0, 1] * 3)),
        validation_split=0.3, seed=0))
    for split in (files.val, records.train, load_dataset("digits", validation_split=0.1,
                                                         seed=0).val):
        first = first_images(split, 12, 4)
        assert first.in_memory and len(first) == 4 and first.images.dtype == np.uint8

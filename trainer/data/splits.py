"""The dataset every loader returns (trainer.data.load) and the pipeline reads: a training and a
validation split, each images in memory, image files or shard files (`Records`), with the class
names.

    train, val = random_split(source, images, labels, fraction=0.1, seed=0)
    dataset = Dataset(train, val, class_names, native_size=32, channels=3, source=source)
    pixels(dataset.train, [0, 1, 2])          # uint8 arrays, for pictures

No TensorFlow here (see trainer/__init__.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainer.data.folders import BadImage
from trainer.data.tfrecords import Records
from trainer.errors import DataError


@dataclass(frozen=True)
class Split:
    """`images` is a uint8 NHWC (or NHW) array, or a list of image file paths."""

    images: Any
    labels: np.ndarray
    # (worker, workers) when the split holds only that worker's share of the records (a
    # TFRecord shard decoded into memory); None when every worker holds all of it.
    shard: tuple[int, int] | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return isinstance(self.images, np.ndarray)


@dataclass(frozen=True)
class Dataset:
    train: Split | Records
    val: Split | Records
    class_names: tuple[str, ...]  # empty for shards without class names until counted
    native_size: int  # the images' typical larger side; 0 for shards until counted
    channels: int
    source: str = ""  # DATASET as given, for messages
    bad_images: tuple[BadImage, ...] = ()  # left out (BAD_IMAGES=skip)

    @property
    def streamed(self) -> bool:
        """Shards (TFRecord, WebDataset, Parquet): read from their files every epoch, never all
        in memory."""
        return isinstance(self.train, Records)


def pixels(split: Split, indices: Any) -> list[np.ndarray]:
    """The images at `indices` as uint8 arrays, decoded where the split holds files (for
    pictures; training decodes in its tf.data pipeline). A file that cannot be read shows as
    gray."""
    if split.in_memory:
        return [split.images[i] for i in indices]
    return [_picture(split.images[i]) for i in indices]


def _picture(path: str) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, UnidentifiedImageError, ValueError):
        return np.full((8, 8, 3), 128, np.uint8)


def random_split(source: str, images: Any, labels: np.ndarray, fraction: float,
                 seed: int) -> tuple[Split, Split]:
    """(train, validation): `fraction` of the images (at least one) held out at random by
    `seed`; `images` an array or a list of paths. A DataError when none would be left."""
    labels = np.asarray(labels).reshape(-1)
    order = np.random.default_rng(seed).permutation(len(labels))
    held = max(1, int(round(len(labels) * fraction)))
    if held >= len(labels):
        raise DataError(f"DATASET={source} has only {len(labels)} images, too few to hold out "
                        "a validation split; give more images or a validation split")
    val, train = order[:held], order[held:]

    def take(index: np.ndarray) -> Any:
        if isinstance(images, np.ndarray):
            return images[index]
        return [images[i] for i in index]

    return Split(take(train), labels[train]), Split(take(val), labels[val])

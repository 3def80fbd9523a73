"""Datasets as arrays: an .npz file in the keras.datasets layout, and the checks and
conversions every in-memory dataset goes through (the built-ins too, trainer.data.builtin).

    dataset = load_npz(Path("/data/shapes.npz"), validation_split=0.1, seed=0)
    dataset = from_arrays(source, x_train, y_train, x_test, y_test, class_names)

An .npz holds x_train and y_train, optionally x_test and y_test (else a random validation split
is held out of the training images) and class_names. Labels are whole numbers from 0 or one-hot
(probability) rows; images are N x H x W or N x H x W x C (C = 1 or 3) of any numeric type,
converted to uint8. Every failure is a DataError (exit 3) naming the array and what to give.
No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.splits import Dataset, Split, random_split
from trainer.errors import DataError


def load_npz(path: Path, validation_split: float, seed: int) -> Dataset:
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
    except Exception as error:  # noqa: BLE001 - numpy raises many kinds for a corrupt file
        raise DataError(f"DATASET={path} is not a readable .npz file ({type(error).__name__}); "
                        "give an .npz with x_train and y_train arrays") from error
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(f"DATASET={path} has no x_train and y_train arrays (it has "
                        f"{', '.join(sorted(arrays)) or 'none'}); use the keras.datasets layout")
    names = [str(n) for n in arrays["class_names"]] if "class_names" in arrays else None
    y_train, width = labels_of(source, "y_train", arrays["y_train"])
    x_test, y_test = arrays.get("x_test"), arrays.get("y_test")
    if x_test is None or y_test is None:
        _check_pair(source, "x_train", arrays["x_train"], y_train)
        train, val = random_split(source, arrays["x_train"], y_train, validation_split, seed)
        return from_arrays(source, train.images, train.labels, val.images, val.labels, names,
                           width, ("y_train", "y_train"))
    y_test, test_width = labels_of(source, "y_test", y_test)
    return from_arrays(source, arrays["x_train"], y_train, x_test, y_test, names,
                       max(width, test_width))


def _check_pair(source: str, key: str, images: np.ndarray, labels: np.ndarray) -> None:
    if len(images) != len(labels):
        raise DataError(f"DATASET={source}: {key} has {len(images)} images but "
                        f"{len(labels)} labels; give arrays of equal length")
    if len(images) == 0:
        raise DataError(f"DATASET={source}: {key} is empty; give at least one image per class")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
        raise DataError(f"DATASET={source}: {key} has shape {images.shape}; give N x H x W or "
                        "N x H x W x C images with C = 1 or 3")


def from_arrays(source: str, x_train: Any, y_train: Any, x_val: Any, y_val: Any,
                names: list[str] | None, width: int = 0,
                keys: tuple[str, str] = ("y_train", "y_test")) -> Dataset:
    """A dataset of these arrays, checked and converted to uint8. `width`: the number of
    classes one-hot labels encode (0 for class indices)."""
    y_train, _ = labels_of(source, keys[0], y_train)
    y_val, _ = labels_of(source, keys[1], y_val)
    _check_pair(source, "x_train", x_train, y_train)
    _check_pair(source, "x_test", x_val, y_val)
    if len(np.unique(y_train)) < 2:
        raise DataError(f"DATASET={source} has a single class; a classifier needs two or more")
    classes = max(width, int(max(y_train.max(), y_val.max())) + 1)
    if names:
        for key, labels in zip(keys, (y_train, y_val), strict=True):
            if labels.max() >= len(names):
                raise DataError(f"DATASET={source}: {key} holds label {int(labels.max())}, out "
                                f"of range for the {len(names)} names in class_names; give "
                                f"labels from 0 to {len(names) - 1}")
    names = names or [str(i) for i in range(classes)]
    x_train, x_val = (_to_uint8(source, x) for x in (x_train, x_val))
    channels = 1 if x_train.ndim == 3 else x_train.shape[-1]
    return Dataset(Split(x_train, y_train), Split(x_val, y_val), tuple(names),
                   native_size=max(x_train.shape[1:3]), channels=channels, source=source)


def labels_of(source: str, key: str, labels: Any) -> tuple[np.ndarray, int]:
    """Class indices from `labels`: whole numbers from 0 (N or N x 1), or one-hot or
    probability rows (N x K) taken by argmax; and K for rows (0 otherwise). Anything else is a
    DataError naming `key` (y_train or y_test)."""
    values = np.asarray(labels)
    if values.dtype == bool:
        values = values.astype(np.int64)
    if not np.issubdtype(values.dtype, np.number):
        raise DataError(f"DATASET={source}: {key} holds {values.dtype} values; give whole "
                        "numbers from 0, or one-hot rows")
    if values.size and not np.isfinite(values).all():
        raise DataError(f"DATASET={source}: {key} holds NaN or infinite labels")
    if values.ndim == 2 and values.shape[1] > 1:
        if values.size and values.min() < 0:
            raise DataError(f"DATASET={source}: {key} holds rows of {values.shape[1]} values "
                            "with negative ones; give one-hot or probability rows")
        return values.argmax(axis=1).astype(np.int64), values.shape[1]
    if values.ndim > 2 or (values.ndim == 2 and values.shape[1] != 1):
        raise DataError(f"DATASET={source}: {key} has shape {values.shape}; give N labels, "
                        "or N one-hot rows")
    values = values.reshape(-1)
    if not values.size:
        return values.astype(np.int64), 0
    if np.issubdtype(values.dtype, np.floating) and (values != np.round(values)).any():
        example = values[values != np.round(values)][0]
        raise DataError(f"DATASET={source}: {key} holds non-integer labels (e.g. {example:g}); "
                        "give whole numbers from 0, or one-hot rows")
    if values.min() < 0:
        raise DataError(f"DATASET={source}: {key} holds negative labels (e.g. "
                        f"{values.min():g}); give whole numbers from 0")
    return values.astype(np.int64), 0


def _to_uint8(source: str, images: np.ndarray) -> np.ndarray:
    """uint8 as it is; 16-bit scaled (x / 257, so 65535 is 255) unless its values all fit in 8
    bits; floats in [0, 1] scaled by 255; other numbers rounded and clipped to 0-255."""
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.number) or not np.isfinite(images).all():
        raise DataError(f"DATASET={source}: images must be finite numbers (got {images.dtype})")
    if images.dtype == np.uint16 and images.max() > 255:
        return np.round(images / 257.0).astype(np.uint8)
    scale = 255.0 if images.max() <= 1.0 and np.issubdtype(images.dtype, np.floating) else 1.0
    return np.clip(np.round(images * scale), 0, 255).astype(np.uint8)

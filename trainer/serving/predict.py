"""Predict class names for image files with a trained model: a run id, an .h5 file, an
exported SavedModel folder (`export/savedmodel` or its version folder `1/`) or an ONNX file.
Every kind decodes and resizes the images with trainer/data/images.py, as training did.

It imports TensorFlow: the CLI imports this module inside the commands that use it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import keras
import numpy as np

from trainer.data import images as decoding
from trainer.data.pipeline import batch_preprocessor
from trainer.errors import DataError
from trainer.serving.runtimes import Onnx, SavedModel, saved_model_version
from trainer.store.artifacts import read_model_metadata


def predict_images(model_path: Path, images: list[Path], top: int
                   ) -> list[tuple[str, list | DataError]]:
    """The `top` classes of each image, by name, with their probabilities; for an image that
    cannot be read, the DataError naming it in their place (the others are predicted)."""
    read: list[np.ndarray | DataError] = []
    for path in images:
        try:
            read.append(decoding.read(path))
        except DataError as error:
            read.append(error)
    pixels = [image for image in read if not isinstance(image, DataError)]
    probabilities, names = _predict(model_path, pixels) if pixels else (np.zeros((0, 0)), [])
    results: list[tuple[str, list | DataError]] = []
    ranked = iter(probabilities)
    for path, image in zip(images, read, strict=True):
        if isinstance(image, DataError):
            results.append((str(path), image))
            continue
        row = next(ranked)
        order = np.argsort(row)[::-1][:top]
        results.append((str(path), [(names[i] if i < len(names) else str(i), float(row[i]))
                                    for i in order]))
    return results


def _predict(model_path: Path, pixels: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    if model_path.is_dir():
        return _with_saved_model(model_path, pixels)
    if model_path.suffix == ".onnx":
        return _with_onnx(model_path, pixels)
    return _with_h5(model_path, pixels)


def _with_h5(model_path: Path, pixels: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    metadata = read_model_metadata(model_path)
    config = model_path.with_name("config.json")
    if not metadata and config.is_file():
        metadata = json.loads(config.read_text())
    model = keras.models.load_model(model_path, compile=False)
    size = int(model.input_shape[1])
    names = metadata.get("class_names") or [str(i) for i in range(model.output_shape[-1])]
    preprocess = batch_preprocessor(size, _preprocess(metadata.get("preprocessing")))
    probabilities = model.predict(preprocess(decoding.batch(pixels, size)), verbose=0)
    return probabilities, list(names)


def _with_saved_model(folder: Path, pixels: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    exported = SavedModel(saved_model_version(folder) or folder)
    # One image a call: images of different sizes, each resized inside as training resized.
    rows = [exported.predict(image[np.newaxis])[0] for image in pixels]
    return np.stack(rows), exported.class_names


def _with_onnx(path: Path, pixels: list[np.ndarray]) -> tuple[np.ndarray, list[str]]:
    exported = Onnx(path)
    return exported.predict(decoding.batch(pixels, exported.image_size)), exported.class_names


def _preprocess(module: str | None) -> Any:
    if not module:
        return lambda batch: batch
    return importlib.import_module(module).preprocess_input

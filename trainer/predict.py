"""Predict class names for image files with a trained model (a run id or an .h5 path)."""

from __future__ import annotations

import importlib
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from trainer.artifacts import read_model_metadata
from trainer.errors import DataError
from trainer.storage import Store


def resolve_model(model: str, store: Store) -> Path:
    """A local .h5 as it is; a run id fetched (verified) into a cache folder."""
    if model.endswith(".h5") or Path(model).is_file():
        if not Path(model).is_file():
            raise DataError(f"MODEL {model} does not exist; give an .h5 file or a run id")
        return Path(model)
    from trainer.runs import fetch_run

    cache = Path(tempfile.gettempdir()) / "trainer-models"
    return fetch_run(store, model, cache) / "best.h5"


def predict_images(model_path: Path, images: list[Path], top: int) -> list[tuple[str, list]]:
    import keras

    metadata = read_model_metadata(model_path)
    config = model_path.with_name("config.json")
    if not metadata and config.is_file():
        metadata = json.loads(config.read_text())
    model = keras.models.load_model(model_path, compile=False)
    size = int(model.input_shape[1])
    names = metadata.get("class_names") or [str(i) for i in range(model.output_shape[-1])]
    preprocess = _preprocess(metadata.get("preprocessing"))
    batch = np.stack([_load(path, size) for path in images])
    probabilities = model.predict(preprocess(batch), verbose=0)
    results = []
    for path, row in zip(images, probabilities, strict=True):
        order = np.argsort(row)[::-1][:top]
        results.append((str(path), [(names[i], float(row[i])) for i in order]))
    return results


def _preprocess(module: str | None) -> Any:
    if not module:
        return lambda batch: batch
    return importlib.import_module(module).preprocess_input


def _load(path: Path, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR),
                              dtype=np.float32)
    except (OSError, UnidentifiedImageError) as error:
        raise DataError(f"IMAGE {path} is not a readable image ({error})") from error

"""best.h5 as an MLflow pyfunc model, so that the registered model loads with
`mlflow.pyfunc.load_model("models:/NAME/1")` and needs nothing of this repository.

    save(best_h5, folder)        # the MLflow model folder (MLmodel, data/best.h5, code/)
    model = mlflow.pyfunc.load_model("models:/NAME/1")
    model.predict(images)        # uint8 or float pixels, N x H x W [x C] -> N x classes

This file is copied into the model (`code_paths`) and is its loader (`loader_module`): it imports
only the standard library at the top, and TensorFlow/Keras (the model's own runtime) when loaded.
Images are prepared as training prepared them (trainer/data/pipeline.py's batch_preprocessor):
grayscale to RGB, resized to the model's size, the backbone's `preprocess_input` named in the
file's metadata; so the probabilities are best.h5's on the same images.
"""

from __future__ import annotations

import importlib
import json
from importlib import metadata
from pathlib import Path
from typing import Any

METADATA_ATTRIBUTE = "trainer_metadata"  # trainer.store.artifacts.MODEL_METADATA_ATTRIBUTE
# The model's runtime, pinned to this process's versions (MLflow would otherwise load the model
# in a subprocess to guess them: seconds of TensorFlow import).
RUNTIME = ("keras", "tensorflow", "tensorflow-cpu", "h5py", "numpy", "pandas")


class KerasImageClassifier:
    """The pyfunc model: `predict(images)` -> class probabilities."""

    def __init__(self, path: str) -> None:
        import h5py
        import keras

        with h5py.File(path, "r") as f:
            raw = f.attrs.get(METADATA_ATTRIBUTE)
        self.metadata: dict[str, Any] = json.loads(raw) if raw else {}
        self.model = keras.models.load_model(path, compile=False)
        self.size = int(self.model.input_shape[1])
        module = self.metadata.get("preprocessing")
        self._preprocess = (importlib.import_module(module).preprocess_input if module
                            else (lambda batch: batch))

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        import numpy as np
        import tensorflow as tf

        images = tf.cast(np.asarray(model_input), tf.float32)
        if images.shape.rank == 3:
            images = images[..., tf.newaxis]
        if images.shape[-1] == 1:
            images = tf.image.grayscale_to_rgb(images)
        if images.shape[1] != self.size or images.shape[2] != self.size:
            images = tf.image.resize(images, (self.size, self.size))
        return self.model.predict(self._preprocess(images), verbose=0)


def _load_pyfunc(data_path: str) -> KerasImageClassifier:
    """MLflow's entry point for a `loader_module`."""
    return KerasImageClassifier(data_path)


def save(best_h5: Path, folder: Path) -> Path:
    """The MLflow model of `best_h5` in `folder` (which must not exist yet)."""
    import mlflow.pyfunc

    mlflow.pyfunc.save_model(
        str(folder), loader_module=Path(__file__).stem, data_path=str(best_h5),
        code_paths=[__file__], pip_requirements=_requirements())
    return folder


def _requirements() -> list[str]:
    found = []
    for name in RUNTIME:
        try:
            found.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue
    return found

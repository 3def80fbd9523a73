"""Exported models run by their own runtimes: a SavedModel by TensorFlow's loader, ONNX by
onnxruntime, LiteRT by its interpreter. `trainer predict` uses these, and so does the parity
check that `trainer.serving.export` runs on each export as written to disk (ONNX and LiteRT in a
fresh process, the SavedModel in the exporting process, which holds TensorFlow already):

    python -m trainer.serving.runtimes check onnx export/onnx/model.onnx parity.npz   # prints JSON

Only the SavedModel (and decoding image files) needs TensorFlow; an ONNX or LiteRT check runs
without importing it, as a serving host would. So each runtime is imported by the class that
loads its format, and nowhere else.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trainer.serving.formats import FORMATS

LABELS = "labels.txt"
CHUNK = 16


class Exported:
    """A loaded export: `predict` takes uint8 N x H x W x 3 images and returns float32
    N x classes probabilities; `image_size` is None where the model resizes any size itself."""

    class_names: list[str]
    image_size: int | None

    def predict(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class SavedModel(Exported):
    def __init__(self, folder: Path) -> None:
        import tensorflow as tf

        loaded = tf.saved_model.load(str(folder))
        self._tf = tf
        self._keep = loaded  # the signatures need their object alive
        self._images = loaded.signatures["serving_default"]
        self._bytes = loaded.signatures["serve_bytes"]
        self.class_names = read_labels(folder / "assets" / LABELS)
        self.image_size = None

    def outputs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """`probabilities` and `classes` (top class names, bytes) of uint8 images."""
        result = self._images(images=self._tf.constant(images, self._tf.uint8))
        return {name: value.numpy() for name, value in result.items()}

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.outputs(images)["probabilities"]

    def outputs_of_bytes(self, encoded: Sequence[bytes]) -> dict[str, np.ndarray]:
        """The `serve_bytes` signature: encoded JPEG/PNG/GIF/BMP images, decoded inside."""
        result = self._bytes(image_bytes=self._tf.constant(list(encoded), self._tf.string))
        return {name: value.numpy() for name, value in result.items()}


class Onnx(Exported):
    image_size: int

    def __init__(self, path: Path) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initializers are noise
        self._session = onnxruntime.InferenceSession(str(path), options,
                                                     providers=["CPUExecutionProvider"])
        metadata = self._session.get_modelmeta().custom_metadata_map
        self.class_names = (json.loads(metadata["class_names"]) if "class_names" in metadata
                            else read_labels(_labels_near(path)))
        self.image_size = int(self._session.get_inputs()[0].shape[1])

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(["probabilities"], {"images": images})[0]


class LiteRT(Exported):
    image_size: int

    def __init__(self, path: Path) -> None:
        # ai-edge-litert, which EXPORT=litert requires (trainer.serving.formats): TensorFlow's own
        # interpreter would load TensorFlow, and a serving host runs LiteRT alone.
        from ai_edge_litert.interpreter import Interpreter

        self._runner = Interpreter(model_path=str(path)).get_signature_runner("serving_default")
        self.image_size = int(self._runner.get_input_details()["images"]["shape"][1])
        self.class_names = read_labels(_labels_near(path))

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._runner(images=images)["probabilities"]


def saved_model_version(folder: Path) -> Path | None:
    """The version folder to load: `folder` itself when it holds saved_model.pb, else its
    highest numbered sub-folder that does (TF Serving's rule); None when neither."""
    if (folder / "saved_model.pb").is_file():
        return folder
    versions = [child for child in folder.iterdir() if child.name.isdigit()
                and (child / "saved_model.pb").is_file()] if folder.is_dir() else []
    return max(versions, key=lambda child: int(child.name)) if versions else None


def open_export(kind: str, path: Path) -> Exported:
    if kind == "savedmodel":
        return SavedModel(saved_model_version(path) or path)
    return {"onnx": Onnx, "litert": LiteRT}[kind](path)


def read_labels(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def _labels_near(path: Path) -> Path:
    """labels.txt beside the file, or in the folders above it (export/labels.txt for
    export/onnx/model.onnx, triton/NAME/labels.txt for triton/NAME/1/model.onnx)."""
    for folder in (path.parent, path.parent.parent, path.parent.parent.parent):
        if (folder / LABELS).is_file():
            return folder / LABELS
    return path.parent / LABELS


def largest_difference(actual: np.ndarray, expected: np.ndarray) -> float | None:
    """max |actual - expected|; None when the shapes differ or anything is not finite (a NaN
    would otherwise compare as within any tolerance)."""
    actual = np.asarray(actual, np.float64)
    if actual.shape != expected.shape or not np.all(np.isfinite(actual)):
        return None
    return float(np.max(np.abs(actual - expected))) if actual.size else 0.0


def _chunked(predict: Any, inputs: Any) -> dict[str, np.ndarray]:
    """`predict` over `inputs` in batches of CHUNK, so a large model's check fits in memory."""
    parts = [predict(inputs[i:i + CHUNK]) for i in range(0, len(inputs), CHUNK)]
    parts = [part if isinstance(part, dict) else {"probabilities": part} for part in parts]
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


def check(kind: str, path: Path, data: dict[str, np.ndarray]) -> dict[str, float | None]:
    """Each input of `data` (see trainer.serving.export) through the export, as the largest
    difference from best.h5's probabilities."""
    exported = open_export(kind, path)
    expected = data["expected"].astype(np.float64)
    if not isinstance(exported, SavedModel):
        probabilities = _chunked(exported.predict, data["images"])["probabilities"]
        return {"images": largest_difference(probabilities, expected)}
    offsets = data["encoded_offsets"]
    encoded = [data["encoded"][start:end].tobytes()
               for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
    outputs = _chunked(exported.outputs, data["images"])
    differences = {
        "images": largest_difference(outputs["probabilities"], expected),
        "other_size": largest_difference(
            _chunked(exported.predict, data["other"])["probabilities"], data["expected_other"]),
        "image_bytes": largest_difference(
            _chunked(exported.outputs_of_bytes, encoded)["probabilities"], expected)}
    # `classes` must name the top probability, by the class names inside the SavedModel.
    named = [exported.class_names[i] for i in outputs["probabilities"].argmax(axis=1)]
    if [name.decode() for name in outputs["classes"]] != named:
        differences["classes"] = None
    return differences


def main(argv: Sequence[str]) -> None:
    """The check process: its differences as one JSON line on stdout. Anything that fails
    (the export does not load, a runtime is missing) fails the process, and trainer.serving.export
    reports the last line of its stderr."""
    if len(argv) != 4 or argv[0] != "check" or argv[1] not in FORMATS:
        raise ValueError("usage: python -m trainer.serving.runtimes check FORMAT PATH DATA.npz")
    with np.load(argv[3]) as npz:
        data = {name: npz[name] for name in npz.files}
    print(json.dumps(check(argv[1], Path(argv[2]), data)))


if __name__ == "__main__":
    main(sys.argv[1:])

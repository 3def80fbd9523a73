"""Serving exports of a trained model (best.h5), each loaded back from disk and checked against it.

    results = export_model(Path("runs/RUN/best.h5"), Path("runs/RUN/export"),
                           ["savedmodel", "onnx", "litert"], reference_images=val_pixels)

writes `savedmodel/1/` (TF Serving, KServe, Vertex AI), `onnx/model.onnx` with a Triton model
repository `triton/NAME/`, `litert/model.tflite`, and `labels.txt`. A model trained in mixed
precision is rebuilt in float32 first. Every export is then loaded from disk by its own runtime
(trainer/serving/runtimes.py) and compared with the Keras model on the same images with the training
preprocessing; above PARITY_TOLERANCE the format is `failed`. ONNX and LiteRT are checked in a
process of their own, which imports no TensorFlow (as a serving host runs them); the SavedModel in
this process, which holds TensorFlow already: a second process would only import it again.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from trainer.data import images
from trainer.logs import get_logger
from trainer.serving.converters import WRITERS, ServingModel, folders, predictor
from trainer.serving.runtimes import LABELS, check
from trainer.store.artifacts import read_model_metadata
from trainer.ticker import Ticker

PARITY_TOLERANCE = 1e-3
MAX_REFERENCE_IMAGES = 64
CHECK_TIMEOUT_SECONDS = 900


def load_float32(model_h5: Path) -> tuple[Any, str]:
    """best.h5 as a float32 Keras model, and the dtype policy it was trained under: a model
    trained in mixed precision (bfloat16 or float16, stored in its layers' configs) is rebuilt
    layer by layer under float32 with the same weights, so that the exports compute in float32."""
    model = keras.models.load_model(model_h5, compile=False)
    policies = {layer.dtype_policy.name for layer in model.layers} - {"float32"}
    if not policies:
        return model, "float32"

    def float32_layer(layer: Any) -> Any:
        return layer.__class__.from_config({**layer.get_config(), "dtype": "float32"})

    rebuilt = keras.models.clone_model(model, clone_function=float32_layer)
    rebuilt.set_weights(model.get_weights())  # mixed precision keeps float32 variables
    return rebuilt, sorted(policies)[0]


def _source(model_h5: Path) -> ServingModel:
    metadata = read_model_metadata(model_h5)
    config = model_h5.with_name("config.json")
    if not metadata and config.is_file():
        metadata = json.loads(config.read_text())
    model, policy = load_float32(model_h5)
    size = int(model.input_shape[1])
    names = [str(n) for n in metadata.get("class_names")
             or range(int(model.output_shape[-1]))]
    if metadata.get("preprocessing"):
        preprocess = importlib.import_module(metadata["preprocessing"]).preprocess_input
    else:
        get_logger().warning("the model names no preprocessing; the exports take pixels as the "
                             "model does", extra={"model": str(model_h5)})

        def preprocess(batch: Any) -> Any:
            return batch
    if policy != "float32":
        get_logger().info(f"exporting in float32 a model trained under {policy}",
                          extra={"model": str(model_h5)})
    return ServingModel(model, names, size, preprocess)


def export_model(model_h5: Path, out_dir: Path, formats: Sequence[str], *,
                 reference_images: Sequence[np.ndarray] | np.ndarray | None = None,
                 name: str = "classifier",
                 on_done: Callable[[str, dict[str, Any]], None] | None = None,
                 ticker: Ticker | None = None
                 ) -> dict[str, dict[str, Any]]:
    """Write `formats` of `model_h5` into `out_dir`, and check each against it.

    `reference_images`: uint8 images of any size (H x W, H x W x 1 or H x W x 3), e.g.
    validation images, of which the first MAX_REFERENCE_IMAGES are used; random images when
    None. `name` names the Triton model. Returns, per format: `status` ("ok" or "failed"),
    `max_abs_difference` from best.h5 (None where the export or its check failed; `error`
    then says why), `seconds` (writing), `check_seconds` and `files` (relative to `out_dir`,
    labels.txt included). A failed export is logged, its files removed (nothing broken is
    left to publish), and returned, never raised. `on_done(format, result)` is called as soon
    as a format is written and checked (the finish records it as a part done). `ticker`
    (trainer.ticker, of `export_steps(formats)` items) is told each format and each check
    as it starts.
    """
    if ticker is not None and formats:  # loading best.h5 and its reference outputs is the first's
        ticker.at(0, formats[0])
    source = _source(Path(model_h5))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / LABELS).write_text("".join(f"{n}\n" for n in source.class_names), "utf-8")
    if reference_images is None or len(reference_images) == 0:
        reference_images = np.random.default_rng(0).integers(
            0, 256, (16, source.image_size, source.image_size, 3), dtype=np.uint8)
    batch = images.batch(list(reference_images)[:MAX_REFERENCE_IMAGES], source.image_size)
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="trainer-export-") as scratch:
        data = _reference_data(source, batch, Path(scratch))
        for number, kind in enumerate(formats):
            if ticker is not None:
                ticker.at(2 * number, kind)
            written, results[kind] = _write(kind, source, out_dir, name)
            result = results[kind]
            if written is not None:
                if ticker is not None:
                    ticker.at(2 * number + 1, f"check of {kind}")
                difference, error, seconds = _check(kind, written, data)
                result.update(max_abs_difference=difference, check_seconds=round(seconds, 2))
                if error is None and difference is not None and difference > PARITY_TOLERANCE:
                    error = (f"differs from best.h5 by {difference:.3g} (more than "
                             f"{PARITY_TOLERANCE})")
                if error:
                    result.update(status="failed", error=error)
            if result["status"] == "failed":
                _remove(kind, out_dir, name)
                get_logger().warning(f"the {kind} export failed: {result['error']}", extra={
                    "format": kind, "max_abs_difference": result["max_abs_difference"]})
            result["files"] = _files(kind, out_dir, name) if result["status"] == "ok" else []
            if on_done is not None:
                on_done(kind, result)
    if ticker is not None:
        ticker.at(export_steps(formats), None)
    return results


def export_steps(formats: Sequence[str]) -> int:
    """The items of an export's progress: each format written, then checked."""
    return 2 * len(formats)


def _write(kind: str, source: ServingModel, out_dir: Path, name: str
           ) -> tuple[Path | None, dict[str, Any]]:
    """One format written (its earlier files replaced): what the check loads (None if it
    failed), and its status and the seconds it took."""
    _remove(kind, out_dir, name)
    started = time.monotonic()
    written = None
    try:
        written = WRITERS[kind](source, out_dir, name)
        result: dict[str, Any] = {"status": "ok", "max_abs_difference": None}
    except Exception as raised:  # noqa: BLE001 - a converter that fails fails its format
        get_logger().debug(f"the {kind} export raised", exc_info=True)
        _remove(kind, out_dir, name)
        result = {"status": "failed", "max_abs_difference": None,
                  "error": f"{type(raised).__name__}: {_line(str(raised))}"}
    result["seconds"] = round(time.monotonic() - started, 2)
    return written, result


def _line(text: str) -> str:
    """The first non-empty line, whole (the cause to quote)."""
    return next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")


def _remove(kind: str, out_dir: Path, name: str) -> None:
    for folder in folders(kind, out_dir, name):
        shutil.rmtree(folder, ignore_errors=True)


def _files(kind: str, out_dir: Path, name: str) -> list[str]:
    found = [path for folder in folders(kind, out_dir, name) for path in folder.rglob("*")
             if path.is_file()]
    return sorted(path.relative_to(out_dir).as_posix() for path in [*found, out_dir / LABELS])


def _reference_data(source: ServingModel, batch: np.ndarray, scratch: Path) -> Path:
    """The checks' inputs and best.h5's probabilities for them: the images at the training
    size, the same at another size (the export resizes them as training does), and as PNG."""
    probabilities = predictor(source)

    def expected(pixels: np.ndarray) -> np.ndarray:
        chunks = [probabilities(tf.constant(pixels[i:i + 16])).numpy()
                  for i in range(0, len(pixels), 16)]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(source.class_names)))

    size = source.image_size
    other = images.resize(batch, (size * 3 // 2 + 1, size * 5 // 4)).numpy()
    encoded = [tf.io.encode_png(image).numpy() for image in batch]
    path = scratch / "parity.npz"
    np.savez(path, images=batch, expected=expected(batch), other=other,
             expected_other=expected(images.resize(other, size).numpy()),
             encoded=np.frombuffer(b"".join(encoded), np.uint8),
             encoded_offsets=np.cumsum([0, *map(len, encoded)]))
    return path


def _check(kind: str, path: Path, data: Path) -> tuple[float | None, str | None, float]:
    """The export as written to disk, loaded by its runtime and run on the reference data: the
    largest difference from best.h5, an error (or None) and the seconds it took."""
    started = time.monotonic()
    if kind == "savedmodel":
        try:
            with np.load(data) as npz:
                differences = check(kind, path, {key: npz[key] for key in npz.files})
        except Exception as raised:  # noqa: BLE001 - an export that does not load fails
            get_logger().debug("the savedmodel check raised", exc_info=True)
            return (None, f"loading it failed: {type(raised).__name__}: {_line(str(raised))}",
                    time.monotonic() - started)
        return _verdict(differences, time.monotonic() - started)
    root = str(Path(__file__).resolve().parents[1])
    paths = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": paths, "TF_CPP_MIN_LOG_LEVEL": "2"}
    try:
        done = subprocess.run(
            [sys.executable, "-m", "trainer.serving.runtimes", "check", kind, str(path),
             str(data)], capture_output=True, text=True, env=env, timeout=CHECK_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return None, f"its check took over {CHECK_TIMEOUT_SECONDS} s", CHECK_TIMEOUT_SECONDS
    seconds = time.monotonic() - started
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        return None, f"loading it in a fresh process failed: {_line(last)}", seconds
    return _verdict(json.loads(done.stdout.strip().splitlines()[-1]), seconds)


def _verdict(differences: dict[str, float | None], seconds: float
             ) -> tuple[float | None, str | None, float]:
    broken = sorted(part for part, value in differences.items() if value is None)
    if broken:
        return None, f"wrong or non-finite outputs for {', '.join(broken)}", seconds
    return max(v for v in differences.values() if v is not None), None, seconds

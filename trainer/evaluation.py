"""A trained model measured on a labelled split: metrics.json, confusion.png and errors.png.

Used at the end of every run (the best epoch's model on the validation split) and by
`trainer evaluate MODEL DATASET`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from trainer.artifacts import read_model_metadata
from trainer.data import Split, load_dataset, pixels
from trainer.errors import DataError
from trainer.files import write_atomic
from trainer.model import preprocess_function
from trainer.pipeline import batch_preprocessor, evaluation_input
from trainer.plots import save_confusion, save_errors

ERRORS_SHOWN = 32


def predict_split(model: keras.Model, split: Split, image_size: int, preprocess: Callable,
                  batch_size: int = 64) -> np.ndarray:
    """Class probabilities for every image of `split`, in order."""
    dataset = evaluation_input(split, image_size, preprocess, batch_size)(
        tf.distribute.InputContext())
    batches = [model(images, training=False).numpy() for images, _, _ in dataset]
    return np.concatenate(batches)[: len(split)].astype(np.float64)


def compute_metrics(labels: np.ndarray, probabilities: np.ndarray,
                    class_names: list[str]) -> dict[str, Any]:
    """Accuracy, top-5 accuracy (more than 5 classes), per-class precision, recall, F1 and
    support, and the confusion matrix (rows: true class, columns: predicted)."""
    classes = list(range(len(class_names)))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=classes, zero_division=0)
    result: dict[str, Any] = {
        "examples": int(len(labels)),
        "accuracy": float(np.mean(predicted == labels)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(class_names)
        },
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": confusion_matrix(labels, predicted, labels=classes).tolist(),
        "class_names": list(class_names),
    }
    if len(class_names) > 5:
        top5 = np.argsort(probabilities, axis=1)[:, -5:]
        result["top5_accuracy"] = float(np.mean([label in row for label, row
                                                  in zip(labels, top5, strict=True)]))
    return result


def evaluate(model: keras.Model, split: Split, image_size: int, preprocess: Callable,
             class_names: list[str], folder: Path, source: str) -> dict[str, Any]:
    """Write metrics.json, confusion.png and errors.png for `model` on `split` into `folder`."""
    probabilities = predict_split(model, split, image_size, preprocess)
    metrics = {"evaluated_on": source, **compute_metrics(split.labels, probabilities,
                                                         class_names)}
    write_atomic(folder / "metrics.json", json.dumps(metrics, indent=2).encode())
    save_confusion(np.array(metrics["confusion_matrix"]), class_names, folder / "confusion.png")
    predicted = probabilities.argmax(axis=1)
    wrong = np.flatnonzero(predicted != split.labels)[:ERRORS_SHOWN]
    save_errors(pixels(split, wrong), [class_names[split.labels[i]] for i in wrong],
                [class_names[predicted[i]] for i in wrong], folder / "errors.png")
    return metrics


def evaluate_model(model_path: Path, dataset: str, split: str, destination: Path, *,
                   validation_split: float, seed: int, mirror: str | None) -> dict[str, Any]:
    """`trainer evaluate`: the model's own size, preprocessing and class names, on `dataset`
    (its held-out split, or every image with `split` "all")."""
    metadata = read_model_metadata(model_path)
    model = keras.models.load_model(model_path, compile=False)
    size = int(model.input_shape[1])
    names = metadata.get("class_names") or [str(i) for i in range(model.output_shape[-1])]
    data = load_dataset(dataset, validation_split=validation_split, seed=seed, mirror=mirror)
    if len(data.class_names) != len(names):
        raise DataError(f"DATASET {dataset} has {len(data.class_names)} classes but the "
                        f"model has {len(names)}; evaluate on a dataset of the same classes")
    chosen = data.val
    if split == "all":
        images = (np.concatenate([data.train.images, data.val.images]) if data.train.in_memory
                  else [*data.train.images, *data.val.images])
        chosen = Split(images, np.concatenate([data.train.labels, data.val.labels]),
                       data.train.encoded)
    backbone = metadata.get("backbone")
    preprocess = batch_preprocessor(size, preprocess_function(backbone) if backbone
                                    else lambda batch: batch)
    destination.mkdir(parents=True, exist_ok=True)
    which = "every image" if split == "all" else "held out"
    return evaluate(model, chosen, size, preprocess, list(names), destination,
                    source=f"{dataset} ({which})")

"""A trained model measured on a labelled split: metrics.json, confusion.png and errors.png.

Used at the end of every run (the best epoch's model on the validation split) and by
`trainer evaluate MODEL DATASET`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import keras
import numpy as np
import tensorflow as tf
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from trainer.data.bad_images import apply_bad_images_policy
from trainer.data.counting import count_records
from trainer.data.decode_failures import take_decode_failures
from trainer.data.load import Dataset, Split, load_dataset, remote_dataset
from trainer.data.pipeline import batch_preprocessor, evaluation_input
from trainer.data.stream_failures import stream_failures_raised
from trainer.data.tfrecords import Records, Remote
from trainer.errors import DataError
from trainer.logs import get_logger
from trainer.models.classifier import preprocess_function
from trainer.reports.plots import save_confusion, save_errors
from trainer.store.artifacts import read_model_metadata
from trainer.store.files import write_atomic

ERRORS_SHOWN = 32


@dataclass(frozen=True)
class Predictions:
    probabilities: np.ndarray  # examples x classes
    labels: np.ndarray  # each from the pipeline with its image, never paired by position
    errors: list[tuple[np.ndarray, int, int]]  # the first wrong ones: (image, label, predicted)


def predict_split(model: keras.Model, split: Split | Records, image_size: int,
                  preprocess: Callable, batch_size: int = 64) -> Predictions:
    """Class probabilities of every image of `split` that decodes, with its label."""
    pipeline = evaluation_input(split, image_size, lambda images: images, batch_size)(
        tf.distribute.InputContext())
    probabilities, labels = [], []
    errors: list[tuple[np.ndarray, int, int]] = []
    for images, batch_labels, weights in pipeline:
        real = weights.numpy() > 0
        batch = model(preprocess(images), training=False).numpy()[real].astype(np.float64)
        truth = batch_labels.numpy()[real]
        probabilities.append(batch)
        labels.append(truth)
        if len(errors) < ERRORS_SHOWN:
            predicted = batch.argmax(axis=1)
            for i in np.flatnonzero(predicted != truth)[:ERRORS_SHOWN - len(errors)]:
                errors.append((images.numpy()[real][i], int(truth[i]), int(predicted[i])))
    return Predictions(np.concatenate(probabilities), np.concatenate(labels), errors)


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


def evaluate(model: keras.Model, split: Split | Records, image_size: int,
             preprocess: Callable, class_names: list[str], folder: Path,
             source: str) -> dict[str, Any]:
    """Write metrics.json, confusion.png and errors.png for `model` on `split` into `folder`."""
    predictions = predict_split(model, split, image_size, preprocess)
    metrics = {"evaluated_on": source, **compute_metrics(predictions.labels,
                                                         predictions.probabilities,
                                                         class_names)}
    write_atomic(folder / "metrics.json", json.dumps(metrics, indent=2).encode())
    save_confusion(np.array(metrics["confusion_matrix"]), class_names, folder / "confusion.png")
    errors = predictions.errors
    save_errors([image for image, _, _ in errors], [class_names[label] for _, label, _ in errors],
                [class_names[guess] for _, _, guess in errors], folder / "errors.png")
    return metrics


def run_settings(model_path: Path) -> dict[str, Any]:
    """The settings of the run a model comes from: its config.json beside it (a run id is
    fetched with it), else none."""
    config = model_path.with_name("config.json")
    if not config.is_file():
        return {}
    try:
        settings = json.loads(config.read_text()).get("settings", {})
    except (ValueError, AttributeError):
        return {}
    return settings if isinstance(settings, dict) else {}


def evaluate_model(model_path: Path, dataset: str, split: str, destination: Path, *,
                   validation_split: float, seed: int, mirror: str | None,
                   bad_images: Literal["skip", "fail"] = "skip",
                   remote: Remote | None = None, dataset_format: str | None = None
                   ) -> dict[str, Any]:
    """`trainer evaluate`: the model's own size, preprocessing and class names, on `dataset`
    (a local path, or an s3:// prefix of shards streamed through `remote`; its held-out split,
    or every image with `split` "all"). The held-out split is the run's own when the model's
    config.json is beside it: its SEED and VALIDATION_SPLIT, not the ones given."""
    metadata = read_model_metadata(model_path)
    model = keras.models.load_model(model_path, compile=False)
    size = int(model.input_shape[1])
    names = metadata.get("class_names") or [str(i) for i in range(model.output_shape[-1])]
    run = run_settings(model_path)
    if run:
        seed = int(run.get("seed", seed))
        validation_split = float(run.get("validation_split", validation_split))
        get_logger().info("the run's own split: SEED and VALIDATION_SPLIT from its config.json",
                          extra={"seed": seed, "validation_split": validation_split})
    streamed = remote_dataset(dataset, remote, validation_split=validation_split, seed=seed,
                              dataset_format=dataset_format) if remote is not None else None
    data = count_records(streamed or load_dataset(dataset, validation_split=validation_split,
                                                  seed=seed, mirror=mirror,
                                                  bad_images=bad_images,
                                                  dataset_format=dataset_format))
    if len(data.class_names) != len(names):
        raise DataError(f"DATASET {dataset} has {len(data.class_names)} classes but the "
                        f"model has {len(names)}; evaluate on a dataset of the same classes")
    chosen = every_example(data) if split == "all" else data.val
    backbone = metadata.get("backbone")
    preprocess = batch_preprocessor(size, preprocess_function(backbone) if backbone
                                    else lambda batch: batch)
    destination.mkdir(parents=True, exist_ok=True)
    which = "every image" if split == "all" else "held out"
    with stream_failures_raised():
        metrics = evaluate(model, chosen, size, preprocess, list(names), destination,
                           source=f"{dataset} ({which})")
    apply_bad_images_policy(take_decode_failures(), bad_images)
    return metrics


def every_example(data: Dataset) -> Split | Records:
    """The training and validation splits as one."""
    train, val = data.train, data.val
    if isinstance(train, Records) and isinstance(val, Records):
        if val.holdout is not None:
            return replace(train, holdout=None, count=len(train) + len(val),
                           shard_counts=(len(train) + len(val),))
        return replace(train, files=train.files + val.files, holdout=None,
                       count=len(train) + len(val), shard_counts=(len(train) + len(val),),
                       sizes=train.sizes + val.sizes, etags=train.etags + val.etags,
                       file_counts=train.file_counts + val.file_counts)
    assert isinstance(train, Split) and isinstance(val, Split)
    images = (np.concatenate([train.images, val.images]) if train.in_memory
              else [*train.images, *val.images])
    return Split(images, np.concatenate([train.labels, val.labels]))

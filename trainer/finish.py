"""What the chief makes of the saved best.h5 at the end of a run: its evaluation on the
validation split (trainer.reports.evaluation) and its serving exports
(trainer.serving.export), as callables that trainer.outputs runs in its order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from trainer.data.load import Dataset
from trainer.data.pipeline import first_images
from trainer.parts import Export, OnDone
from trainer.reports.evaluation import evaluate
from trainer.serving.export import export_model, export_steps
from trainer.settings import Settings
from trainer.ticker import progress_ticker

REFERENCE_IMAGES = 64


def evaluator(dataset: Dataset, image_size: int, preprocess: Callable[[tf.Tensor], tf.Tensor]
              ) -> Callable[[Path, Path], dict[str, Any]]:
    """The best epoch's model, as saved (the file the user gets), on the validation split."""

    def evaluate_best(model_path: Path, folder: Path) -> dict[str, Any]:
        model = keras.models.load_model(model_path, compile=False)
        return evaluate(model, dataset.val, image_size, preprocess, list(dataset.class_names),
                        folder, source="the validation split")

    return evaluate_best


def exporter(settings: Settings, dataset: Dataset, image_size: int) -> Export:
    """`formats` (those of EXPORT not exported yet) of the saved best.h5, each checked on
    validation images, `on_done` called as each is checked."""

    def export_best(model_path: Path, folder: Path, formats: list[str], on_done: OnDone
                    ) -> dict[str, dict[str, Any]]:
        reference = first_images(dataset.val, image_size, REFERENCE_IMAGES)
        with progress_ticker("export", str(folder), total=export_steps(formats),
                             run_id=settings.run_id) as ticker:
            return export_model(model_path, folder, formats, reference_images=reference.images,
                                name=settings.run_id, on_done=on_done, ticker=ticker)

    return export_best

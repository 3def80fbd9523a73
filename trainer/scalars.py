"""TensorBoard event files of the per-epoch scalars, under the run's `tensorboard/train` and
`tensorboard/validation`, so that `trainer fetch` plus `tensorboard --logdir` shows a run."""

from __future__ import annotations

import tensorflow as tf

from trainer.artifacts import HistoryRow, RunArtifacts


class ScalarLog:
    def __init__(self, artifacts: RunArtifacts) -> None:
        self.artifacts = artifacts
        self.writers = {split: tf.summary.create_file_writer(
            str(artifacts.path(f"tensorboard/{split}"))) for split in ("train", "validation")}

    def write(self, row: HistoryRow) -> None:
        """One history row; the event files are published (uploaded) after each."""
        scalars = {
            "train": {"loss": row["loss"], "accuracy": row["accuracy"],
                      "learning_rate": row["learning_rate"],
                      "images_per_second": row["images_per_second"]},
            "validation": {"loss": row["val_loss"], "accuracy": row["val_accuracy"]},
        }
        for split, values in scalars.items():
            with self.writers[split].as_default(step=row["epoch"]):
                for name, value in values.items():
                    tf.summary.scalar(name, value)
            self.writers[split].flush()
        root = self.artifacts.local_dir
        for file in sorted(self.artifacts.path("tensorboard").rglob("events.out.tfevents.*")):
            self.artifacts.publish(str(file.relative_to(root)), grows_in_place=True)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

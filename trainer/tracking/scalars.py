"""TensorBoard event files of the per-epoch scalars, under the run's `tensorboard/train` and
`tensorboard/validation`, so that `trainer fetch` plus `tensorboard --logdir` shows a run; or in
the folder a platform's TensorBoard reads (Vertex AI's AIP_TENSORBOARD_LOG_DIR)."""

from __future__ import annotations

from pathlib import Path

import tensorflow as tf

from trainer.store.artifacts import HistoryRow, RunArtifacts


class ScalarLog:
    def __init__(self, artifacts: RunArtifacts, folder: str | None = None) -> None:
        self.artifacts = artifacts
        # Events published with the run's files, unless the platform reads them where they are.
        self.published = folder is None
        self.folder = artifacts.path("tensorboard") if folder is None else Path(folder)
        self.writers = {split: tf.summary.create_file_writer(str(self.folder / split))
                        for split in ("train", "validation")}

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
        if not self.published:
            return
        root = self.artifacts.local_dir
        for file in sorted(self.folder.rglob("events.out.tfevents.*")):
            self.artifacts.publish(str(file.relative_to(root)), grows_in_place=True)

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

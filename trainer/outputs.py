"""What a run leaves behind, in the order that makes it safe to read at any moment.

Only the chief writes (`ChiefOutputs`); `WorkerOutputs` is its do-nothing twin for the other
workers, so the training code never asks who it is. The order, and why:
1. `config.json` and `samples.png` at the start;
2. after each epoch: the resume state first (what a restart trusts), then `best.h5` when the
   epoch is the best (a restart between the two republishes it from the state), then the
   curves and TensorBoard events, and `history.json` last: it is what readers take as "this
   epoch is done";
3. at the end: the evaluation, the report and the exports, each recorded as a part done with
   the resume state (trainer/parts.py: a restart redoes only what is missing), every upload
   finished, then `manifest.json`, which lists every artifact with its sha256 and says the run
   finished.
No TensorFlow here: the model, the checkpoint and the evaluation come from the caller."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from trainer.data.splits import Dataset, Split, pixels
from trainer.errors import TrainerError
from trainer.logs import get_logger
from trainer.parts import (
    MANIFEST_EXPORT_FIELDS,
    TRACKING,
    Evaluate,
    Export,
    FinishRecord,
    make_parts,
    write_manifest,
)
from trainer.reports.plots import save_curves, save_samples
from trainer.settings import Settings
from trainer.state import LoopState, keep_best, restore_best, save_state
from trainer.store.artifacts import HistoryRow, RunArtifacts
from trainer.store.files import sha256_of
from trainer.tracking.mlflow_run import Tracker

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

    from trainer.control import StopRequest
    from trainer.tracking.scalars import ScalarLog

SAMPLES_SHOWN = 32
__all__ = ["MANIFEST_EXPORT_FIELDS", "Evaluate", "Export", "ChiefOutputs", "WorkerOutputs",
           "run_config"]


class Outputs(Protocol):
    def start(self, config: dict[str, Any], dataset: Dataset) -> None: ...
    def found_bad_images(self, names: list[str]) -> None: ...
    def track(self, tracker: Tracker | None, state: LoopState) -> None: ...
    def resumed(self, state: LoopState, model: keras.Model) -> LoopState: ...
    def epoch_done(self, state: LoopState, improved: bool, model: keras.Model,
                   checkpoint: tf.train.Checkpoint) -> None: ...
    def save_for_restart(self, state: LoopState, checkpoint: tf.train.Checkpoint,
                         saved: bool, stop: StopRequest) -> None: ...
    def diverged(self, state: LoopState, row: HistoryRow) -> None: ...
    def upload_what_was_saved(self, stop: StopRequest) -> None: ...
    def end_tracking(self, status: str, stop: StopRequest) -> None: ...
    def finish(self, state: LoopState, evaluate: Evaluate, export: Export,
               stop: StopRequest) -> str: ...


class ChiefOutputs:
    def __init__(self, artifacts: RunArtifacts, state_files: RunArtifacts, settings: Settings,
                 metadata: dict[str, Any], fingerprint: dict[str, Any],
                 scalars: ScalarLog) -> None:
        self.artifacts = artifacts
        self.state_files = state_files  # the run's own, unless the platform keeps them apart
        self.settings = settings
        self.metadata = metadata
        self.fingerprint = fingerprint
        self.scalars = scalars
        self.best_sha256: str | None = None  # of best.h5 as last saved or adopted
        self.tracker: Tracker | None = None
        self.config: dict[str, Any] = {}  # config.json as last written

    def track(self, tracker: Tracker | None, state: LoopState) -> None:
        """MLflow, when it is set up: the epochs a restarted run had before that MLflow lacks
        are logged first (each epoch once, whatever the restarts)."""
        self.tracker = tracker
        if tracker is not None and state.history:
            tracker.log_history(state.history)

    def start(self, config: dict[str, Any], dataset: Dataset) -> None:
        self.config = config
        self.artifacts.write_json("config.json", config)
        split = dataset.train
        assert isinstance(split, Split), "TFRecords: pass trainer.data.pipeline.preview(dataset)"
        chosen = np.random.default_rng(0).permutation(len(split))[:SAMPLES_SHOWN]
        names = [dataset.class_names[split.labels[i]] for i in chosen]
        save_samples(pixels(split, chosen), names, self.artifacts.path("samples.png"))
        self.artifacts.publish("samples.png")

    def found_bad_images(self, names: list[str]) -> None:
        """Images that failed to decode only during training, added to config.json's list."""
        if names:
            listed = self.config.get("bad_images", [])
            self.config = {**self.config, "bad_images": [
                *listed, *(f"{name} (failed to decode)" for name in names)]}
            self.artifacts.write_json("config.json", self.config)

    def resumed(self, state: LoopState, model: keras.Model) -> LoopState:
        """After a restart: history from the state, and best.h5 again if the restored model is
        the best one (the previous attempt may have stopped between the state and best.h5),
        else the stored best.h5 if it is the one the state recorded, else the state's copy of
        it. If it is not (damaged, or gone), the best epoch is chosen afresh from the epochs to
        come."""
        if not state.history:
            return state
        self.artifacts.write_history(state.history)
        self.artifacts.adopt_stored()
        if state.holds_the_best_weights:
            if not self._adopt_recorded_best(state):
                self._save_best(model, state)
        elif self.artifacts.adopt("best.h5", state.best_sha256) or (
                self.state_files is not self.artifacts
                and restore_best(self.state_files, self.artifacts, state.best_sha256)):
            self.best_sha256 = state.best_sha256
        else:
            get_logger().warning(
                f"best.h5 of epoch {state.best_epoch} is missing or damaged in the store; the "
                "best epoch is chosen again from the epochs to come",
                extra={"run_id": self.settings.run_id})
            return dataclasses.replace(state, best_value=None, best_epoch=0)
        return state

    def _adopt_recorded_best(self, state: LoopState) -> bool:
        """After the last epoch: the best.h5 the finish's parts were made from, if the record
        is of this training and the file is intact (saved again, its digest would differ)."""
        record = FinishRecord.load(self.state_files, self.artifacts)
        if record.summary.get("epochs_done") != state.epoch or not record.best_sha256:
            return False
        if not self.artifacts.adopt("best.h5", record.best_sha256):
            return False
        self.best_sha256 = record.best_sha256
        return True

    def epoch_done(self, state: LoopState, improved: bool, model: keras.Model,
                   checkpoint: tf.train.Checkpoint) -> None:
        self.artifacts.raise_if_refused()
        self._save_state(checkpoint, state)
        if self.tracker is not None:
            self.tracker.log_epoch(state.history[-1])
        if improved:
            self._save_best(model, state)
        save_curves(state.history, state.best_epoch, self.settings.monitor,
                    self.artifacts.path("curves.png"))
        self.artifacts.publish("curves.png")
        self.scalars.write(state.history[-1])
        self.artifacts.write_history(state.history)

    def save_for_restart(self, state: LoopState, checkpoint: tf.train.Checkpoint,
                         saved: bool, stop: StopRequest) -> None:
        """SIGTERM: the state (unless `saved` already) in the store within the grace period."""
        if not saved:
            self._save_state(checkpoint, state)
        if self.tracker is not None:
            self.tracker.ending("KILLED")  # sent while the state uploads
        self.artifacts.finish_uploads(min(self.settings.upload_timeout,
                                          stop.upload_seconds_left()))
        self.end_tracking("KILLED", stop)  # in what the upload left of the grace period

    def diverged(self, state: LoopState, row: HistoryRow) -> None:
        """The history shows the epoch that diverged (its NaN as null); the state and best.h5
        stay those of the epoch before."""
        self.artifacts.write_history((*state.history, row))

    def upload_what_was_saved(self, stop: StopRequest) -> None:
        """Whatever else ends the run (a lost peer, a bug), the state saved before it may still
        be uploading: let it finish, so that a restart resumes from it."""
        if self.tracker is not None:
            self.tracker.ending("FAILED")
        try:
            self.artifacts.finish_uploads(self.settings.upload_timeout, stop,
                                          stop.upload_seconds_left())
        except TrainerError as error:
            get_logger().warning(f"the saved state could not all be uploaded: {error}")
        self.end_tracking("FAILED", stop)

    def finish(self, state: LoopState, evaluate: Evaluate, export: Export,
               stop: StopRequest) -> str:
        """The evaluation, the report, the serving exports, MLflow, each skipped where the
        record says it is done from this best.h5; then the manifest once everything it lists
        is stored; returns where best.h5 is."""
        settings, artifacts = self.settings, self.artifacts
        self.scalars.close()
        summary = {"best_epoch": state.best_epoch, "best_value": state.best_value,
                   "monitor": settings.monitor, "epochs_done": len(state.history),
                   "stopped_early": len(state.history) < settings.total_epochs}
        record = FinishRecord.load(self.state_files, artifacts)
        record.begin(self.best_sha256, summary)
        exports = make_parts(record, settings, summary, evaluate, export)
        failed = any(result["status"] == "failed" for result in exports.values())
        status = "FAILED" if failed else "FINISHED"  # a re-run retries the export
        if self.tracker is not None and record.done(TRACKING) is None:
            files = [artifacts.path(name) for name in ("best.h5", "export", "report.html",
                                                       "curves.png", "metrics.json")]
            self.tracker.log_final(json.loads(artifacts.path("metrics.json").read_text()),
                                   [path for path in files if path.exists()])
            self.tracker.log_model(artifacts.path("best.h5"))  # what register_model registers
            self.tracker.register_model()
            unlogged = self._end_tracker(status, stop)
            if status == "FINISHED" and not unlogged:  # else a restart logs it again
                record.record(TRACKING, [], {}, settings.run_id)
        self.end_tracking(status, stop)
        return write_manifest(artifacts, settings, summary, exports, settings.upload_timeout,
                              stop, stop.upload_seconds_left())

    def _save_state(self, checkpoint: tf.train.Checkpoint, state: LoopState) -> None:
        """The state, with best.h5's digest unless its own weights are the best (then a restart
        makes best.h5 again from them, whether or not the upload of best.h5 got through), and
        the MLflow run that a restart goes on logging to."""
        best = None if state.holds_the_best_weights else self.best_sha256
        tracking = self.tracker.mlflow_run_id if self.tracker else state.tracking_run_id
        save_state(self.state_files, checkpoint,
                   dataclasses.replace(state, best_sha256=best, tracking_run_id=tracking),
                   self.fingerprint)

    def end_tracking(self, status: str, stop: StopRequest) -> None:
        self._end_tracker(status, stop)

    def _end_tracker(self, status: str, stop: StopRequest) -> list[str]:
        """The MLflow run ended (as the status queued first), waiting at most UPLOAD_TIMEOUT,
        after SIGTERM at most what is left of the grace period, for what is queued; returns
        what MLflow did not get."""
        tracker, self.tracker = self.tracker, None
        if tracker is None:
            return []
        seconds = self.settings.upload_timeout
        if stop.is_set():
            seconds = min(seconds, stop.upload_seconds_left())
        return tracker.end(status, seconds)

    def _save_best(self, model: keras.Model, state: LoopState) -> None:
        self.artifacts.save_model(model, "best.h5", {**self.metadata, "epoch": state.best_epoch})
        self.best_sha256 = sha256_of(self.artifacts.path("best.h5"))
        if self.state_files is not self.artifacts:  # the state alone survives a spot restart
            keep_best(self.state_files, self.artifacts.path("best.h5"))
        get_logger().info("saved best.h5", extra={"run_id": self.settings.run_id,
                                                  "epoch": state.best_epoch,
                                                  self.settings.monitor: state.best_value})


class WorkerOutputs:
    """A worker other than the chief: it trains, and writes nothing (each method does nothing)."""

    def start(self, config: dict[str, Any], dataset: Dataset) -> None: ...
    def found_bad_images(self, names: list[str]) -> None: ...
    def track(self, tracker: Tracker | None, state: LoopState) -> None: ...
    def epoch_done(self, state: LoopState, improved: bool, model: keras.Model,
                   checkpoint: tf.train.Checkpoint) -> None: ...
    def save_for_restart(self, state: LoopState, checkpoint: tf.train.Checkpoint,
                         saved: bool, stop: StopRequest) -> None: ...
    def diverged(self, state: LoopState, row: HistoryRow) -> None: ...
    def upload_what_was_saved(self, stop: StopRequest) -> None: ...
    def end_tracking(self, status: str, stop: StopRequest) -> None: ...

    def resumed(self, state: LoopState, model: keras.Model) -> LoopState:
        return state

    def finish(self, state: LoopState, evaluate: Evaluate, export: Export,
               stop: StopRequest) -> str:
        return ""


def run_config(settings: Settings, metadata: dict[str, Any], replicas: int,
               dataset: Dataset, versions: dict[str, str]) -> dict[str, Any]:
    """config.json: the resolved settings (no secrets) and what else reproduces the run."""
    return {
        "settings": settings.public_dict(),
        **metadata,
        "replicas": replicas,
        "global_batch_size": settings.batch_size * replicas,
        "train_examples": len(dataset.train),
        "validation_examples": len(dataset.val),
        "versions": versions,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

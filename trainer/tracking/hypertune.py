"""Vertex AI hyperparameter tuning: the tuned metric reported where Vertex reads it.

    tuned = TunedMetric.from_environ(environ, settings.monitor)   # None off Vertex AI
    tuned.report(state.best_value, epoch)                         # after each epoch

A tuning job's trials are compared by a metric that each trial writes through Google's
`cloudml-hypertune` library (the protocol Vertex AI documents): one JSON line per report in
CLOUD_ML_HP_METRIC_FILE (default /tmp/hypertune/output.metrics), e.g. {"global_step": "3",
"timestamp": ..., "trial": "7", "val_accuracy": "0.9"}. The tag is MONITOR's name (the study's
metric_id must be the same, e.g. `val_accuracy`), or CLOUD_ML_HP_METRIC_TAG where the platform
sets it. The value is the best epoch's so far: the model the trial ships, so the last line (the
final measurement) is the one Vertex compares, never a worse last epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer.logs import get_logger

TAG_VARIABLE = "CLOUD_ML_HP_METRIC_TAG"
# Vertex AI sets it in every custom job (the job's id); the tuned metric is reported there only.
VERTEX_JOB_VARIABLE = "CLOUD_ML_JOB_ID"


class TunedMetric:
    def __init__(self, tag: str) -> None:
        import hypertune  # cloudml-hypertune: imported on Vertex AI only

        self.tag = tag
        self._reporter: Any = hypertune.HyperTune()
        self._warned = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], monitor: str) -> TunedMetric | None:
        """The reporter on Vertex AI (CLOUD_ML_JOB_ID set), else None (also, with a warning,
        where the metrics file's folder cannot be made)."""
        if not environ.get(VERTEX_JOB_VARIABLE):
            return None
        tag = environ.get(TAG_VARIABLE) or monitor
        try:
            return cls(tag)
        except OSError as error:  # the library makes the file's folder at once
            get_logger().warning(f"the tuned metric {tag} cannot be written for Vertex AI "
                                 f"({error}); trials cannot be compared")
            return None

    def report(self, value: float | None, epoch: int) -> None:
        """The best value so far after `epoch` (Vertex's global_step). A file that cannot be
        written is a warning, once: the training itself goes on."""
        if value is None:
            return
        try:
            self._reporter.report_hyperparameter_tuning_metric(
                hyperparameter_metric_tag=self.tag, metric_value=value, global_step=epoch)
        except OSError as error:
            if not self._warned:
                self._warned = True
                get_logger().warning(f"the tuned metric {self.tag} could not be written for "
                                     f"Vertex AI ({error}); trials cannot be compared")

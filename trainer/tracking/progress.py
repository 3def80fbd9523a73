"""How far a run is, when it will end, and Kubeflow Trainer's TrainJob status.

    plan = Plan(epochs=settings.total_epochs, steps_per_epoch=steps, evaluation_steps=eval_steps)
    progress = Progress(plan.total)
    log.info("...", extra={**progress.update(plan.done(epochs_done, step)), ...})
    reporter = TrainerStatusReporter.from_environ(os.environ)           # None off Kubeflow
    reporter.report(progress.fraction, progress.eta_seconds, {"loss": 0.3})

`Progress` counts work over the whole run (every epoch of every phase, training steps and the
per-epoch evaluation), so a resumed run starts where it left off; the rate behind `eta_seconds`
is measured in this process only, from its first update on, so neither the steps done before a
restart nor the first call's tracing skew it.

`TrainerStatusReporter` implements Kubeflow Trainer v2's TrainJob progress protocol
(kubeflow/trainer, proposals/2779-trainjob-progress, pkg/statusserver): the controller injects
KUBEFLOW_TRAINER_SERVER_URL (the full https URL of .../trainjobs/{name}/status),
KUBEFLOW_TRAINER_SERVER_CA_CERT and KUBEFLOW_TRAINER_SERVER_TOKEN (file paths); the job POSTs
`{"trainerStatus": {"progressPercentage", "estimatedRemainingSeconds", "metrics": [{"name",
"value"}], "lastUpdatedTime"}}` with the (rotating, so re-read) token as a bearer token. It posts
from a background thread, at most once every MIN_INTERVAL_SECONDS (latest wins), so training
never waits for it; a failure is logged once and never ends the job.
"""

from __future__ import annotations

import json
import math
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trainer.logs import get_logger

# An evaluation step is a forward pass only: about a third of a training step's work.
EVALUATION_WEIGHT = 1 / 3
# A serving export with its check, in training steps' worth of work: an estimate, of a small
# model on 2 CPU cores (an export of a VGG16 at 32x32 and its check in a fresh process took
# about as long as 100 of its training steps); the finish is measured as it goes.
EXPORT_STEPS = 100
SERVER_URL = "KUBEFLOW_TRAINER_SERVER_URL"
SERVER_CA_CERT = "KUBEFLOW_TRAINER_SERVER_CA_CERT"
SERVER_TOKEN = "KUBEFLOW_TRAINER_SERVER_TOKEN"
# Kubeflow's guidance: at most one update every 5 seconds per job.
MIN_INTERVAL_SECONDS = 5.0
REQUEST_TIMEOUT_SECONDS = 5.0
# The TrainerStatus API's limits: 256 metrics, names and values of 1 to 64 characters.
MAX_METRICS = 256
MAX_TEXT = 64


@dataclass(frozen=True)
class Plan:
    """The work of a whole run, in training steps: `epochs` (all phases) of `steps_per_epoch`
    training steps and `evaluation_steps` evaluation steps (weighted) each, then the finish:
    the best model's evaluation (as long as an epoch's) and `exports` serving exports."""

    epochs: int
    steps_per_epoch: int
    evaluation_steps: int = 0
    evaluation_weight: float = EVALUATION_WEIGHT
    exports: int = 0

    @property
    def epoch_units(self) -> float:
        return self.steps_per_epoch + self.evaluation_steps * self.evaluation_weight

    @property
    def final_evaluation_units(self) -> float:
        return self.evaluation_steps * self.evaluation_weight

    @property
    def export_units(self) -> float:
        return self.exports * EXPORT_STEPS

    @property
    def finish_units(self) -> float:
        return self.final_evaluation_units + self.export_units

    @property
    def total(self) -> float:
        return self.epochs * self.epoch_units + self.finish_units

    def done(self, epochs_done: int, step: int = 0) -> float:
        """The work done after `epochs_done` whole epochs (evaluation included) and `step`
        training steps of the next one."""
        return epochs_done * self.epoch_units + min(step, self.steps_per_epoch)


class Progress:
    """`progress` (0 to 1) and `eta_seconds` (None until a rate is measured) of `total` work."""

    def __init__(self, total: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = float(total)
        self._clock = clock
        self._start: tuple[float, float] | None = None  # (time, work done) at the first update
        self.done = 0.0
        self.eta_seconds: float | None = None

    @property
    def fraction(self) -> float:
        return min(max(self.done / self.total, 0.0), 1.0) if self.total > 0 else 0.0

    def update(self, done: float) -> dict[str, Any]:
        """Record the work done so far (the steps of earlier attempts included) and return
        the log fields."""
        now = self._clock()
        self.done = max(float(done), self.done)
        if self._start is None:
            # The baseline: what came before (an earlier attempt, tracing and the first call's
            # steps) is not part of the rate.
            self._start = (now, self.done)
        elapsed, worked = now - self._start[0], self.done - self._start[1]
        if self.done >= self.total:
            self.eta_seconds = 0.0
        elif elapsed > 0 and worked > 0:
            self.eta_seconds = (self.total - self.done) * elapsed / worked
        return self.fields()

    def fields(self) -> dict[str, Any]:
        """{"progress": 0..1 rounded to 4 digits, "eta_seconds": whole seconds or None}."""
        eta = None if self.eta_seconds is None else round(self.eta_seconds)
        return {"progress": round(self.fraction, 4), "eta_seconds": eta}


def trainer_status(progress: float, eta_seconds: float | None,
                   metrics: Mapping[str, Any] | None = None,
                   now: float | None = None) -> dict[str, Any]:
    """The request body of a TrainJob status update, within the API's validation rules."""
    status: dict[str, Any] = {
        "progressPercentage": int(min(max(progress, 0.0), 1.0) * 100),
        "lastUpdatedTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
    }
    if eta_seconds is not None and math.isfinite(eta_seconds):
        status["estimatedRemainingSeconds"] = min(max(int(round(eta_seconds)), 0), 2**31 - 1)
    entries = []
    for name, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not name:
            continue
        entries.append({"name": str(name)[:MAX_TEXT], "value": f"{value:.6g}"[:MAX_TEXT]})
    if entries:
        status["metrics"] = entries[:MAX_METRICS]
    return {"trainerStatus": status}


class TrainerStatusReporter:
    """Posts the latest progress to the TrainJob's status from a background thread."""

    def __init__(self, url: str, token_file: str | None, ca_file: str | None,
                 min_interval: float = MIN_INTERVAL_SECONDS,
                 timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self.url = url
        self._token_file = token_file
        self._ca_file = ca_file
        self._min_interval = min_interval
        self._timeout = timeout
        self._condition = threading.Condition()
        self._latest: dict[str, Any] | None = None
        self._closing = False
        self._last_post = -math.inf
        self._warned = False
        self.posted = 0  # successful updates, for logs and tests
        self._thread = threading.Thread(target=self._run, name="trainjob-status", daemon=True)
        self._thread.start()

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], **options: float
                     ) -> TrainerStatusReporter | None:
        """A reporter when the pod runs in a Kubeflow TrainJob with the TrainJobStatus
        feature (KUBEFLOW_TRAINER_SERVER_URL set), else None."""
        url = environ.get(SERVER_URL, "").strip()
        if not url:
            return None
        return cls(url, environ.get(SERVER_TOKEN) or None, environ.get(SERVER_CA_CERT) or None,
                   **options)

    def report(self, progress: float, eta_seconds: float | None,
               metrics: Mapping[str, Any] | None = None) -> None:
        """Queue this status; returns at once. Only the latest queued status is sent."""
        body = trainer_status(progress, eta_seconds, metrics)
        with self._condition:
            self._latest = body
            self._condition.notify()

    def close(self, timeout: float = 2.0) -> None:
        """Send the last queued status now (without waiting for the interval) and stop,
        waiting at most `timeout` seconds for it."""
        with self._condition:
            self._closing = True
            self._condition.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._condition:
                while self._latest is None and not self._closing:
                    self._condition.wait()
                if self._latest is None:
                    return
                wait = self._last_post + self._min_interval - time.monotonic()
                if wait > 0 and not self._closing:
                    # Throttled: a newer status may replace this one while we wait.
                    self._condition.wait(wait)
                    continue
                body, self._latest = self._latest, None
            self._last_post = time.monotonic()
            self._post(body)

    def _post(self, body: dict[str, Any]) -> None:
        try:
            headers = {"Content-Type": "application/json"}
            if self._token_file:
                # Re-read every time: the projected token rotates.
                with open(self._token_file) as f:
                    headers["Authorization"] = f"Bearer {f.read().strip()}"
            context = ssl.create_default_context(cafile=self._ca_file)
            request = urllib.request.Request(self.url, data=json.dumps(body).encode(),
                                             headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=self._timeout, context=context) as r:
                r.read()
            self.posted += 1
        except Exception as error:  # noqa: BLE001 - best effort: never the job's failure
            self._warn(error)

    def _warn(self, error: Exception) -> None:
        if isinstance(error, urllib.error.HTTPError):
            detail = f"HTTP {error.code} {error.reason}"
        else:
            detail = f"{type(error).__name__}: {error}"
        if self._warned:
            get_logger().debug(f"TrainJob status not updated: {detail}")
            return
        self._warned = True
        get_logger().warning(
            f"could not update the TrainJob status at {self.url} ({detail[:300]}); training "
            "goes on, and later failures are not logged", extra={"status_url": self.url})

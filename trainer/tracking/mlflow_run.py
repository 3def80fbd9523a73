"""MLflow tracking of a run, when MLFLOW_TRACKING_URI is set; the chief worker alone tracks.

    tracker = Tracker.open(os.environ, settings.run_id, state.mlflow_run_id,
                           params=settings.public_dict(), tags={"image": image})
    tracker.log_history(state.history)      # after a restart: the epochs MLflow lacks
    tracker.log_epoch(row)                  # each epoch's history row, at step=epoch
    tracker.log_final(metrics, [best_h5, export_dir, report_html, curves_png])
    tracker.log_model(best_h5)              # an MLflow pyfunc model, artifact `model`
    tracker.register_model()                # when MLFLOW_REGISTERED_MODEL_NAME is set
    tracker.ending("KILLED")                # queued (then the state's upload, meanwhile)
    tracker.end("KILLED", seconds)          # or "FINISHED", "FAILED": waits at most `seconds`

Resuming: `tracker.mlflow_run_id` goes into the run's resume state; a restarted pod passes it
back and continues the same MLflow run (without it, the newest unfinished MLflow run tagged with
this RUN_ID in the experiment is continued). Metrics are keyed by (name, epoch) and what the
MLflow run already holds is read first, so no epoch is logged twice. Best effort
(`trainer.tracking.backlog`): every call is queued and sent by the backlog's own thread, so
training never waits for the server; an unreachable (or hanging) server is one warning, never the
job's failure; what could not be logged is sent, in order, once the server answers again, and
what is still missing at `end` is named in one warning.

Read here from `environ`: MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME / _ID, MLFLOW_RUN_ID (a run
to continue), MLFLOW_REGISTERED_MODEL_NAME; MLflow reads the rest (MLFLOW_TRACKING_USERNAME, ...)
from the process environment. `mlflow-skinny` and pandas are enough (the `tracking` extra).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from trainer.logs import get_logger
from trainer.redaction import redact
from trainer.tracking import keras_pyfunc
from trainer.tracking.backlog import Backlog, configure_client, error_code, short
from trainer.tracking.registry import RUN_ID_TAG, experiment_id, register

STATUSES = ("FINISHED", "FAILED", "KILLED")
REGISTERED_MODEL_VARIABLE = "MLFLOW_REGISTERED_MODEL_NAME"
BATCH = 100  # MLflow's log_batch takes at most 100 params (1000 metrics) per call
FINAL_PREFIX = "best_model/"
SAVEDMODEL_ARTIFACT = "export/savedmodel"
MODEL_ARTIFACT = "model"  # the MLflow pyfunc model of best.h5 (keras_pyfunc)
END_SECONDS = 60.0  # what `end` waits at most, unless told (the job tells it)


class Tracker:
    """One MLflow run for one training run, across restarts of its pod."""

    def __init__(self, client: Any, environ: Mapping[str, str], run_id: str,
                 resumed_mlflow_run_id: str | None, params: Mapping[str, Any],
                 tags: Mapping[str, Any]) -> None:
        self._client = client
        self._environ = dict(environ)
        self._run_id = run_id
        self._resumed = resumed_mlflow_run_id or environ.get("MLFLOW_RUN_ID") or None
        self._params = {str(k): _param_text(v) for k, v in params.items() if v is not None}
        self._tags = {RUN_ID_TAG: run_id, **{str(k): str(v) for k, v in tags.items()}}
        self.mlflow_run_id: str | None = None
        self.artifact_uri: str | None = None
        self._logged: set[tuple[str, int]] = set()
        self._synced = False
        self._artifacts: set[str] = set()
        self._ending: str | None = None
        self._log = get_logger()
        self._backlog = Backlog(f"MLflow tracking server {self.uri}", prepare=self._sync,
                                lost=self._unsync,
                                context=lambda: {"mlflow_run_id": self.mlflow_run_id})

    @classmethod
    def open(cls, environ: Mapping[str, str], run_id: str, resumed_mlflow_run_id: str | None,
             params: Mapping[str, Any], tags: Mapping[str, Any]) -> Tracker | None:
        """The run's tracker, or None when MLFLOW_TRACKING_URI is unset; the MLflow run's start
        (or continuation) queued."""
        uri = environ.get("MLFLOW_TRACKING_URI", "").strip()
        if not uri:
            return None
        configure_client(environ)
        try:
            from mlflow import MlflowClient
        except ImportError:
            get_logger().warning("MLFLOW_TRACKING_URI is set but mlflow is not installed "
                                 "(pip install -e '.[tracking]' in the repository); this run "
                                 "is not tracked")
            return None
        tracker = cls(MlflowClient(tracking_uri=uri), environ, run_id, resumed_mlflow_run_id,
                      params, tags)
        tracker._backlog.add("the MLflow run with its params", tracker._start, needs_run=False)
        return tracker

    @property
    def uri(self) -> str:
        """The tracking URI without credentials, for messages."""
        return redact(self._environ.get("MLFLOW_TRACKING_URI", ""))

    @property
    def pending(self) -> list[str]:
        """What is waiting for the server, oldest first."""
        return self._backlog.pending

    def wait(self, seconds: float) -> bool:
        """Wait at most `seconds` for what is queued to be sent (or given up on: the server is
        away); True when nothing waits."""
        return self._backlog.wait(seconds)

    # --- what the job calls ---------------------------------------------------------------

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        """An epoch's history row: each number but `epoch` as a metric at step=epoch, unless
        the MLflow run has it already."""
        epoch = int(row["epoch"])
        metrics = {k: v for k, v in row.items() if k != "epoch" and _is_number(v)}
        stamp = int(time.time() * 1000)
        self._backlog.add(f"metrics of epoch {epoch}",
                          partial(self._log_metrics, metrics, epoch, stamp))

    def log_history(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Every row of a restored history (after a restart): only what MLflow lacks is sent."""
        for row in rows:
            self.log_epoch(row)

    def log_final(self, metrics: Mapping[str, Any], files: Sequence[Path]) -> None:
        """metrics.json's numbers (as `best_model/<name>`) and the run's files as artifacts:
        a file at the artifact root, a folder under its own name (export/ → export/...)."""
        numbers = {FINAL_PREFIX + k: v for k, v in metrics.items() if _is_number(v)}
        stamp = int(time.time() * 1000)
        if numbers:
            self._backlog.add("final metrics", partial(self._log_metrics, numbers, 0, stamp),
                              flush=False)
        for path in map(Path, files):
            if not path.exists():
                self._log.warning(f"MLflow: {path} does not exist; not logged")
                continue
            self._artifacts.add(path.name)
            if path.is_dir():
                self._artifacts.update(f"{path.name}/{p.relative_to(path).as_posix()}"
                                       for p in path.rglob("*") if p.is_dir())
            self._backlog.add(f"artifact {path.name}", partial(self._log_artifact, path),
                              flush=False)
        self._backlog.flush()

    def register_model(self, artifact_path: str | None = None) -> None:
        """Register the run's model as a new version of MLFLOW_REGISTERED_MODEL_NAME (no-op
        when unset): `artifact_path`, by default the MLflow model of log_model, else the
        exported SavedModel (export/savedmodel) where log_final logged one, else best.h5.
        Once per MLflow run, also across restarts."""
        name = self._environ.get(REGISTERED_MODEL_VARIABLE, "").strip()
        if not name:
            return
        if artifact_path is None:
            artifact_path = next(path for path in (MODEL_ARTIFACT, SAVEDMODEL_ARTIFACT, "best.h5")
                                 if path in self._artifacts or path == "best.h5")
        if artifact_path not in self._artifacts:
            self._log.warning(f"MLflow: no artifact {artifact_path} was logged; the model is "
                              f"not registered as {name}")
            return
        self._backlog.add(f"model version of {name}", lambda: register(
            self._client, name, self.mlflow_run_id, self._run_id, artifact_path))

    def log_model(self, best_h5: Path) -> None:
        """best.h5 as an MLflow pyfunc model (artifact `model`, what register_model registers),
        made in a temporary folder: in the run's folder, a local store would list it."""
        folder = Path(tempfile.mkdtemp(prefix="mlflow-model-")) / MODEL_ARTIFACT
        try:
            keras_pyfunc.save(Path(best_h5), folder)
        except Exception as error:  # noqa: BLE001 - tracking never fails the job
            self._log.warning(f"MLflow: the pyfunc model of {best_h5} was not made "
                              f"({short(error)}); the run's other files are logged")
            return
        self._artifacts.add(MODEL_ARTIFACT)
        self._backlog.add(f"artifact {MODEL_ARTIFACT}", partial(self._log_model, folder))

    def ending(self, status: str) -> None:
        """The run's end as FINISHED, FAILED or KILLED queued (once: the first status stays)."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r}: give one of {', '.join(STATUSES)}")
        if self._ending is None and not self._backlog.closed:
            self._ending = status
            self._backlog.add(f"status {status}", partial(self._terminate, status))

    def end(self, status: str, seconds: float = END_SECONDS) -> list[str]:
        """End the MLflow run as `status` (unless `ending` queued one), waiting at most
        `seconds` for what is queued; returns (and warns about, in one line) what was not
        logged. Later calls do nothing."""
        self.ending(status)
        if self._backlog.closed:  # ended already, or the run was refused
            return []
        return self._backlog.close(f"MLflow run {self.mlflow_run_id or '(not created)'}",
                                   seconds)

    # --- MLflow calls ---------------------------------------------------------------------

    def _unsync(self) -> None:
        # What reached the server before it failed is re-read when it is back.
        self._synced = False

    def _sync(self) -> None:
        """Which (metric, step) pairs the MLflow run already holds (read again after an
        outage: what reached the server before it failed is not known here)."""
        if self._synced:
            return
        run_id = self.mlflow_run_id
        run = self._client.get_run(run_id)
        self._logged = {(m.key, m.step) for key in run.data.metrics
                        for m in self._client.get_metric_history(run_id, key)}
        self._synced = True

    def _start(self) -> None:
        client = self._client
        run = self._continued_run()
        if run is None:
            run = client.create_run(experiment_id(client, self._environ),
                                    run_name=self._run_id, tags=self._tags)
            self._log.info("MLflow run started", extra={"mlflow_run_id": run.info.run_id})
            self._logged, self._synced = set(), True  # a new run holds no metrics yet
        else:
            self._synced = False  # what it holds is read before anything is added
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            self._log.info("MLflow run continued", extra={"mlflow_run_id": run.info.run_id})
        self.mlflow_run_id, self.artifact_uri = run.info.run_id, run.info.artifact_uri
        from mlflow.entities import Param, RunTag

        logged = run.data.params
        changed = sorted(k for k, v in self._params.items() if k in logged and logged[k] != v)
        if changed:
            # MLflow params cannot change; the first attempt's values stay.
            self._log.warning("MLflow params keep their first values; changed since: "
                              + ", ".join(f"{k}={self._params[k]}" for k in changed))
        params = [Param(k, v) for k, v in self._params.items() if k not in logged]
        tags = [RunTag(k, v) for k, v in self._tags.items()]
        for start in range(0, max(len(params), 1), BATCH):
            client.log_batch(self.mlflow_run_id, params=params[start:start + BATCH],
                             tags=tags if start == 0 else [])

    def _continued_run(self) -> Any:
        """The MLflow run to continue: this process's, the resumed one, or the newest
        unfinished one tagged with this RUN_ID; None to start one."""
        client = self._client
        for run_id in (self.mlflow_run_id, self._resumed):
            if not run_id:
                continue
            try:
                run = client.get_run(run_id)
            except Exception as error:  # noqa: BLE001
                if error_code(error) != "RESOURCE_DOES_NOT_EXIST":
                    raise
                run = None
            if run is not None and run.info.lifecycle_stage != "deleted":
                return run
            self._log.warning(f"MLflow run {run_id} does not exist (or was deleted) at "
                              f"{self.uri}; starting another")
            self._resumed = None
        found = client.search_runs([experiment_id(self._client, self._environ)],
                                   filter_string=f"tags.`{RUN_ID_TAG}` = '{self._run_id}'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
        if found and found[0].info.status != "FINISHED":
            return found[0]
        return None

    def _log_metrics(self, metrics: Mapping[str, Any], step: int, stamp: int) -> None:
        from mlflow.entities import Metric

        batch = [Metric(k, float(v), stamp, step) for k, v in metrics.items()
                 if (k, step) not in self._logged]
        if batch:
            self._client.log_batch(self.mlflow_run_id, metrics=batch)
        self._logged.update((m.key, step) for m in batch)

    def _log_artifact(self, path: Path) -> None:
        if path.is_dir():
            self._client.log_artifacts(self.mlflow_run_id, str(path), path.name)
        else:
            self._client.log_artifact(self.mlflow_run_id, str(path))

    def _log_model(self, folder: Path) -> None:
        self._log_artifact(folder)
        shutil.rmtree(folder.parent, ignore_errors=True)  # a copy of best.h5: disk, not memory

    def _terminate(self, status: str) -> None:
        # The run's id is read when the call is sent: the run may not exist yet when queued.
        self._client.set_terminated(self.mlflow_run_id, status)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _param_text(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def image_tag(environ: Mapping[str, str]) -> dict[str, str]:
    """The image's name as a tag, where the manifests or the user set IMAGE."""
    return {"image": environ["IMAGE"]} if environ.get("IMAGE") else {}

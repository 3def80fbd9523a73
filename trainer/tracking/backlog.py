"""The best-effort queue of MLflow calls behind `trainer.tracking.mlflow_run.Tracker`: `Backlog`.

    backlog = Backlog(server, prepare=ensure_synced, lost=forget_sync, context=extra)
    backlog.add("metrics of epoch 3", send)   # sent now if the server answers, else kept
    backlog.close("MLflow run 1a2b")          # what never reached it, named in one warning

Calls go out oldest first and the queue stops at the first failure, so the server sees them in
the order the job made them. A refusal that no retry can change (PERMANENT_ERRORS) drops that one
call with a warning; a refusal of the call that creates the run (`needs_run=False`) turns
tracking off. Any other error means the server is unreachable: one warning per outage, one info
line when it answers again. Nothing here raises: tracking never fails the job. MLflow's HTTP
client retries for minutes by default: `configure_client` sets it, unless the environment says
otherwise, to one retry and a 10 s timeout, so a server that is down costs seconds per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from trainer.logs import get_logger
from trainer.redaction import redact

# MLflow's own variables, unless the user set them: seconds, not minutes, against a dead server.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    # stdout carries the job's JSON log lines: MLflow's "View run" banner would break them.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
# MLflow's error codes for refusals that no retry can change: the call is dropped.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
                    "INVALID_STATE"}


@dataclass
class Pending:
    what: str  # named in the warnings: "metrics of epoch 3", "artifact best.h5"
    action: Callable[[], None]
    needs_run: bool = True


class Backlog:
    """Calls waiting for the MLflow server named `server` (credentials already hidden).

    `prepare` runs before each call that needs the MLflow run (it may itself call the server,
    e.g. to read what the run holds); `lost` runs when the server stops answering; `context`
    gives the `extra` fields of the log lines."""

    def __init__(self, server: str, prepare: Callable[[], None], lost: Callable[[], None],
                 context: Callable[[], Mapping[str, Any]]) -> None:
        self._server = server
        self._prepare = prepare
        self._lost = lost
        self._context = context
        self._items: list[Pending] = []
        self._failing = False
        self._closed = False
        self._log = get_logger()

    @property
    def pending(self) -> list[str]:
        """What is waiting for the server, oldest first."""
        return [item.what for item in self._items]

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, what: str, action: Callable[[], None], needs_run: bool = True,
            flush: bool = True) -> None:
        """Queue `action` (dropped once closed or once tracking is off), then send what waits
        unless `flush` is False (to queue several calls first)."""
        if self._closed:
            return
        self._items.append(Pending(what, action, needs_run))
        if flush:
            self.flush()

    def flush(self) -> None:
        """Send what waits, oldest first; stop at the first failure (the server is down): the
        rest waits for the next call."""
        while self._items:
            item = self._items[0]
            try:
                if item.needs_run:
                    self._prepare()
                item.action()
            except Exception as error:  # noqa: BLE001 - tracking never fails the job
                if error_code(error) not in PERMANENT_ERRORS:
                    self._unreachable(error)
                    return
                self._items.pop(0)
                if not item.needs_run:  # the run itself was refused: tracking is off
                    self._closed = True
                    self._items.clear()
                    self._log.warning(f"MLflow refused {item.what} ({short(error)}); this run "
                                      "is not tracked")
                    return
                self._log.warning(f"MLflow refused {item.what}: {short(error)}")
                continue
            self._items.pop(0)
        if self._failing:
            self._failing = False
            self._log.info(f"{self._server} reachable again; what waited is logged",
                           extra=dict(self._context()))

    def close(self, target: str) -> list[str]:
        """Stop taking calls; returns what never reached the server, oldest first, and names it
        in one warning as not logged to `target` ("MLflow run 1a2b")."""
        missing = self.pending
        self._items.clear()
        self._closed = True
        if missing:
            self._log.warning(f"{self._server} unreachable: not logged to {target}: "
                              f"{'; '.join(missing)}",
                              extra={**self._context(), "not_logged": missing})
        return missing

    def _unreachable(self, error: Exception) -> None:
        self._lost()
        if self._failing:
            return
        self._failing = True
        self._log.warning(
            f"{self._server} unreachable ({short(error)}); training goes on, and what is not "
            "logged is kept and sent when the server answers again",
            extra=dict(self._context()))


def configure_client(given: Mapping[str, str],
                     target: MutableMapping[str, str] | None = None) -> None:
    """MLflow's variables in `given` (the job's environment, with SageMaker's hyperparameters
    over it) into `target` (the process environment, which MLflow's client reads), then
    CLIENT_DEFAULTS where not set already."""
    target = os.environ if target is None else target
    target.update({name: value for name, value in given.items() if name.startswith("MLFLOW_")})
    for name, value in CLIENT_DEFAULTS.items():
        target.setdefault(name, value)


def error_code(error: Exception) -> str | None:
    """MLflow's code for a refusal (`RESOURCE_DOES_NOT_EXIST`, ...), None for other errors."""
    return getattr(error, "error_code", None)


def short(error: Exception) -> str:
    """One line of at most 300 characters, without credentials written into a URL."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return redact(text)[:300]

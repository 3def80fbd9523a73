"""The best-effort queue of MLflow calls behind `trainer.tracking.mlflow_run.Tracker`: `Backlog`.

    backlog = Backlog(server, prepare=ensure_synced, lost=forget_sync, context=extra)
    backlog.add("metrics of epoch 3", send)   # queued; the backlog's own thread sends it
    backlog.close("MLflow run 1a2b", 20.0)    # waits at most 20 s, names what never got there

One thread per backlog sends the calls, so the training thread never waits for the server (a
server that accepts and never answers costs a call MLFLOW_HTTP_REQUEST_TIMEOUT seconds). Calls go
out oldest first and sending stops at the first failure, so the server sees them in the order the
job made them; the next `add` tries again. At most MAX_PENDING calls wait; more are dropped and
counted. A refusal that no retry can change (PERMANENT_ERRORS) drops that one call with a warning;
a refusal of the call that creates the run (`needs_run=False`) turns tracking off. Any other error
means the server is unreachable: one warning per outage, one info line when it answers again.
Nothing here raises: tracking never fails the job. MLflow's HTTP client retries for minutes by
default: `configure_client` sets it, unless the environment says otherwise, to no retry (the
backlog is the retry) and a 5 s timeout.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from trainer.logs import get_logger
from trainer.redaction import redact

# MLflow's own variables, unless the user set them: a server that is down or hangs costs one
# call 5 s, not minutes (MLflow's defaults: 7 retries, 120 s each).
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    # stdout carries the job's JSON log lines: MLflow's "View run" banner would break them.
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}
# MLflow's error codes for refusals that no retry can change: the call is dropped.
PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "BAD_REQUEST",
                    "INVALID_STATE"}
# Calls kept while the server is away: one per epoch and a few at the end, so only a run of
# thousands of epochs against a server down for all of them reaches it.
MAX_PENDING = 10_000


@dataclass
class Pending:
    what: str  # named in the warnings: "metrics of epoch 3", "artifact best.h5"
    action: Callable[[], None]
    needs_run: bool = True


class Backlog:
    """Calls waiting for the MLflow server named `server` (credentials already hidden).

    `prepare` runs before each call that needs the MLflow run (it may itself call the server,
    e.g. to read what the run holds); `lost` runs when the server stops answering; `context`
    gives the `extra` fields of the log lines. Both run on the backlog's thread."""

    def __init__(self, server: str, prepare: Callable[[], None], lost: Callable[[], None],
                 context: Callable[[], Mapping[str, Any]]) -> None:
        self._server = server
        self._prepare = prepare
        self._lost = lost
        self._context = context
        self._items: list[Pending] = []
        self._dropped = 0  # calls over MAX_PENDING
        self._failing = False
        self._closed = False
        self._wake = False  # calls to send: the thread's next round is due
        self._busy = False  # the thread is sending
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._log = get_logger()

    @property
    def pending(self) -> list[str]:
        """What is waiting for the server, oldest first."""
        with self._changed:
            return [item.what for item in self._items]

    @property
    def closed(self) -> bool:
        return self._closed

    def add(self, what: str, action: Callable[[], None], needs_run: bool = True,
            flush: bool = True) -> None:
        """Queue `action` (dropped once closed or once tracking is off), then have the thread
        send what waits unless `flush` is False (to queue several calls first). Never waits."""
        with self._changed:
            if self._closed:
                return
            if len(self._items) >= MAX_PENDING:
                self._dropped += 1
                if self._dropped == 1:
                    self._log.warning(f"{MAX_PENDING} MLflow calls wait for {self._server}; "
                                      "further ones are dropped", extra=dict(self._context()))
                return
            self._items.append(Pending(what, action, needs_run))
        if flush:
            self.flush()

    def flush(self) -> None:
        """Have the thread send what waits (it starts with the first call). Never waits."""
        with self._changed:
            if self._closed:
                return
            self._wake = True
            if self._thread is None:
                # A daemon: a call stuck on a server that never answers never holds up the exit.
                self._thread = threading.Thread(target=self._run, name="mlflow-tracking",
                                                daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def wait(self, seconds: float) -> bool:
        """Wait at most `seconds` until the thread has sent what waits or has given up on an
        unreachable server; True when nothing waits any more."""
        with self._changed:
            self._changed.wait_for(lambda: not (self._wake or self._busy), seconds)
            return not self._items

    def close(self, target: str, seconds: float) -> list[str]:
        """Send what waits within `seconds`, then stop taking calls; returns what never reached
        the server, oldest first, and names it in one warning as not logged to `target`
        ("MLflow run 1a2b")."""
        self.flush()
        self.wait(seconds)
        with self._changed:
            if self._closed and not self._items:  # tracking was turned off meanwhile
                return []
            missing = [item.what for item in self._items]
            if self._dropped:
                missing.append(f"{self._dropped} more call(s) over the limit of {MAX_PENDING}")
            self._items.clear()
            self._closed = True
            self._changed.notify_all()
        if missing:
            self._log.warning(f"{self._server} unreachable or too slow: not logged to {target} "
                              f"within {seconds:.0f} s: {'; '.join(missing)}",
                              extra={**self._context(), "not_logged": missing})
        return missing

    def _run(self) -> None:
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._wake or self._closed)
                if self._closed:
                    return
                self._wake, self._busy = False, True
            sent = False
            try:
                sent = self._send()
            finally:
                with self._changed:
                    # Calls added while a call failed wait for the next one: one attempt per
                    # call to a server that hangs, not one more for each call queued meanwhile.
                    self._wake = self._wake and sent
                    self._busy = False
                    self._changed.notify_all()

    def _next(self) -> Pending | None:
        with self._changed:
            return None if self._closed or not self._items else self._items[0]

    def _done(self, item: Pending) -> None:
        with self._changed:
            if self._items and self._items[0] is item:  # close() may have emptied the list
                self._items.pop(0)

    def _send(self) -> bool:
        """Send what waits, oldest first; stop at the first failure (the server is down): the
        rest waits for the next call. False when the server is away."""
        while (item := self._next()) is not None:
            try:
                if item.needs_run:
                    self._prepare()
                item.action()
            except Exception as error:  # noqa: BLE001 - tracking never fails the job
                if error_code(error) not in PERMANENT_ERRORS:
                    self._unreachable(error)
                    return False
                self._done(item)
                if not item.needs_run:  # the run itself was refused: tracking is off
                    with self._changed:
                        self._closed = True
                        self._items.clear()
                    self._log.warning(f"MLflow refused {item.what} ({short(error)}); this run "
                                      "is not tracked")
                    return True
                self._log.warning(f"MLflow refused {item.what}: {short(error)}")
                continue
            self._done(item)
        if self._failing:
            self._failing = False
            self._log.info(f"{self._server} reachable again; what waited is logged",
                           extra=dict(self._context()))
        return True

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

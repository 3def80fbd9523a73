"""Progress of the long steps besides training (S3 downloads, `trainer fetch`, the uploads at the
end of a run, serving exports): a log line at most every PROGRESS_SECONDS while the step runs and
one when it finishes, with the items and bytes done; on a terminal (LOG_FORMAT=text on a TTY)
also a progress bar, redrawn in place below the log lines (trainer.logs.TerminalHandler).

    with progress_ticker("upload", "s3://bucket/runs/RUN", total=3, bytes_total=10_000) as t:
        t.add(bytes_done=4096)       # from any thread: s3transfer's callbacks call it
        t.add(done=1)                # an item finished
        t.running("onnx")            # what runs now, named on the line (one long call)

A background thread writes the lines, so a step that is one long call (an export) is reported
while it runs. Its fields: `step`, `done`, `total`, `bytes_done`, `bytes_total`,
`elapsed_seconds` and `running` (those the step has).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from trainer.logs import get_logger, terminal_bar

# A line at least this often while a step runs, as training's (trainer.tracking.run_progress);
# read when a ticker starts, so tests shorten it (or pass `every`).
PROGRESS_SECONDS = 30.0
# How often the terminal's bar is redrawn.
BAR_SECONDS = 0.5
BAR_WIDTH = 24


class Ticker:
    def __init__(self, step: str, subject: str, total: int | None, bytes_total: int | None,
                 every: float, extra: dict[str, Any]) -> None:
        self.step, self.subject, self.every, self.extra = step, subject, every, extra
        self.total, self.bytes_total = total, bytes_total
        self.done = self.bytes_done = 0
        self.current: str | None = None
        self.started = self._logged = time.monotonic()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bar = terminal_bar()
        period = min(every, BAR_SECONDS) if self._bar is not None else every
        self._thread = threading.Thread(target=self._run, args=(period,), daemon=True,
                                        name=f"progress-{step}")

    def add(self, done: int = 0, bytes_done: int = 0) -> None:
        """Items and bytes done since the last call (s3transfer rewinds a retried part with a
        negative amount)."""
        with self._lock:
            self.done += done
            self.bytes_done += bytes_done

    def at(self, done: int, running: str | None) -> None:
        """`done` items, and what runs now (None: nothing)."""
        with self._lock:
            self.done, self.current = done, running

    def add_bytes(self, amount: int) -> None:
        """s3transfer's Callback (trainer.store.stores.Progress)."""
        self.add(bytes_done=amount)

    def running(self, what: str | None) -> None:
        with self._lock:
            self.current = what

    def fields(self) -> dict[str, Any]:
        with self._lock:
            found = {"step": self.step, "done": self.done, "total": self.total,
                     "bytes_done": self.bytes_done, "bytes_total": self.bytes_total,
                     "elapsed_seconds": round(time.monotonic() - self.started, 1),
                     "running": self.current}
        return {k: v for k, v in found.items() if v is not None}

    def _run(self, period: float) -> None:
        while not self._stop.wait(period):
            if self._bar is not None:
                self._bar.show(bar_text(self.fields(), self.subject))
            if time.monotonic() - self._logged >= self.every:
                self._logged = time.monotonic()
                self._log(f"{self.step} {self.subject}: ")

    def _log(self, prefix: str) -> None:
        fields = self.fields()
        get_logger().info(prefix + counts(fields), extra={**self.extra, **fields})

    def start(self) -> Ticker:
        if self._bar is not None:
            self._bar.show(bar_text(self.fields(), self.subject))
        self._thread.start()
        return self

    def stop(self, finished: bool) -> None:
        """The thread stopped, the bar cleared; when the step `finished` after at least one
        interval, its last line (a quick step stays quiet)."""
        self._stop.set()
        self._thread.join()
        if self._bar is not None:
            self._bar.show("")
        if finished and time.monotonic() - self.started >= self.every:
            self.running(None)
            whole = self.total is None or self.done >= self.total
            self._log(f"{self.step} {self.subject} {'finished' if whole else 'stopped'}: ")


@contextmanager
def progress_ticker(step: str, subject: str = "", *, total: int | None = None,
                    bytes_total: int | None = None, every: float | None = None,
                    **extra: Any) -> Iterator[Ticker]:
    """A Ticker for the block; `extra` goes on each line (e.g. run_id)."""
    ticker = Ticker(step, subject, total, bytes_total,
                    PROGRESS_SECONDS if every is None else every, extra).start()
    finished = False
    try:
        yield ticker
        finished = True
    finally:
        ticker.stop(finished)


def counts(fields: dict[str, Any]) -> str:
    """'3/7, 12.0 of 40.0 MB, 12 s, running onnx'."""
    parts = []
    if "total" in fields:
        parts.append(f"{fields['done']}/{fields['total']}")
    if "bytes_total" in fields:
        parts.append(f"{fields['bytes_done'] / 1e6:.1f} of {fields['bytes_total'] / 1e6:.1f} MB")
    parts.append(f"{fields['elapsed_seconds']:.0f} s")
    if "running" in fields:
        parts.append(f"running {fields['running']}")
    return ", ".join(parts)


def bar_text(fields: dict[str, Any], subject: str = "") -> str:
    """'upload [#########...............]  37% 3/7, 12.0 of 40.0 MB, 12 s': bytes where known,
    else items."""
    done, total = fields.get("bytes_done", 0), fields.get("bytes_total")
    if not total:
        done, total = fields.get("done", 0), fields.get("total")
    fraction = min(max(done / total, 0.0), 1.0) if total else 0.0
    filled = round(fraction * BAR_WIDTH)
    name = f"{fields['step']} {subject}".strip()
    return (f"{name} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {100 * fraction:3.0f}% "
            + counts(fields))

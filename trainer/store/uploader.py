"""Background uploads: training hands files over and goes on; storage outages are waited out.

Each submitted file is frozen at once as a snapshot (a hard link, or a copy for files that grow
in place), so what is uploaded is exactly what was hashed, even when the file is replaced or
deleted meanwhile (s3transfer reopens the file by name for every part of a multipart upload).
One worker thread uploads in submission order; a file submitted again while pending is uploaded
once, in its newest version, at its new place in the queue, so a pointer never overtakes the
files it points at. Deletes wait until no upload is pending: by then the newest pointer is
stored, and whatever it no longer lists may go (the resume state's invariant, trainer/state.py).
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import Terminated, TransientError, UploadsUnfinished
from trainer.logs import get_logger
from trainer.store.stores import Store
from trainer.ticker import Ticker, progress_ticker

MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class _Job:
    key: str
    snapshot: Path | None  # None: delete the key
    source: Path | None  # the file it was taken from, for messages


class Uploader:
    def __init__(self, store: Store, staging: Path, first_backoff: float = 1.0) -> None:
        self.store = store
        self.staging = staging
        shutil.rmtree(staging, ignore_errors=True)  # snapshots of an earlier attempt
        staging.mkdir(parents=True, exist_ok=True)
        self.first_backoff = first_backoff
        self._uploads: dict[str, _Job] = {}
        self._deletes: dict[str, _Job] = {}
        self._in_flight: _Job | None = None
        self._sent = 0  # bytes of the upload in flight, from s3transfer's Callback
        self._progress: Ticker | None = None  # the final wait's (flush), while it waits
        self._counted: set[str] = set()  # the keys it counts the bytes of
        self._numbers = itertools.count()
        self._condition = threading.Condition()
        self._failure: Exception | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="uploader", daemon=True)
        self._thread.start()

    def submit(self, key: str, path: Path, copy: bool = False) -> None:
        """Upload `path`'s content as it is now under `key`, after everything submitted before.
        `copy` for files that are appended to in place (a hard link would follow them)."""
        snapshot = self.staging / f"{next(self._numbers):08d}-{path.name}"
        if copy:
            shutil.copyfile(path, snapshot)
        else:
            try:
                os.link(path, snapshot)
            except OSError:  # another file system, or no hard links there
                shutil.copyfile(path, snapshot)
        with self._condition:
            self.raise_if_refused()
            self._deletes.pop(key, None)
            self._discard(self._uploads.pop(key, None))
            self._uploads[key] = _Job(key, snapshot, path)
            self._condition.notify_all()

    def submit_delete(self, key: str) -> None:
        """Delete `key` once no upload is pending; a pending upload of it is dropped."""
        with self._condition:
            self.raise_if_refused()
            self._discard(self._uploads.pop(key, None))
            self._deletes[key] = _Job(key, None, None)
            self._condition.notify_all()

    def raise_if_refused(self) -> None:
        """Storage refusing (not merely unreachable) is final: stop the run with exit 4."""
        if self._failure is not None:
            raise self._failure

    def _discard(self, job: _Job | None) -> None:
        """A superseded snapshot, unless the worker is uploading it right now."""
        if job is not None and job.snapshot is not None and job is not self._in_flight:
            job.snapshot.unlink(missing_ok=True)

    def _next(self) -> _Job | None:
        """Called with the condition held: the oldest upload, else the oldest delete."""
        while not self._uploads and not self._deletes and not self._closing:
            self._condition.wait()
        queue = self._uploads or self._deletes
        return next(iter(queue.values())) if queue else None

    def _work(self) -> None:
        log = get_logger()
        backoff = self.first_backoff
        while True:
            with self._condition:
                job = self._next()
                if job is None:
                    return
                self._in_flight = job
            try:
                if job.snapshot is None:
                    self.store.delete(job.key)
                else:
                    self._sent = 0
                    self.store.put_file(job.key, job.snapshot, progress=self._count)
            except TransientError as error:
                self._count(-self._sent)  # its bytes go again with the retry
                if self._closing:  # abandoned: the run has already said what stays local
                    return
                log.warning(f"upload of {job.key} failed, retrying in {backoff:.0f} s: {error}",
                            extra={"key": job.key})
                with self._condition:
                    self._in_flight = None
                    if (self._uploads.get(job.key) or self._deletes.get(job.key)) is not job:
                        self._discard(job)
                    # Files handed over meanwhile notify the condition too; only close() may
                    # end the backoff early, else each would bring a retry (and its warning).
                    retry_at = time.monotonic() + backoff
                    while not self._closing and (wait := retry_at - time.monotonic()) > 0:
                        self._condition.wait(timeout=wait)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            except Exception as error:  # noqa: BLE001 - refusals and bugs alike end the run
                # StorageError ends the run with exit 4; anything else is a bug (exit 1). Either
                # way flush() raises it rather than waiting for uploads that will never happen.
                with self._condition:
                    self._failure = error
                    self._uploads.clear()
                    self._deletes.clear()
                    self._in_flight = None
                    self._condition.notify_all()
                return
            backoff = self.first_backoff
            with self._condition:
                self._in_flight = None
                queue = self._deletes if job.snapshot is None else self._uploads
                if queue.get(job.key) is job:
                    del queue[job.key]
                self._discard(job)
                self._condition.notify_all()

    def _count(self, amount: int) -> None:
        """s3transfer's Callback, from its threads: the bytes of the upload in flight."""
        self._sent += amount
        ticker, job = self._progress, self._in_flight
        if ticker is not None and job is not None and job.key in self._counted:
            ticker.add(bytes_done=amount)

    def pending(self) -> list[str]:
        """The keys not yet in the store (uploads, then deletes)."""
        with self._condition:
            return [*self._uploads, *self._deletes]

    def flush(self, timeout: float, stop: threading.Event | None = None,
              stop_grace: float = 0.0) -> None:
        """Return once every upload and delete is done; UploadsUnfinished (exit 75) naming the
        local copies if storage stays unreachable for `timeout` seconds. Once `stop` is set
        (SIGTERM), wait at most `stop_grace` seconds more, then raise Terminated (exit 143)."""
        deadline = time.monotonic() + timeout
        stopping = False
        with self._condition, self._ticker() as ticker:
            while (self._uploads or self._deletes) and self._failure is None:
                if stop is not None and stop.is_set() and not stopping:
                    stopping = True
                    deadline = min(deadline, time.monotonic() + stop_grace)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(timeout=min(remaining, 1.0))
                self._tally(ticker)
            self._tally(ticker)
            self.raise_if_refused()
            base = self.store.uri.rstrip("/")
            left = [f"{job.source} (for {base}/{key})" for key, job in self._uploads.items()]
        if not left:
            return
        self.close()
        # What is true of them: a rerun resumes from the newest state the store holds and
        # never reads this machine's copies (another pod, another node may run it).
        kept = (f"{len(left)} file(s) not in storage, kept on this machine only: "
                f"{', '.join(left)}; a rerun with the same RUN_ID resumes from the newest state "
                "that reached storage without reading them: to keep them, copy each to its "
                "place in storage before the rerun")
        if stopping:
            raise Terminated(f"stopped by SIGTERM with {kept}")
        raise UploadsUnfinished(f"storage {self.store.uri} stayed unreachable for "
                                f"UPLOAD_TIMEOUT={timeout:g} s after training; {kept}")

    @contextmanager
    def _ticker(self) -> Iterator[Ticker]:
        """Called with the condition held: the progress of what is pending now, by file and
        by byte (trainer.ticker), for the lines of a long wait."""
        sizes = {key: _size(job.snapshot) for key, job in self._uploads.items()}
        self._items = len(self._uploads) + len(self._deletes)
        with progress_ticker("upload", self.store.uri, total=self._items,
                             bytes_total=sum(sizes.values())) as ticker:
            job = self._in_flight
            if job is not None and job.key in sizes:
                ticker.add(bytes_done=self._sent)  # sent before the wait began
            self._counted, self._progress = set(sizes), ticker
            try:
                yield ticker
            finally:
                self._progress = None

    def _tally(self, ticker: Ticker) -> None:
        """Called with the condition held: the files stored so far, and the one in flight."""
        job = self._in_flight
        ticker.at(max(self._items - len(self._uploads) - len(self._deletes), 0),
                  None if job is None else job.key)

    def close(self) -> None:
        """Stop the worker once nothing is pending (at once when uploads are abandoned)."""
        with self._condition:
            self._closing = True
            self._uploads.clear()
            self._deletes.clear()
            self._condition.notify_all()


def _size(path: Path | None) -> int:
    try:
        return path.stat().st_size if path is not None else 0
    except OSError:  # a snapshot gone meanwhile counts for nothing
        return 0

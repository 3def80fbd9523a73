"""Background uploads: training hands files over and goes on; storage outages are waited out.

One worker thread uploads in submission order, always the file's newest content, so an older
best.h5 can never overwrite a newer one. A file submitted again while pending is uploaded once.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from trainer.errors import Terminated, TransientError, UploadsUnfinished
from trainer.logs import get_logger
from trainer.storage import Store

MAX_BACKOFF_SECONDS = 30.0


class Uploader:
    def __init__(self, store: Store, first_backoff: float = 1.0) -> None:
        self.store = store
        self.first_backoff = first_backoff
        self._pending: dict[str, Path | None] = {}
        self._submitted: dict[str, int] = {}
        self._condition = threading.Condition()
        self._failure: Exception | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="uploader", daemon=True)
        self._thread.start()

    def submit(self, key: str, path: Path | None) -> None:
        """Upload `path` as `key` (None: delete `key`) after everything submitted before it."""
        with self._condition:
            self.raise_if_refused()
            # Re-queued at the end: a pointer must not overtake the files it points at.
            self._pending.pop(key, None)
            self._pending[key] = path
            self._submitted[key] = self._submitted.get(key, 0) + 1
            self._condition.notify_all()

    def submit_delete(self, key: str) -> None:
        self.submit(key, None)

    def raise_if_refused(self) -> None:
        """Storage refusing (not merely unreachable) is final: stop the run with exit 4."""
        if self._failure is not None:
            raise self._failure

    def _work(self) -> None:
        log = get_logger()
        backoff = self.first_backoff
        while True:
            with self._condition:
                while not self._pending and not self._closing:
                    self._condition.wait()
                if not self._pending:
                    return
                key, path = next(iter(self._pending.items()))
                version = self._submitted[key]
            try:
                if path is None:
                    self.store.delete(key)
                else:
                    self.store.put_file(key, path)
            except TransientError as error:
                log.warning(f"upload of {key} failed, retrying in {backoff:.0f} s: {error}",
                            extra={"key": key})
                with self._condition:
                    self._condition.wait(timeout=backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            except FileNotFoundError:
                # Removed here after it was queued (an older state pruned): its delete is queued
                # behind it, unless nothing newer came, when there is nothing left to upload.
                with self._condition:
                    if self._submitted[key] == version:
                        self._pending.pop(key, None)
                    self._condition.notify_all()
                continue
            except Exception as error:  # noqa: BLE001 - refusals and bugs alike end the run
                # StorageError ends the run with exit 4; anything else is a bug (exit 1). Either
                # way flush() raises it rather than waiting for uploads that will never happen.
                with self._condition:
                    self._failure = error
                    self._pending.clear()
                    self._condition.notify_all()
                return
            backoff = self.first_backoff
            with self._condition:
                if self._submitted[key] == version:
                    self._pending.pop(key, None)
                self._condition.notify_all()

    def flush(self, timeout: float, stop: threading.Event | None = None,
              stop_grace: float = 0.0) -> None:
        """Return once every upload is done; UploadsUnfinished (exit 75) naming the local copies
        if storage stays unreachable for `timeout` seconds. Once `stop` is set (SIGTERM), wait
        at most `stop_grace` seconds more, then raise Terminated (exit 143)."""
        deadline = time.monotonic() + timeout
        stopping = False
        with self._condition:
            while self._pending and self._failure is None:
                if stop is not None and stop.is_set() and not stopping:
                    stopping = True
                    deadline = min(deadline, time.monotonic() + stop_grace)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(timeout=min(remaining, 1.0))
            self.raise_if_refused()
            left = [p for p in self._pending.values() if p is not None]
        if left:
            self.close()
            listing = ", ".join(str(p) for p in left)
            if stopping:
                raise Terminated(f"stopped by SIGTERM with {len(left)} file(s) not yet in "
                                 f"{self.store.uri}, kept locally: {listing}; rerun with the "
                                 "same RUN_ID to resume")
            raise UploadsUnfinished(
                f"storage {self.store.uri} stayed unreachable for UPLOAD_TIMEOUT={timeout:g} s "
                f"after training; {len(left)} file(s) kept locally: {listing}; rerun with the same "
                "RUN_ID once storage is back"
            )

    def close(self) -> None:
        """Stop the worker once nothing is pending (at once when uploads are abandoned)."""
        with self._condition:
            self._closing = True
            self._pending.clear()
            self._condition.notify_all()

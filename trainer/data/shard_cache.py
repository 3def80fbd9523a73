"""A bounded local cache for shards streamed from S3: the shard being read and the next ones,
downloaded in the background, never more than DATA_CACHE_BYTES on disk.

    reader = ShardCache(folder, limit, fetch, wait_seconds).reader([(key, size), ...])
    path = reader.open(i)      # shard i of the order, downloaded now if it is not here yet
    reader.close(i, done=True)                      # read: deleted at once; reader.stop()

Every download first reserves the shard's size (known from the listing); a download for a reader
that waits on it (`open`) evicts shards nobody is reading to make room, a prefetch only uses room
that is free, so the bytes reserved, which bound the bytes on disk (s3transfer writes a temporary
file beside the shard and renames it), never exceed the limit; `peak` records their high-water mark.
A shard is deleted once read; a restart reads from the store again. Storage that stops answering is
waited out as uploads are (trainer.store.uploader): a reader's download retries with a doubling
pause, logged, until `wait_seconds` (UPLOAD_TIMEOUT) have passed since the first failure, then
TransientError (exit 75). Prefetches fail quietly; the reader that needs the shard downloads it
itself. No TensorFlow here.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from trainer.errors import DataError, TrainerError, TransientError
from trainer.logs import get_logger
from trainer.store.keys import local_path
from trainer.store.uploader import MAX_BACKOFF_SECONDS

LOOKAHEAD = 8  # shards a reader downloads ahead of the one it reads, room permitting
Fetch = Callable[[str, Path, int], bool]  # (key, path, size) -> False when the object is gone


@dataclass
class _Entry:
    size: int
    path: Path
    ready: bool = False
    pins: int = 0  # readers reading it now: it is not evicted
    used: float = field(default_factory=time.monotonic)


class ShardCache:
    def __init__(self, folder: Path, limit: int, fetch: Fetch, wait_seconds: float,
                 where: str = "", first_backoff: float = 1.0) -> None:
        shutil.rmtree(folder, ignore_errors=True)  # what an earlier process left
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.limit, self.where = folder, limit, where
        self._fetch, self.wait_seconds, self.first_backoff = fetch, wait_seconds, first_backoff
        self._entries: dict[str, _Entry] = {}
        self._reserved = 0
        self.peak = 0  # the most bytes reserved at once
        self.fetched: list[str] = []  # keys downloaded, in order
        self.fetched_bytes = 0
        self._condition = threading.Condition()

    def reader(self, order: Sequence[tuple[str, int]], cyclic: bool = False, start: int = 0
               ) -> Reader:
        """A reader of `order`'s shards, from the one at `start` (those before are not
        downloaded)."""
        return Reader(self, list(order), cyclic, start)

    def open(self, key: str, size: int) -> Path:
        """The local path of `key`, downloaded now (patiently) if it is not here; pinned until
        `close`."""
        waiting = False
        with self._condition:
            while True:
                entry = self._entries.get(key)
                if entry is not None and entry.ready:
                    entry.pins += 1
                    entry.used = time.monotonic()
                    return entry.path
                if not waiting:  # the prefetch did not keep up (or storage is down)
                    waiting = True
                    get_logger().debug(f"waiting for DATASET shard {self.where}{key}",
                                       extra={"shard": key})
                if entry is not None:  # a prefetch is downloading it
                    self._condition.wait()
                    continue
                if self._make_room(size, key):
                    entry = self._reserve(key, size, pins=1)
                    break
                self._condition.wait()  # every shard here is being read: one will be closed
        self._download(key, entry, patient=True)
        return entry.path

    def close(self, key: str, done: bool) -> None:
        """Reading `key` stopped; `done`: it will not be read again soon, delete it now."""
        with self._condition:
            entry = self._entries.get(key)
            if entry is None:
                return
            entry.pins -= 1
            if done and entry.pins <= 0:
                self._drop(key)
            self._condition.notify_all()

    def prefetch(self, key: str, size: int, wanted: Callable[[], bool] = lambda: True) -> bool:
        """Download `key` if there is free room for it and it is still `wanted` (asked under
        the lock that deletions take); False when not (or it failed)."""
        with self._condition:
            if key in self._entries or not wanted():
                return True
            if self._reserved + size > self.limit:
                return False
            entry = self._reserve(key, size, pins=0)
        try:
            self._download(key, entry, patient=False)
        except TrainerError:
            return False
        return True

    def has_room_for(self, size: int) -> bool:
        return self._reserved + size <= self.limit  # a hint: `prefetch` asks again, locked

    def present(self, key: str) -> bool:
        return key in self._entries  # a dict lookup: atomic under the GIL

    # -- with the condition held --

    def _reserve(self, key: str, size: int, pins: int) -> _Entry:
        entry = _Entry(size, local_path(self.folder, key), pins=pins)
        self._entries[key] = entry
        self._reserved += size
        self.peak = max(self.peak, self._reserved)
        return entry

    def _make_room(self, size: int, keep: str) -> bool:
        """Evict shards nobody reads (least recently used first) until `size` fits."""
        idle = sorted((e.used, k) for k, e in self._entries.items()
                      if e.ready and e.pins <= 0 and k != keep)
        while self._reserved + size > self.limit and idle:
            self._drop(idle.pop(0)[1])
        return self._reserved + size <= self.limit

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        entry.path.unlink(missing_ok=True)
        self._reserved -= entry.size

    # -- downloads, outside the condition --

    def _download(self, key: str, entry: _Entry, patient: bool) -> None:
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            (self._fetch_patiently if patient else self._fetch_once)(key, entry.path, entry.size)
        except BaseException:
            with self._condition:
                if self._entries.get(key) is entry:
                    self._drop(key)
                self._condition.notify_all()
            raise
        with self._condition:
            entry.ready = True
            self.fetched.append(key)
            self.fetched_bytes += entry.size
            self._condition.notify_all()
        get_logger().debug(f"streamed DATASET shard {self.where}{key}", extra={"shard": key})

    def _fetch_once(self, key: str, path: Path, size: int) -> None:
        if not self._fetch(key, path, size):
            raise DataError(f"DATASET: {self.where}{key} is gone from the store since it was "
                            "listed; start the run again to list the shards anew")

    def _fetch_patiently(self, key: str, path: Path, size: int) -> None:
        backoff = self.first_backoff
        first_failure: float | None = None
        while True:
            try:
                return self._fetch_once(key, path, size)
            except TransientError as error:
                now = time.monotonic()
                first_failure = first_failure or now
                left = self.wait_seconds - (now - first_failure)
                if left <= 0:
                    raise TransientError(
                        f"storage stayed unreachable for UPLOAD_TIMEOUT={self.wait_seconds:g} s "
                        f"while streaming DATASET shard {self.where}{key}: {error}") from None
                get_logger().warning(f"reading DATASET shard {key} failed, retrying in "
                                     f"{backoff:g} s: {error}", extra={"shard": key})
                time.sleep(min(backoff, left))
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)


class Reader:
    """One stream's shards in reading order, the next ones downloaded by a thread meanwhile."""

    def __init__(self, cache: ShardCache, order: list[tuple[str, int]], cyclic: bool,
                 start: int = 0) -> None:
        self.cache, self.order, self.cyclic = cache, order, cyclic
        self.position = start
        self._stopped = threading.Event()
        self._moved = threading.Event()
        self._thread = threading.Thread(target=self._prefetch, name="shard-prefetch", daemon=True)
        self._thread.start()

    def open(self, index: int) -> Path:
        self.position = index
        self._moved.set()
        key, size = self.order[index % len(self.order)]
        return self.cache.open(key, size)

    def close(self, index: int, done: bool) -> None:
        if done:  # not to be fetched again for this place in the order: moved on before the
            with self.cache._condition:  # deletion, under its lock (see `prefetch`)
                self.position = max(self.position, index + 1)
        self.cache.close(self.order[index % len(self.order)][0], done)
        self._moved.set()

    def stop(self) -> None:
        self._stopped.set()
        self._moved.set()

    def _next_missing(self) -> tuple[int, str, int] | None:
        end = self.position + LOOKAHEAD + 1
        if not self.cyclic:
            end = min(end, len(self.order))
        for index in range(self.position, end):
            key, size = self.order[index % len(self.order)]
            if not self.cache.present(key):
                return index, key, size
        return None

    def _prefetch(self) -> None:
        pause = self.cache.first_backoff
        while not self._stopped.is_set():
            self._moved.clear()
            target = self._next_missing()
            if target is None or not self.cache.has_room_for(target[2]):
                self._moved.wait(timeout=1.0)  # the reader moved on, or a shard was deleted
                continue
            index, key, size = target

            def wanted(at: int = index) -> bool:
                return at >= self.position

            if self.cache.prefetch(key, size, wanted):
                pause = self.cache.first_backoff
            else:  # storage down, or the room was taken meanwhile
                self._stopped.wait(pause)
                pause = min(pause * 2, MAX_BACKOFF_SECONDS)

"""A local folder that mirrors S3 objects: the download half of trainer.store.s3.download_uri.

- Keys become paths only through trainer.store.keys.local_path, which refuses keys that would leave
  the folder.
- A marker per object, kept in a tree of its own (`<cache>/.etags/<bucket>/<key>`, so the data
  folder holds nothing but data), records the ETag and size it was downloaded at and the local
  file's size and mtime: an object is fetched again when either side changed.
- Downloads run concurrently in one s3transfer TransferManager (its threads, botocore's retries);
  s3transfer writes each file under a temporary name and renames it when complete.
- Files the bucket no longer lists, and temporary files a killed download left, are removed, so
  they cannot become training data.
- One process at a time per cache folder (an flock): two workers sharing WORK_DIR wait for each
  other instead of racing on the same files.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

from boto3.s3.transfer import TransferConfig, create_transfer_manager
from s3transfer.subscribers import BaseSubscriber

from trainer.store.faults import is_missing, storage_error
from trainer.store.keys import check_layout, local_path
from trainer.ticker import Ticker, progress_ticker

MIRROR_CONCURRENCY = 16
MARKERS = ".etags"


class S3Object(NamedTuple):
    key: str  # relative to the mirrored folder
    size: int
    etag: str


@contextmanager
def cache_lock(cache: Path) -> Iterator[None]:
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mirror(client: Any, bucket: str, folder: str, root: Path, markers: Path,
           objects: list[S3Object], wanted: list[S3Object], *, endpoint: str | None,
           concurrency: int = MIRROR_CONCURRENCY, progress_seconds: float = 10.0,
           prune: bool = True) -> None:
    """Make `root` hold the current version of each of `wanted` (keys under s3://bucket/folder);
    with `prune`, remove files that are not among `objects` (the whole listing)."""
    targets = {o.key: local_path(root, o.key) for o in objects}  # every key checked first
    check_layout(list(targets))
    stale = []
    for item in wanted:
        target, marker = targets[item.key], local_path(markers, item.key)
        if not _unchanged(target, marker, item):
            marker.unlink(missing_ok=True)
            stale.append((item, target, marker))
    if prune:
        keep = set(targets.values())
        _remove_others(root, keep)
        _remove_others(markers, {markers / path.relative_to(root) for path in keep})
    if stale:
        _download(client, bucket, folder, stale, endpoint, concurrency, progress_seconds)


def _unchanged(target: Path, marker: Path, item: S3Object) -> bool:
    try:
        stamp, stat = json.loads(marker.read_text()), target.stat()
    except (OSError, ValueError):
        return False
    return stamp == _stamp(item, stat)


def _stamp(item: S3Object, stat: os.stat_result) -> dict[str, Any]:
    return {"etag": item.etag, "size": item.size, "local_size": stat.st_size,
            "local_mtime_ns": stat.st_mtime_ns}


def _remove_others(root: Path, keep: set[Path]) -> None:
    """Delete files under `root` that are not in `keep`, then the folders left empty."""
    for folder, _subfolders, files in os.walk(root, topdown=False):
        here = Path(folder)
        for name in files:
            if here / name not in keep:
                (here / name).unlink()
        if here != root and not any(here.iterdir()):
            here.rmdir()


def _download(client: Any, bucket: str, folder: str, items: list[tuple[S3Object, Path, Path]],
              endpoint: str | None, concurrency: int, progress_seconds: float) -> None:
    config = TransferConfig(max_concurrency=concurrency)
    with progress_ticker("download", f"s3://{bucket}/{folder}", total=len(items),
                         bytes_total=sum(i.size for i, _, _ in items),
                         every=progress_seconds) as ticker, \
            create_transfer_manager(client, config) as manager:
        counted = _Counted(ticker)
        futures = []
        for item, target, _ in items:
            target.parent.mkdir(parents=True, exist_ok=True)
            futures.append(manager.download(bucket, folder + item.key, str(target),
                                            subscribers=[KnownSize(item.size), counted]))
        for (item, target, marker), future in zip(items, futures, strict=True):
            try:
                future.result()
            except Exception as error:
                if is_missing(error):  # deleted since it was listed: not part of the mirror
                    target.unlink(missing_ok=True)
                    continue
                mapped = storage_error(error, f"s3://{bucket}/{folder}{item.key}", endpoint)
                if mapped is error:
                    raise
                raise mapped from None
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(_stamp(item, target.stat())))


class KnownSize(BaseSubscriber):
    """The size is known from the listing: s3transfer need not ask with a HEAD per object."""

    def __init__(self, size: int) -> None:
        self.size = size

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        future.meta.provide_transfer_size(self.size)


class _Counted(BaseSubscriber):
    """s3transfer's progress of every object, into one ticker (trainer.ticker)."""

    def __init__(self, ticker: Ticker) -> None:
        self.ticker = ticker

    def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
        self.ticker.add(bytes_done=bytes_transferred)

    def on_done(self, future: Any, **kwargs: Any) -> None:
        self.ticker.add(done=1)

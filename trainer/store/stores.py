"""Where runs are stored: a local folder, or S3-compatible object storage (trainer.store.s3).

Keys are relative to ARTIFACT_URI, e.g. `<run_id>/best.h5`. Every write is atomic: a reader sees
the old version or the new one, never half a file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from trainer.errors import StorageError
from trainer.store.files import write_atomic

# Bytes moved since the last call: s3transfer's Callback, also called by the local store.
Progress = Callable[[int], None]


def key_in(folder: str, name: str) -> str:
    """The key of `name` in a run's folder of the store ("" when the store is the run's)."""
    return f"{folder}/{name}" if folder else name


class Store(Protocol):
    """What the job, `trainer runs` and `trainer fetch` need of a place that keeps runs."""

    uri: str

    def check_writable(self) -> None:
        """Fail now (StorageError, TransientError) rather than after an hour of training."""

    def read_bytes(self, key: str) -> bytes | None:
        """The object's content, or None when there is none."""

    def put_file(self, key: str, path: Path, progress: Progress | None = None, *,
                 quick: bool = False) -> None:
        """Store a local file under `key`, atomically; `progress(bytes)` as they go; `quick`:
        with few retries and short timeouts (a small record written on the way out, while
        storage may be down)."""

    def get_file(self, key: str, path: Path, progress: Progress | None = None) -> bool:
        """Download `key` to `path` (atomically); False when there is no such object."""

    def delete(self, key: str) -> None:
        """Remove `key`; no error when it is already gone."""

    def list_runs(self) -> list[str]:
        """The run ids under this store."""

    def list_keys(self, prefix: str) -> list[str]:
        """Every key that starts with `prefix`."""

    def local_run_dir(self, run_id: str) -> Path | None:
        """The folder a run's files live in when this store is a local folder, else None."""
        return None


class LocalStore:
    def __init__(self, root: str) -> None:
        self.root = Path(root).expanduser()
        self.uri = str(self.root)

    def check_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=self.root).close()
        except OSError as error:
            raise StorageError(f"ARTIFACT_URI={self.uri} is not writable ({error.strerror}); "
                               "give a folder you can write to") from error

    def read_bytes(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def put_file(self, key: str, path: Path, progress: Progress | None = None, *,
                 quick: bool = False) -> None:
        target = self.root / key
        if target.resolve() != Path(path).resolve():
            with open(path, "rb") as f:
                write_atomic(target, f.read())
        if progress is not None:
            progress(Path(path).stat().st_size)

    def get_file(self, key: str, path: Path, progress: Progress | None = None) -> bool:
        source = self.root / key
        if not source.is_file():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        shutil.copyfile(source, temporary)
        os.replace(temporary, path)
        if progress is not None:
            progress(path.stat().st_size)
        return True

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def list_runs(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir()
                      if p.is_dir() and not p.name.startswith("."))

    def list_keys(self, prefix: str) -> list[str]:
        folder, _, start = prefix.rpartition("/")
        base = self.root / folder
        if not base.is_dir():
            return []
        return sorted(str(p.relative_to(self.root)) for p in base.rglob(f"{start}*")
                      if p.is_file())

    def local_run_dir(self, run_id: str) -> Path:
        return self.root / run_id


def open_store(uri: str, endpoint_url: str | None = None, addressing_style: str = "auto") -> Store:
    if uri.startswith("s3://"):
        # boto3 only where S3 is used: a local run starts without it.
        from trainer.store.s3 import S3Store

        return S3Store(uri, endpoint_url=endpoint_url, addressing_style=addressing_style)
    return LocalStore(uri)

"""A run's files: written locally (atomically), then published to the store.

Only the chief worker writes. `manifest.json` comes last and lists every artifact with its size
and sha256, so a reader knows the run finished and can verify what it fetched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import h5py

from trainer.store.files import make_readable, sha256_of, write_atomic
from trainer.store.stores import LocalStore, Store, key_in
from trainer.store.uploader import Uploader

if TYPE_CHECKING:
    import keras

    from trainer.settings import Settings


class HistoryRow(TypedDict):
    """One epoch of `history.json` and `history.csv`, in the contract's column order."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    learning_rate: float
    seconds: float
    images_per_second: float


HISTORY_COLUMNS = tuple(HistoryRow.__annotations__)
MODEL_METADATA_ATTRIBUTE = "trainer_metadata"
# The end-of-run evaluation of the best model (trainer.reports.evaluation).
EVALUATION_FILES = ("metrics.json", "confusion.png", "errors.png")


class RunArtifacts:
    """The chief's files of one run: `path` locally, `key` in the store, `publish` to send."""

    def __init__(self, store: Store, run_id: str, local_dir: Path,
                 publisher: Uploader | None = None) -> None:
        self.store = store
        self.run_id = run_id
        self.local_dir = local_dir
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self._publisher = publisher
        self.published: set[str] = set()

    def path(self, name: str) -> Path:
        return self.local_dir / name

    def key(self, name: str) -> str:
        return key_in(self.run_id, name)

    def publish(self, name: str, grows_in_place: bool = False) -> None:
        """Hand a finished local file to the store (in the background where the store is
        remote). `grows_in_place` for files appended to rather than replaced (event files)."""
        self.published.add(name)
        if self._publisher is not None:
            self._publisher.submit(self.key(name), self.path(name), copy=grows_in_place)
        else:
            self.store.put_file(self.key(name), self.path(name))

    def adopt(self, name: str, sha256: str | None) -> bool:
        """Count a file an earlier attempt of this run published (fetched back if remote), if
        its content is the one recorded (any, for a state saved before digests were kept);
        False, and nothing kept, if it is not."""
        path = self.path(name)

        def matches() -> bool:
            return path.is_file() and (sha256 is None or sha256_of(path) == sha256)

        if not matches():
            path.unlink(missing_ok=True)
            if not self.store.get_file(self.key(name), path) or not matches():
                path.unlink(missing_ok=True)
                return False
        self.published.add(name)
        return True

    def adopt_stored(self) -> None:
        """What earlier attempts stored stays part of the run and of its manifest: pictures,
        TensorBoard event files (each attempt writes its own), the restored state's files;
        not the states that would have to be downloaded only to be listed."""
        prefix = self.key("")
        for key in self.store.list_keys(prefix):
            name = key.removeprefix(prefix)
            if name in self.published or name == "manifest.json":
                continue
            if not name.startswith("state/") or self.path(name).is_file():
                self.adopt(name, None)

    def remove(self, name: str) -> None:
        """Delete a file here and in the store (after whatever was published before it)."""
        self.path(name).unlink(missing_ok=True)
        self.published.discard(name)
        if self._publisher is not None:
            self._publisher.submit_delete(self.key(name))
        else:
            self.store.delete(self.key(name))

    def raise_if_refused(self) -> None:
        if self._publisher is not None:
            self._publisher.raise_if_refused()

    def finish_uploads(self, timeout: float, stop: threading.Event | None = None,
                       stop_grace: float = 0.0) -> None:
        """Every published file in the store, or TransientError after `timeout` seconds
        (Terminated `stop_grace` seconds after `stop`, a threading.Event, is set)."""
        if self._publisher is not None:
            self._publisher.flush(timeout, stop, stop_grace)

    def write_json(self, name: str, content: Any) -> None:
        """Valid JSON whatever the numbers: NaN and infinities (a diverged loss) as null."""
        text = json.dumps(_finite(content), indent=2, sort_keys=True, allow_nan=False)
        write_atomic(self.path(name), text.encode())
        self.publish(name)

    def write_history(self, rows: tuple[HistoryRow, ...] | list[HistoryRow]) -> None:
        self.write_json("history.json", rows)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=HISTORY_COLUMNS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path("history.csv"), text.getvalue().encode())
        self.publish("history.csv")

    def save_model(self, model: keras.Model, name: str, metadata: dict[str, Any]) -> None:
        """The whole model without optimizer state, as HDF5, carrying `metadata` as an attribute
        so that a bare .h5 still knows its class names and preprocessing."""
        handle, temporary = tempfile.mkstemp(dir=self.local_dir, prefix=f".{name}.", suffix=".h5")
        os.close(handle)
        make_readable(temporary)
        try:
            model.save(temporary, include_optimizer=False)
            with h5py.File(temporary, "a") as f:
                f.attrs[MODEL_METADATA_ATTRIBUTE] = json.dumps(metadata)
            os.replace(temporary, self.path(name))
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        self.publish(name)

    def manifest(self, **fields: Any) -> dict[str, Any]:
        files = {
            name: {"size": self.path(name).stat().st_size, "sha256": sha256_of(self.path(name))}
            for name in sorted(self.published) if self.path(name).is_file()
        }
        return {**fields, "run_id": self.run_id, "artifacts": files}


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def read_model_metadata(path: Path) -> dict[str, Any]:
    """The metadata `save_model` stored in an .h5 file; {} for a model saved elsewhere."""
    with h5py.File(path, "r") as f:
        raw = f.attrs.get(MODEL_METADATA_ATTRIBUTE)
    return json.loads(raw) if raw else {}


def run_files(settings: Settings, store: Store) -> tuple[RunArtifacts, RunArtifacts]:
    """The run's files, and those of its resume state (the same, unless a platform keeps the
    state elsewhere: SageMaker's checkpoints/, Vertex AI's AIP_CHECKPOINT_DIR). Written in
    place in a local store; in WORK_DIR, then uploaded in the background, in object storage."""
    local_dir = store.local_run_dir(settings.run_key)
    if local_dir is not None:
        artifacts = RunArtifacts(store, settings.run_key, local_dir)
    else:
        work = Path(settings.work_dir) / "runs" / settings.run_key
        artifacts = RunArtifacts(store, settings.run_key, work,
                                 publisher=Uploader(store, staging=work / ".uploads"))
    if not settings.state_dir:
        return artifacts, artifacts
    state_store = LocalStore(settings.state_dir)
    return artifacts, RunArtifacts(state_store, "", state_store.root)


def state_place(settings: Settings, store: Store) -> tuple[Store, str, Path]:
    """Where a restart finds the resume state: the store, the run's key in it, and the local
    folder the state's files are brought to (the one run_files writes them in)."""
    if settings.state_dir:
        state_store = LocalStore(settings.state_dir)
        return state_store, "", state_store.root
    local_dir = store.local_run_dir(settings.run_key)
    return store, settings.run_key, local_dir or Path(settings.work_dir) / "runs" / settings.run_key

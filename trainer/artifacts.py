"""A run's files: written locally (atomically), then published to the store.

Only the chief worker writes. `manifest.json` comes last and lists every artifact with its size
and sha256, so a reader knows the run finished and can verify what it fetched.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from trainer.storage import Store, make_readable, write_atomic

HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                   "seconds", "images_per_second")
MODEL_METADATA_ATTRIBUTE = "trainer_metadata"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RunArtifacts:
    def __init__(self, store: Store, run_id: str, local_dir: Path, publisher: Any = None) -> None:
        self.store = store
        self.run_id = run_id
        self.local_dir = local_dir
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self._publisher = publisher
        self.published: set[str] = set()

    def path(self, name: str) -> Path:
        return self.local_dir / name

    def key(self, name: str) -> str:
        return f"{self.run_id}/{name}"

    def publish(self, name: str) -> None:
        """Hand a finished local file to the store (in the background where the store is remote)."""
        self.published.add(name)
        if self._publisher is not None:
            self._publisher.submit(self.key(name), self.path(name))
        else:
            self.store.put_file(self.key(name), self.path(name))

    def adopt(self, name: str) -> None:
        """Count a file an earlier attempt of this run published (fetched back if remote)."""
        if self.path(name).is_file() or self.store.get_file(self.key(name), self.path(name)):
            self.published.add(name)

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

    def finish_uploads(self, timeout: float, stop: Any = None, stop_grace: float = 0.0) -> None:
        """Every published file in the store, or TransientError after `timeout` seconds
        (Terminated `stop_grace` seconds after `stop`, a threading.Event, is set)."""
        if self._publisher is not None:
            self._publisher.flush(timeout, stop, stop_grace)

    def write_json(self, name: str, content: Any) -> None:
        write_atomic(self.path(name), json.dumps(content, indent=2, sort_keys=True).encode())
        self.publish(name)

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        self.write_json("history.json", rows)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=HISTORY_COLUMNS, extrasaction="ignore",
                                lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(self.path("history.csv"), text.getvalue().encode())
        self.publish("history.csv")

    def save_model(self, model: Any, name: str, metadata: dict[str, Any]) -> None:
        """The whole model without optimizer state, as HDF5, carrying `metadata` as an attribute
        so that a bare .h5 still knows its class names and preprocessing."""
        import h5py

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


def read_model_metadata(path: Path) -> dict[str, Any]:
    """The metadata `save_model` stored in an .h5 file; {} for a model saved elsewhere."""
    import h5py

    with h5py.File(path, "r") as f:
        raw = f.attrs.get(MODEL_METADATA_ATTRIBUTE)
    return json.loads(raw) if raw else {}

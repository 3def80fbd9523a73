"""Runs in a store: list them, and fetch one's model and metadata, verified."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from trainer.errors import DataError, StorageError
from trainer.reports.run_page import PICTURES, build_report
from trainer.serving.runtimes import saved_model_version
from trainer.store.artifacts import EVALUATION_FILES
from trainer.store.failures import read_failure, reason_line, run_status
from trainer.store.files import sha256_of, write_atomic
from trainer.store.stores import Store
from trainer.ticker import progress_ticker

FETCHED = ("best.h5", "config.json", "history.json", "manifest.json")
OPTIONAL_FETCHED = (*EVALUATION_FILES, "report.html", "curves.png", "samples.png", "history.csv")


def _json(store: Store, key: str) -> dict | list | None:
    raw = store.read_bytes(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return None


def list_runs(store: Store) -> list[str]:
    """One line per run: id, status, epochs done, best value."""
    lines = [f"{'RUN_ID':<44} {'STATUS':<11} {'EPOCHS':>6}  BEST (or why it stopped)"]
    for run_id in store.list_runs():
        manifest = _json(store, f"{run_id}/manifest.json")
        if isinstance(manifest, dict):
            status, epochs = manifest.get("status", "?"), manifest.get("epochs_done", "?")
            best = f"{manifest.get('monitor')}={manifest.get('best_value', 0):.4f}"
            best += f" (epoch {manifest.get('best_epoch')})"
            failure = read_failure(store, run_id) if status != "finished" else None
            best += f"; {reason_line(failure)}" if failure else ""  # a failed export
        else:
            history = _json(store, f"{run_id}/history.json")
            failure = read_failure(store, run_id)
            if (history is None and failure is None
                    and store.read_bytes(f"{run_id}/config.json") is None):
                continue
            status, epochs = run_status(failure), len(history or [])
            best = reason_line(failure) if failure else "-"
        lines.append(f"{run_id:<44} {status:<11} {epochs:>6}  {best}")
    return lines


def fetch_run(store: Store, run_id: str, destination: Path) -> Path:
    """Download best.h5, config.json, history.json and manifest.json into destination/run_id,
    and the evaluation, report.html and TensorBoard files where the manifest lists them, each
    verified against the manifest's sha256."""
    manifest = _json(store, f"{run_id}/manifest.json")
    if not isinstance(manifest, dict):
        raise StorageError(f"run {run_id} has no manifest.json in {store.uri}: it does not exist "
                           "or has not finished; see `trainer runs`")
    root = destination.resolve()
    folder = (root / run_id).resolve()
    if root not in folder.parents:
        raise DataError(f"run id {run_id} would write outside {root}; give a plain run id")
    root.mkdir(parents=True, exist_ok=True)
    # Into a temporary folder beside it, renamed into place once every file is verified: a
    # fetch that fails leaves nothing partial (and an earlier complete copy as it was).
    with tempfile.TemporaryDirectory(prefix=f".{run_id}.", dir=root) as scratch:
        partial = Path(scratch) / run_id
        _fetch_files(store, run_id, manifest, partial)
        if folder.exists():
            folder.rename(Path(scratch) / "replaced")
        partial.rename(folder)
    return folder


def _fetch_files(store: Store, run_id: str, manifest: dict, folder: Path) -> None:
    listed = manifest.get("artifacts", {})
    # The evaluation, the report and the TensorBoard files too, where the run has them.
    extras = [name for name in listed if name in OPTIONAL_FETCHED or name.startswith(
        ("tensorboard/", "export/"))]
    folder.mkdir()
    names = [name for name in (*FETCHED, *extras) if name != "manifest.json"]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    size = sum(int(listed.get(name, {}).get("size", 0)) for name in names)
    with progress_ticker("fetch", f"{store.uri.rstrip('/')}/{run_id}", total=len(names),
                         bytes_total=size) as ticker:
        for name in names:
            target = (folder / name).resolve()
            if folder.resolve() not in target.parents:
                raise DataError(f"{name} would be written outside {folder}")
            if name not in listed or not store.get_file(f"{run_id}/{name}", target,
                                                        progress=ticker.add_bytes):
                raise StorageError(f"run {run_id} has no {name} in {store.uri}")
            if sha256_of(target) != listed[name]["sha256"]:
                raise DataError(f"{name} of run {run_id} does not match the sha256 in its "
                                "manifest; fetch it again, and if it persists the stored copy "
                                "is damaged")
            ticker.add(done=1)


def rebuild_report(store: Store, run_id: str) -> str:
    """report.html of a run rebuilt from its files in the store; returns where it went."""
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        names = ["config.json", "history.json", "metrics.json", "manifest.json",
                 *(name for name, _ in PICTURES)]
        found = [name for name in names if store.get_file(f"{run_id}/{name}", folder / name)]
        if "history.json" not in found and "config.json" not in found:
            raise StorageError(f"run {run_id} has no config.json or history.json in "
                               f"{store.uri}; see `trainer runs`")
        report = folder / "report.html"
        write_atomic(report, build_report(folder, run_id).encode())
        store.put_file(f"{run_id}/report.html", report)
        if "manifest.json" in found:
            # The manifest vouches for every file it lists: it gets the new report's digest.
            manifest = json.loads((folder / "manifest.json").read_text())
            manifest.setdefault("artifacts", {})["report.html"] = {
                "size": report.stat().st_size, "sha256": sha256_of(report)}
            write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2).encode())
            store.put_file(f"{run_id}/manifest.json", folder / "manifest.json")
    return f"{store.uri.rstrip('/')}/{run_id}/report.html"


def resolve_model(model: str, store: Store) -> Path:
    """A local .h5 or .onnx file, or SavedModel folder, as it is; a run id fetched (verified)
    into a cache folder, its best.h5."""
    path = Path(model)
    if path.is_dir() and saved_model_version(path) is not None:
        return path
    if path.is_dir() and ("/" in model or model in (".", "..")):  # a path, not a run id
        raise DataError(f"MODEL {model} is a folder without a SavedModel (saved_model.pb, "
                        "or numbered version folders holding one)")
    if model.endswith((".h5", ".onnx")) or path.is_file():
        if not path.is_file():
            raise DataError(f"MODEL {model} does not exist; give an .h5 or .onnx file, an "
                            "exported SavedModel folder or a run id")
        return path
    cache = Path(tempfile.gettempdir()) / "trainer-models"
    return fetch_run(store, model, cache) / "best.h5"

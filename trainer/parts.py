"""The finish phase by parts: what of the end of a run is done, recorded with the resume state.

After the last epoch a run makes, from best.h5: the evaluation, the report, each serving export
with its check, the MLflow logging, then manifest.json. Each part, once done, is recorded in
`state/finish.json` (with the resume state, uploaded after the part's files: the uploader keeps
submission order) with best.h5's sha256 and its own files' sha256. A restart does only the parts
that are missing, or whose files are no longer the recorded ones, or that were made from another
best.h5. When every part is recorded, `trainer.job` finishes the run from this record alone:
no TensorFlow, no model built, no dataset read (`finish_from_record`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.errors import TransientError
from trainer.logs import get_logger
from trainer.reports.run_page import build_report
from trainer.serving.formats import export_failure
from trainer.settings import Settings, changed_settings
from trainer.store.artifacts import EVALUATION_FILES, RunArtifacts, run_files, state_place
from trainer.store.files import sha256_of, write_atomic
from trainer.store.stores import Store, key_in

RECORD = "state/finish.json"
POINTER = "state/LATEST.json"  # trainer.state's pointer to the newest resume states
EVALUATION, REPORT, TRACKING = "evaluation", "report", "tracking"
# What manifest.json says of each export (docs/serving.md shows them; tests/test_readme.py).
MANIFEST_EXPORT_FIELDS = ("status", "max_abs_difference", "error")
Evaluate = Callable[[Path, Path], dict[str, Any]]  # (best.h5, folder) -> metrics.json content
OnDone = Callable[[str, dict[str, Any]], None]  # (format, its result) as soon as it is checked
# (best.h5, folder, formats, on_done) -> per format (trainer.serving.export.export_model)
Export = Callable[[Path, Path, list[str], OnDone], dict[str, dict[str, Any]]]


def export_part(kind: str) -> str:
    return f"export {kind}"


def required_parts(formats: Sequence[str], tracking: bool) -> list[str]:
    """The parts a finished run has: MLflow's only where it is set up."""
    return [EVALUATION, REPORT, *map(export_part, formats), *([TRACKING] if tracking else [])]


def _fetched(files: RunArtifacts, name: str, sha256: str | None) -> bool:
    """`files.adopt`, where storage that is down means "not recorded": the part is made again
    here, and the uploads at the end wait for the storage as long as UPLOAD_TIMEOUT says."""
    try:
        return files.adopt(name, sha256)
    except TransientError as error:
        get_logger().warning(f"{name} is made again: {error}")
        return False


class FinishRecord:
    """`state/finish.json`: the summary of the training (what the manifest says of it), the
    sha256 of the best.h5 the parts were made from, and per part its files and result."""

    def __init__(self, state_files: RunArtifacts, artifacts: RunArtifacts,
                 content: dict[str, Any]) -> None:
        self.state_files = state_files
        self.artifacts = artifacts
        self.content = content

    @classmethod
    def load(cls, state_files: RunArtifacts, artifacts: RunArtifacts) -> FinishRecord:
        """The record as stored (fetched back where the store is remote); empty if none."""
        content: dict[str, Any] = {}
        if _fetched(state_files, RECORD, None):
            try:
                loaded = json.loads(state_files.path(RECORD).read_text())
                content = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                content = {}
        return cls(state_files, artifacts, content)

    @property
    def best_sha256(self) -> str | None:
        return self.content.get("best_sha256")

    @property
    def summary(self) -> dict[str, Any]:
        return dict(self.content.get("summary") or {})

    def begin(self, best_sha256: str | None, summary: dict[str, Any]) -> None:
        """The parts recorded stay only if made from this best.h5 for this training."""
        if self.best_sha256 != best_sha256 or self.summary != summary or best_sha256 is None:
            self.content = {"best_sha256": best_sha256, "summary": summary, "parts": {}}
            self._save()

    def done(self, part: str) -> dict[str, Any] | None:
        """The part's result if it is recorded and its files are the recorded ones (fetched
        back where the store is remote); None if it has to be made (again)."""
        entry = (self.content.get("parts") or {}).get(part)
        if not isinstance(entry, dict):
            return None
        files = entry.get("files") or {}
        if not all(_fetched(self.artifacts, name, digest) for name, digest in files.items()):
            return None
        return dict(entry.get("result") or {})

    def record(self, part: str, files: Sequence[str], result: Mapping[str, Any],
               run_id: str) -> None:
        """The part done: its files (already published) with their sha256, then the record."""
        digests = {name: sha256_of(self.artifacts.path(name)) for name in files}
        self.content.setdefault("parts", {})[part] = {"files": digests, "result": dict(result)}
        self._save()
        get_logger().info(f"finish part {part} done", extra={"run_id": run_id, "part": part})

    def _save(self) -> None:
        write_atomic(self.state_files.path(RECORD),
                     json.dumps(self.content, indent=2, sort_keys=True).encode())
        self.state_files.publish(RECORD)


def make_parts(record: FinishRecord, settings: Settings, summary: dict[str, Any],
               evaluate: Evaluate, export: Export) -> dict[str, dict[str, Any]]:
    """The evaluation, the report and the exports that the record does not have from this
    best.h5, each recorded once done; per export format, what the manifest says of it."""
    artifacts, run_id = record.artifacts, settings.run_id
    if record.done(EVALUATION) is None:
        metrics = evaluate(artifacts.path("best.h5"), artifacts.local_dir)
        for name in EVALUATION_FILES:
            artifacts.publish(name)
        get_logger().info("evaluated the best model", extra={
            "run_id": run_id, **{key: metrics[key] for key in
                                 ("accuracy", "macro_f1", "top5_accuracy") if key in metrics}})
        record.record(EVALUATION, EVALUATION_FILES, {}, run_id)
    if record.done(REPORT) is None:
        page = build_report(artifacts.local_dir, run_id, {"status": "finished", **summary})
        write_atomic(artifacts.path("report.html"), page.encode())
        artifacts.publish("report.html")
        record.record(REPORT, ["report.html"], {}, run_id)
    formats = settings.export_formats
    done = exports_of(record, formats)
    missing = [kind for kind in formats if kind not in done]
    if not missing:
        return done

    def publish(kind: str, result: dict[str, Any]) -> None:
        files = [f"export/{name}" for name in result["files"]]
        for name in files:
            artifacts.publish(name)
        done[kind] = {key: result[key] for key in MANIFEST_EXPORT_FIELDS if key in result}
        if result["status"] == "ok":  # a failed one is retried by a re-run
            record.record(export_part(kind), files, done[kind], run_id)

    results = export(artifacts.path("best.h5"), artifacts.path("export"), missing, publish)
    get_logger().info("exported the best model", extra={
        "run_id": run_id, "exports": {kind: result["status"] for kind, result in results.items()}})
    return {kind: done[kind] for kind in formats}


def exports_of(record: FinishRecord, formats: Sequence[str]) -> dict[str, dict[str, Any]]:
    return {kind: result for kind in formats
            if (result := record.done(export_part(kind))) is not None}


def write_manifest(artifacts: RunArtifacts, settings: Settings, summary: dict[str, Any],
                   exports: dict[str, dict[str, Any]], timeout: float,
                   stop: Any = None, stop_grace: float = 0.0) -> str:
    """Every upload finished, then manifest.json (status failed where an export failed: a
    re-run retries it); returns where best.h5 is. ExportFailed once all is stored."""
    artifacts.finish_uploads(timeout, stop, stop_grace)
    failed = {kind: result for kind, result in exports.items() if result["status"] == "failed"}
    manifest = artifacts.manifest(status="failed" if failed else "finished", **summary,
                                  exports=exports)
    artifacts.write_json("manifest.json", manifest)
    artifacts.finish_uploads(timeout, stop, stop_grace)
    if failed:
        raise export_failure(failed, settings.run_id, artifacts.store.uri.rstrip("/") + "/"
                             + artifacts.key(""))
    return artifacts.key("best.h5")


def finish_from_record(settings: Settings, store: Store, environ: Mapping[str, str]
                       ) -> dict[str, Any] | None:
    """A run whose training and every part of whose finish are recorded (only the manifest,
    or an upload, was missing when it stopped): its files adopted as recorded, the manifest
    written; returns the training's summary. None, with nothing done, where anything is
    missing: the run goes the whole way (and redoes only what is missing)."""
    state_store, state_key, _ = state_place(settings, store)
    raw = state_store.read_bytes(key_in(state_key, RECORD))
    if raw is None:  # every new run starts here: no more reads for it
        return None
    pointer = state_store.read_bytes(key_in(state_key, POINTER))
    try:
        content = json.loads(raw)
        newest = json.loads(pointer)["states"][0] if pointer else {}
        summary = content["summary"]
    except (ValueError, KeyError, TypeError, IndexError):
        return None
    fingerprint = newest.get("fingerprint", {})
    if (newest.get("epoch") != summary.get("epochs_done") or newest.get("step")
            or fingerprint.get("epochs") != settings.epochs
            or fingerprint.get("fine_tune_epochs") != settings.fine_tune_epochs
            or summary.get("monitor") != settings.monitor):
        return None
    if not _same_settings(store, settings):  # the whole way: it names what changed, or resumes
        return None
    required = required_parts(settings.export_formats,
                              bool(environ.get("MLFLOW_TRACKING_URI", "").strip()))
    if not (content.get("best_sha256") and all(part in content.get("parts", {})
                                               for part in required)):
        return None
    artifacts, state_files = run_files(settings, store)
    record = FinishRecord(state_files, artifacts, content)
    if any(record.done(part) is None for part in required) or not artifacts.adopt(
            "best.h5", record.best_sha256):
        return None
    state_files.adopt(RECORD, None)
    artifacts.adopt_stored()
    log = get_logger()
    log.info("training and every part of the finish are recorded; writing the manifest",
             extra={"run_id": settings.run_id, "epochs_done": summary["epochs_done"]})
    where = write_manifest(artifacts, settings, summary,
                           exports_of(record, settings.export_formats), settings.upload_timeout)
    log.info(f"run finished: best {settings.monitor}={summary['best_value']:.4f} at epoch "
             f"{summary['best_epoch']}; model at {where} in {store.uri}",
             extra={"run_id": settings.run_id, "best_epoch": summary["best_epoch"]})
    return summary


def _same_settings(store: Store, settings: Settings) -> bool:
    """Whether the run's config.json holds its settings and every one that changes the result
    is the same now (a changed image size or backbone must meet the resume state's check)."""
    raw = store.read_bytes(key_in(settings.run_key, "config.json"))
    try:
        saved = json.loads(raw)["settings"] if raw else None
    except (ValueError, KeyError, TypeError):
        return False
    return isinstance(saved, dict) and not changed_settings(saved, settings)

"""The finish phase by parts (trainer/parts.py): a restart after the last epoch does only the
parts of the finish that are not recorded, and none at all, with no model or dataset, when only
the manifest is missing."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
from conftest import TINY_JOB, Job, clean_environ, json_lines, run_entrypoint

# The first test reads the shared finished run (trained once per worker, with every export).
pytestmark = pytest.mark.xdist_group("finished_run")

PART_EVENTS = ("finish part ", "evaluated the best model", "exported the best model",
               "finish: ", "training setup", "saved best.h5")


def _digests(run: Path) -> dict[str, str]:
    return {path.relative_to(run).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(run.rglob("*")) if path.is_file()}


def _manifest_is_true(run: Path) -> dict:
    manifest = json.loads((run / "manifest.json").read_text())
    for name, entry in manifest["artifacts"].items():
        data = (run / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
    return manifest


def test_a_restart_with_every_part_recorded_only_writes_the_manifest(
        finished_run: dict, tmp_path: Path) -> None:
    # The finished run as it was before its manifest was written (the pod killed then).
    root = tmp_path / "runs"
    shutil.copytree(finished_run["run"], root / "tiny", symlinks=True)
    original = json.loads((root / "tiny" / "manifest.json").read_text())
    (root / "tiny" / "manifest.json").unlink()
    before = _digests(root / "tiny")
    record = json.loads((root / "tiny" / "state" / "finish.json").read_text())
    assert set(record["parts"]) == {"evaluation", "report", "export savedmodel", "export onnx",
                                    "export litert"}

    started = time.monotonic()
    result = run_entrypoint({**finished_run["env"], "ARTIFACT_URI": str(root)}, timeout=120)
    seconds = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    messages = [line["message"] for line in json_lines(result.stdout)]
    assert "training and every part of the finish are recorded; writing the manifest" in messages
    # No model built (its setup line), no dataset pass, no part made again.
    assert not [m for m in messages if m.startswith(PART_EVENTS)], messages
    assert seconds < 20, seconds
    after = _digests(root / "tiny")
    assert {name: after[name] for name in before} == before
    manifest = _manifest_is_true(root / "tiny")
    assert manifest == {**original, "artifacts": manifest["artifacts"]}
    assert set(manifest["artifacts"]) == set(original["artifacts"])


def test_a_run_killed_inside_the_finish_resumes_it_by_parts(tiny_npz: Path,
                                                            tmp_path: Path) -> None:
    env = clean_environ(TINY_JOB, DATASET=str(tiny_npz), ARTIFACT_URI=str(tmp_path / "runs"),
                        RUN_ID="parts", EPOCHS="1", VALIDATION_SPLIT="0.25",
                        EXPORT="savedmodel,onnx")
    run = tmp_path / "runs" / "parts"
    # 1. SIGKILL as soon as the SavedModel export is recorded: the ONNX one is under way.
    job = Job(env)
    job.wait_for("finish part export savedmodel done")
    job.process.kill()
    job.finish(timeout=60)
    assert not (run / "manifest.json").exists()
    kept = {name: digest for name, digest in _digests(run).items()
            if name.startswith(("export/savedmodel/", "metrics.json", "report.html",
                                "confusion.png", "best.h5"))}

    # 2. The restart makes only what is missing: the ONNX export, then the manifest.
    result = run_entrypoint(env, timeout=300)
    assert result.returncode == 0, result.stderr
    messages = [line["message"] for line in json_lines(result.stdout)]
    assert "resuming after epoch 1" in messages
    done = [m for m in messages if m.startswith("finish part ")]
    assert done == ["finish part export onnx done"], messages
    assert "evaluated the best model" not in messages
    after = _digests(run)
    assert {name: after[name] for name in kept} == kept  # nothing redone, nothing touched
    manifest = _manifest_is_true(run)
    assert manifest["status"] == "finished" and manifest["epochs_done"] == 1
    assert {kind: r["status"] for kind, r in manifest["exports"].items()} == {
        "savedmodel": "ok", "onnx": "ok"}
    assert {"best.h5", "metrics.json", "report.html", "export/onnx/model.onnx",
            "export/savedmodel/1/saved_model.pb", "export/labels.txt"} <= set(
        manifest["artifacts"])

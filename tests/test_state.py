"""Never lose work: SIGKILL, SIGTERM and damaged state, against a local folder and S3."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    REPO,
    TINY_JOB,
    RunStore,
    check_finished_run,
    clean_environ,
    history_epochs,
    json_lines,
    run_entrypoint,
)

from trainer.artifacts import RunArtifacts
from trainer.errors import ConfigError
from trainer.state import LoopState, check_fingerprint
from trainer.storage import LocalStore


def _row(epoch: int, value: float) -> dict:
    return {"epoch": epoch, "loss": 1.0, "accuracy": 0.5, "val_loss": value,
            "val_accuracy": value, "learning_rate": 1e-3, "seconds": 1.0,
            "images_per_second": 10.0}


def test_a_value_that_is_not_finite_is_never_the_best() -> None:
    state, improved = LoopState().after_epoch(_row(1, math.nan), "val_accuracy", "max")
    assert (improved, state.best_value, state.best_epoch) == (False, None, 0)
    state, improved = state.after_epoch(_row(2, 0.5), "val_accuracy", "max")
    assert (improved, state.best_value, state.best_epoch) == (True, 0.5, 2)
    state, improved = state.after_epoch(_row(3, math.inf), "val_loss", "min")
    assert (improved, state.best_epoch, len(state.history)) == (False, 2, 3)


def test_history_with_a_nan_is_still_valid_json(tmp_path: Path) -> None:
    artifacts = RunArtifacts(LocalStore(str(tmp_path)), "run", tmp_path / "run")
    artifacts.write_history([_row(1, math.nan)])
    assert json.loads((tmp_path / "run" / "history.json").read_text())[0]["val_loss"] is None


def test_saved_state_with_other_settings_names_them() -> None:
    saved = {"backbone": "ResNet50", "image_size": 224, "global_batch": 64}
    check_fingerprint("run-1", saved, dict(saved))
    with pytest.raises(ConfigError, match=r"RUN_ID=run-1 .*image_size 224 -> 160.*new RUN_ID"):
        check_fingerprint("run-1", saved, {**saved, "image_size": 160})


RESUMABLE = {**TINY_JOB, "EPOCHS": "4", "BATCH_SIZE": "4", "VALIDATION_SPLIT": "0.25",
             "LEARNING_RATE": "1e-4", "RUN_ID": "resumable"}


def _start(env: dict[str, str]) -> tuple[subprocess.Popen, list[str]]:
    process = subprocess.Popen([sys.executable, "entrypoint.py"], env=env, cwd=REPO, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True).start()
    return process, lines


def _completed_epochs(store: RunStore) -> int:
    try:
        pointer = json.loads(store.read("resumable/state/LATEST.json"))
    except (KeyError, ValueError):  # no state yet, or read while being replaced
        return 0
    return pointer["states"][0]["epoch"]


def test_sigkill_at_random_points_then_restart(run_store: RunStore, tiny_npz: Path,
                                               tmp_path: Path) -> None:
    env = clean_environ(RESUMABLE, run_store.env, DATASET=str(tiny_npz),
                        WORK_DIR=str(tmp_path / "work"))
    chance = random.Random()
    for trial in range(2):
        process, lines = _start(env)
        time.sleep(chance.uniform(8, 22))
        process.kill()
        process.wait(timeout=30)
        done = _completed_epochs(run_store)
        if done == 4:
            break
        result = run_entrypoint(env) if trial == 1 else None
        if result is None:
            continue  # a second kill, on the restarted run, before the final restart
        assert result.returncode == 0, result.stderr
        logged = json_lines(result.stdout)
        resumed = [r for r in logged if r["message"].startswith("resuming after")]
        assert (resumed[0]["resume_epoch"] if resumed else 1) == done + 1
        trained = [r["epoch"] for r in logged if r["message"].startswith("epoch ") and "loss" in r]
        assert trained == list(range(done + 1, 5))
    check_finished_run(run_store, "resumable", env, tiny_npz, epochs=4)


def test_sigterm_mid_epoch_saves_and_exits_143(run_store: RunStore, tiny_npz: Path,
                                               tmp_path: Path) -> None:
    env = clean_environ(RESUMABLE, run_store.env, DATASET=str(tiny_npz), BATCH_SIZE="2",
                        STEPS_PER_CALL="1", WORK_DIR=str(tmp_path / "work"))
    process, lines = _start(env)
    deadline = time.monotonic() + 300
    # history.json is written once epoch 1 is saved: epoch 2 has begun
    while not history_epochs(run_store, "resumable"):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code = process.wait(timeout=60)
    assert code == 143 and time.monotonic() - sent < 30
    assert "stopped by SIGTERM at epoch 2, step" in process.stderr.read()
    pointer = json.loads(run_store.read("resumable/state/LATEST.json"))["states"][0]
    assert (pointer["epoch"], pointer["step"] > 0) == (1, True)

    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    resumed = next(r for r in json_lines(result.stdout) if r["message"].startswith("resuming"))
    assert (resumed["resume_epoch"], resumed["resume_step"]) == (2, pointer["step"])
    check_finished_run(run_store, "resumable", env, tiny_npz, epochs=4)


def test_a_damaged_newest_state_falls_back_to_the_one_before(run_store: RunStore,
                                                             tiny_npz: Path,
                                                             tmp_path: Path) -> None:
    env = clean_environ(RESUMABLE, run_store.env, DATASET=str(tiny_npz), EPOCHS="3",
                        WORK_DIR=str(tmp_path / "work"))
    assert run_entrypoint(env).returncode == 0
    run_store.delete("resumable/manifest.json")  # as if killed before the end
    newest = json.loads(run_store.read("resumable/state/LATEST.json"))["states"][0]
    assert newest["epoch"] == 3
    data = next(f"resumable/{f}" for f in newest["files"] if ".data-" in f)
    content = run_store.read(data)
    run_store.write(data, content[: len(content) // 2])
    # A new pod: nothing local but what the store holds.
    restarted = {**env, "WORK_DIR": str(tmp_path / "work-after")}
    result = run_entrypoint(restarted)
    assert result.returncode == 0, result.stderr
    logged = json_lines(result.stdout)
    assert any("resume state 00003-0000000 is unusable" in r["message"] for r in logged)
    resumed = next(r for r in logged if r["message"].startswith("resuming after"))
    assert resumed["resume_epoch"] == 3
    trained = [r["epoch"] for r in logged if r["message"].startswith("epoch ") and "loss" in r]
    assert trained == [3]
    check_finished_run(run_store, "resumable", restarted, tiny_npz, epochs=3)

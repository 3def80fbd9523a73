"""Never lose work: SIGTERM, SIGKILL and damaged state, with the run in S3 and every restart on
a fresh WORK_DIR (a new pod: nothing local but what the store holds)."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import (
    TINY_JOB,
    Job,
    MlflowServer,
    RunStore,
    check_finished_run,
    clean_environ,
    free_ports,
    run_entrypoint,
)

from trainer.errors import ConfigError
from trainer.state import LoopState, check_fingerprint
from trainer.store.artifacts import RunArtifacts
from trainer.store.stores import LocalStore

# One worker runs the tests of the MLflow server (one server per worker).
pytestmark = pytest.mark.xdist_group("mlflow")


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


RESUMABLE = {**TINY_JOB, "EPOCHS": "3", "BATCH_SIZE": "2", "STEPS_PER_CALL": "1",
             "VALIDATION_SPLIT": "0.25", "LEARNING_RATE": "1e-4", "RUN_ID": "resumable"}


def _pointer(store: RunStore) -> dict:
    return json.loads(store.read("resumable/state/LATEST.json"))["states"][0]


def _newest_state_epoch(store: RunStore) -> int:
    try:
        return _pointer(store)["epoch"]
    except (KeyError, ValueError):  # no state yet
        return 0


def _listed(env: dict[str, str]) -> str:
    """The run's line in `trainer runs`, as a user gets it."""
    result = subprocess.run([sys.executable, "-m", "trainer", "runs"], env=env, text=True,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return next(line for line in result.stdout.splitlines() if line.startswith("resumable "))


def test_sigterm_sigkill_and_damage_lose_nothing(run_store: RunStore, tiny_npz: Path,
                                                 mlflow_server: MlflowServer,
                                                 tmp_path: Path) -> None:
    """Also tracked in MLflow throughout: one MLflow run across every restart."""
    env = clean_environ(RESUMABLE, run_store.env, DATASET=str(tiny_npz),
                        MLFLOW_TRACKING_URI=mlflow_server.uri,
                        MLFLOW_EXPERIMENT_NAME=f"resumable-{tmp_path.name}")
    work = iter(tmp_path / f"work-{i}" for i in range(10))

    # 1. SIGTERM (preemption) in the middle of epoch 1: the state is saved, exit 143.
    job = Job({**env, "WORK_DIR": str(next(work))})
    job.wait_for("first training steps done")
    job.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code, stderr = job.finish(timeout=60)
    assert code == 143 and time.monotonic() - sent < 30, stderr
    assert "stopped by SIGTERM at epoch 1, step" in stderr
    stopped = _pointer(run_store)
    assert (stopped["epoch"], stopped["step"] > 0) == (0, True)
    # `trainer runs` says so: stopped (for a restart), not running and not failed.
    listed = _listed(env)
    assert listed.split()[:3] == ["resumable", "stopped", "0"], listed
    assert "exit 143: stopped by SIGTERM at epoch 1, step" in listed and "to resume" in listed
    client = mlflow_server.client()  # MLflow shows the stopped run as KILLED, not FINISHED
    experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
    assert [r.info.status for r in client.search_runs([experiment.experiment_id])] == ["KILLED"]

    # 2. A new pod resumes mid-epoch; SIGKILL (OOM, node lost) once a later state is stored.
    job = Job({**env, "WORK_DIR": str(next(work))})
    job.wait_for("resuming after epoch 0")
    assert job.resumed() == (1, stopped["step"])
    deadline = time.monotonic() + 300
    while _newest_state_epoch(run_store) < 1:
        assert job.process.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    job.process.kill()
    job.finish(timeout=60)
    killed_at = _newest_state_epoch(run_store)

    # 3. The next pod resumes from what the store had when the last one died, and finishes,
    # with the tracking server down: it says what it could not log, and finishes all the same.
    # (the server is where nothing answers: the same to the job as a server that went down)
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    job = Job({**env, "WORK_DIR": str(next(work)), "MLFLOW_TRACKING_URI": dead})
    code, stderr = job.finish()
    assert code == 0, stderr
    assert any("not logged to MLflow run" in r["message"] for r in job.lines), job.lines[-5:]
    assert job.resumed() == (killed_at + 1, 0)
    assert job.trained_epochs() == list(range(killed_at + 1, 4))
    check_finished_run(run_store, "resumable", tmp_path, tiny_npz, epochs=3)
    assert _listed(env).split()[:3] == ["resumable", "finished", "3"]

    # 4. Damage, as a crash mid-write on a store without atomic writes would leave it: no
    # manifest, the newest state's data cut in half and the pointer half-written. The run
    # falls back to the state before and trains only the last epoch again.
    run_store.delete("resumable/manifest.json")
    newest = _pointer(run_store)
    assert newest["epoch"] == 3
    data = next(f"resumable/{f}" for f in newest["files"] if ".data-" in f)
    content = run_store.read(data)
    run_store.write(data, content[: len(content) // 2])
    pointer = run_store.read("resumable/state/LATEST.json")
    run_store.write("resumable/state/LATEST.json", pointer[: len(pointer) // 2])
    job = Job({**env, "WORK_DIR": str(next(work))})
    code, stderr = job.finish()
    assert code == 0, stderr
    messages = [r["message"] for r in job.lines]
    assert any("LATEST.json is unreadable" in m for m in messages)
    assert any("resume state 00003-0000000 is unusable" in m for m in messages)
    assert job.resumed() == (3, 0) and job.trained_epochs() == [3]
    check_finished_run(run_store, "resumable", tmp_path, tiny_npz, epochs=3)
    assert _listed(env).split()[:3] == ["resumable", "finished", "3"]

    # One MLflow run for the whole story, finished, each epoch's metrics once, and its files.
    (tracked,) = client.search_runs([experiment.experiment_id])
    assert tracked.info.status == "FINISHED" and tracked.data.params["backbone"] == "VGG16"
    steps = [m.step for m in client.get_metric_history(tracked.info.run_id, "val_accuracy")]
    assert sorted(steps) == [1, 2, 3]
    assert "best.h5" in {f.path for f in client.list_artifacts(tracked.info.run_id)}

    # 5. The same RUN_ID with settings that change the model: refused, naming them.
    run_store.delete("resumable/manifest.json")
    other = run_entrypoint({**env, "IMAGE_SIZE": "40", "WORK_DIR": str(next(work))})
    assert other.returncode == 2, other.stderr
    assert "RUN_ID=resumable has saved state made with other settings (image_size 32 -> 40)" in (
        other.stderr)


def test_the_states_copy_of_best_h5_comes_back_only_if_it_is_the_recorded_one(
        tmp_path: Path) -> None:
    """Where the state lives apart from the run (SageMaker's checkpoints/): the copy that
    keep_best leaves there is what restore_best brings back, checked by its sha256."""
    from trainer.state import BEST_IN_STATE, keep_best, restore_best
    from trainer.store.files import sha256_of

    state_store, run_store = LocalStore(str(tmp_path / "ckpt")), LocalStore(str(tmp_path / "m"))
    state_files = RunArtifacts(state_store, "", state_store.root)
    artifacts = RunArtifacts(run_store, "run", run_store.local_run_dir("run"))
    best = artifacts.path("best.h5")
    best.write_bytes(b"epoch 1")
    digest = sha256_of(best)
    keep_best(state_files, best)
    assert (tmp_path / "ckpt" / BEST_IN_STATE).read_bytes() == b"epoch 1"
    best.unlink()  # the restart's empty /opt/ml/model
    assert restore_best(state_files, artifacts, digest)
    assert best.read_bytes() == b"epoch 1" and "best.h5" in artifacts.published
    best.unlink()
    assert not restore_best(state_files, artifacts, "0" * 64)  # another epoch's model
    assert not best.exists()

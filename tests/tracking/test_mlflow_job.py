"""The job tracked in MLflow, end to end with real (tiny) training: the registered model loads
with `mlflow.pyfunc.load_model` and gives best.h5's probabilities, and a tracking server that
accepts and never answers neither holds up training nor the exit after SIGTERM.

The MLflow run's status per outcome: FINISHED here, KILLED in tests/test_state.py (SIGTERM),
FAILED in tests/test_train.py (a loss that diverges, exit 2)."""

from __future__ import annotations

import importlib
import json
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import (
    TINY_JOB,
    HangingServer,
    Job,
    MlflowServer,
    check_finished_run,
    clean_environ,
    run_entrypoint,
)

# One worker runs the tests of the MLflow server (one server per worker).
pytestmark = pytest.mark.xdist_group("mlflow")


def test_the_registered_model_loads_with_mlflow_pyfunc_and_predicts_as_best_h5(
        mlflow_server: MlflowServer, tiny_npz: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import keras
    import mlflow.pyfunc

    from trainer.data.pipeline import batch_preprocessor
    from trainer.store.artifacts import read_model_metadata

    name = f"digits-{tmp_path.name}"
    env = clean_environ(TINY_JOB, DATASET=str(tiny_npz), ARTIFACT_URI=str(tmp_path / "runs"),
                        RUN_ID="pyfunc", EPOCHS="1", VALIDATION_SPLIT="0.25",
                        MLFLOW_TRACKING_URI=mlflow_server.uri,
                        MLFLOW_EXPERIMENT_NAME=f"pyfunc-{tmp_path.name}",
                        MLFLOW_REGISTERED_MODEL_NAME=name)
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    client = mlflow_server.client()
    (run,) = client.search_runs([client.get_experiment_by_name(
        env["MLFLOW_EXPERIMENT_NAME"]).experiment_id])
    assert run.info.status == "FINISHED"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)  # where models:/ is looked up
    model = mlflow.pyfunc.load_model(f"models:/{name}/1")
    images = np.load(tiny_npz)["x_train"][::7]  # raw uint8 8x8 digits, as an image file gives
    best = tmp_path / "runs" / "pyfunc" / "best.h5"
    metadata = read_model_metadata(best)
    preprocess = importlib.import_module(metadata["preprocessing"]).preprocess_input
    expected = keras.models.load_model(best, compile=False).predict(
        batch_preprocessor(32, preprocess)(images), verbose=0)
    got = np.asarray(model.predict(images))
    assert got.shape == (len(images), 4)
    np.testing.assert_allclose(got, expected, atol=1e-4)


GRACE_SECONDS = 15


def test_a_tracking_server_that_hangs_holds_up_neither_the_sigterm_exit_nor_the_run(
        hanging_server: HangingServer, tiny_npz: Path, tmp_path: Path) -> None:
    """Before: 21 s per MLflow call on the training thread, and 47 s from SIGTERM to exit."""
    runs = tmp_path / "runs"
    env = clean_environ(TINY_JOB, DATASET=str(tiny_npz), ARTIFACT_URI=str(runs),
                        RUN_ID="hung", EPOCHS="1", BATCH_SIZE="2", STEPS_PER_CALL="1",
                        VALIDATION_SPLIT="0.25", TERMINATION_GRACE_SECONDS=str(GRACE_SECONDS),
                        MLFLOW_TRACKING_URI=hanging_server.uri)
    job = Job(env)
    job.wait_for("first training steps done")
    job.process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code, stderr = job.finish(timeout=120)
    took = time.monotonic() - sent
    assert code == 143 and took < GRACE_SECONDS, (took, stderr[-2000:])
    (dropped,) = [r for r in job.lines if "not logged to MLflow run" in r["message"]]
    assert dropped["not_logged"][-1] == "status KILLED", dropped

    # The next pod resumes and finishes, the server hanging still: every artifact of the run,
    # and one line says what MLflow did not get.
    job = Job(env)
    code, stderr = job.finish()
    assert code == 0, stderr[-2000:]
    assert json.loads((runs / "hung" / "manifest.json").read_text())["status"] == "finished"
    check_finished_run(SimpleNamespace(read=lambda key: (runs / key).read_bytes()), "hung",
                       tmp_path, tiny_npz, epochs=1)
    (dropped,) = [r for r in job.lines if "not logged to MLflow run" in r["message"]]
    assert dropped["not_logged"][-1] == "status FINISHED", dropped
    assert "artifact best.h5" in dropped["not_logged"]

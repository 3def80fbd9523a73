"""MLflow tracking against a real `mlflow server` on loopback (SQLite store, artifacts in a
temporary folder), with the Tracker called as the job calls it, without TensorFlow: a run
SIGTERMed after epoch 2 and restarted, a tracking server stopped in the middle of a run, and one
that accepts and never answers. The Tracker's calls return at once (its own thread sends them):
`tracker.wait` is where a test waits for them.

    .venv/bin/python -m pytest tests/tracking/test_mlflow_run.py     (the dev extra has `mlflow`)
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from conftest import HangingServer, MlflowServer, free_ports

from trainer.tracking.mlflow_run import RUN_ID_TAG, Tracker

# One worker runs the tests of the MLflow server (one server per worker).
pytestmark = pytest.mark.xdist_group("mlflow")

METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate", "seconds",
           "images_per_second")
PARAMS = {"dataset": "digits", "backbone": "VGG16", "learning_rate": 1e-4, "epochs": 4,
          "image_size": None, "augment": "none"}
TAGS = {"image": "registry.example.com/trainer:test"}
DOWN_SECONDS = 5.0  # a call while the server is down returns within this
SENT_SECONDS = 60.0  # what a test waits at most for the tracker's thread


def _environ(server: MlflowServer, experiment: str, **extra: str) -> dict[str, str]:
    return {"MLFLOW_TRACKING_URI": server.uri, "MLFLOW_EXPERIMENT_NAME": experiment, **extra}


def _row(epoch: int) -> dict:
    return {"epoch": epoch, "loss": 2.0 / epoch, "accuracy": 0.4 + epoch / 10,
            "val_loss": 1.8 / epoch, "val_accuracy": 0.5 + epoch / 10,
            "learning_rate": 1e-4, "seconds": 20.0 + epoch, "images_per_second": 80.0 + epoch}


def _run_files(folder: Path) -> list[Path]:
    (folder / "best.h5").write_bytes(b"\x89HDF\r\n" + b"0" * 1000)
    (folder / "report.html").write_text("<!DOCTYPE html><title>report</title>")
    (folder / "curves.png").write_bytes(b"\x89PNG\r\n" + b"1" * 100)
    savedmodel = folder / "export" / "savedmodel" / "1"
    (savedmodel / "variables").mkdir(parents=True)
    (savedmodel / "saved_model.pb").write_bytes(b"pb")
    (savedmodel / "variables" / "variables.index").write_bytes(b"index")
    (folder / "export" / "labels.txt").write_text("0\n1\n")
    return [folder / "best.h5", folder / "export", folder / "report.html", folder / "curves.png"]


def _epochs_logged(client, run_id: str) -> dict[str, list[int]]:
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key))
            for key in METRICS}


def _all_artifacts(client, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for info in client.list_artifacts(run_id, path):
        found |= _all_artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return found


def test_no_tracker_without_a_tracking_uri() -> None:
    assert Tracker.open({}, "run", None, PARAMS, TAGS) is None


def test_a_run_stopped_after_epoch_2_and_restarted_is_one_finished_mlflow_run(
        mlflow_server: MlflowServer, tmp_path: Path, warnings_logged: list) -> None:
    server = mlflow_server
    environ = _environ(server, "lifecycle", MLFLOW_REGISTERED_MODEL_NAME="digits-classifier")
    first = Tracker.open(environ, "digits-vgg16", None, PARAMS, TAGS)
    assert first is not None and first.wait(SENT_SECONDS) and first.mlflow_run_id
    for epoch in (1, 2):
        first.log_epoch(_row(epoch))
    saved = first.mlflow_run_id  # what the job keeps in its resume state
    assert first.end("KILLED") == []  # SIGTERM: the job ends the run as KILLED and exits 143
    client = server.client()
    assert client.get_run(saved).info.status == "KILLED"

    # The restarted pod: the same MLflow run, the restored history sent again (and skipped).
    second = Tracker.open(environ, "digits-vgg16", saved, PARAMS, TAGS)
    assert second.wait(SENT_SECONDS) and second.mlflow_run_id == saved
    assert client.get_run(saved).info.status == "RUNNING"
    second.log_history([_row(1), _row(2)])
    for epoch in (3, 4):
        second.log_epoch(_row(epoch))
    metrics = {"accuracy": 0.9, "macro_f1": 0.88, "top5_accuracy": 1.0, "examples": 180,
               "evaluated_on": "the validation split", "per_class": {"0": {"f1": 0.9}}}
    second.log_final(metrics, _run_files(tmp_path))
    second.log_model(tmp_path / "best.h5")  # loaded for real in tests/tracking/test_mlflow_job.py
    second.register_model()
    assert second.end("FINISHED") == []
    assert warnings_logged == []

    experiment = client.get_experiment_by_name("lifecycle")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [saved]
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "digits-vgg16"
    assert _epochs_logged(client, saved) == {key: [1, 2, 3, 4] for key in METRICS}
    assert [m.value for m in client.get_metric_history(saved, "val_accuracy")] == \
        pytest.approx([0.6, 0.7, 0.8, 0.9])
    assert run.data.params == {"dataset": "digits", "backbone": "VGG16",
                               "learning_rate": "0.0001", "epochs": "4", "augment": "none"}
    assert run.data.tags[RUN_ID_TAG] == "digits-vgg16"
    assert run.data.tags["image"] == TAGS["image"]
    assert run.data.metrics["best_model/accuracy"] == 0.9
    assert run.data.metrics["best_model/examples"] == 180
    artifacts = _all_artifacts(client, saved)
    assert {a for a in artifacts if not a.startswith("model/")} == {
        "best.h5", "report.html", "curves.png", "export/labels.txt",
        "export/savedmodel/1/saved_model.pb", "export/savedmodel/1/variables/variables.index"}
    # The MLflow model: its loader and best.h5, what mlflow.pyfunc.load_model reads.
    assert {"model/MLmodel", "model/data/best.h5", "model/code/keras_pyfunc.py"} <= artifacts
    (version,) = client.search_model_versions("name = 'digits-classifier'")
    assert version.run_id == saved and version.source.endswith("/model")
    # A restart after the end registers nothing twice.
    third = Tracker.open(environ, "digits-vgg16", saved, PARAMS, TAGS)
    third.log_final({}, [tmp_path / "export"])
    third.register_model()
    third.end("FINISHED")
    assert len(client.search_model_versions("name = 'digits-classifier'")) == 1


def test_a_pod_killed_before_saving_its_state_continues_the_run_by_its_tag(
        mlflow_server: MlflowServer) -> None:
    server = mlflow_server
    environ = _environ(server, "no-state")
    first = Tracker.open(environ, "killed-early", None, PARAMS, TAGS)
    first.log_epoch(_row(1))
    assert first.wait(SENT_SECONDS)
    del first  # killed: no end, no resume state with the MLflow run id
    second = Tracker.open(environ, "killed-early", None, {**PARAMS, "epochs": 6}, TAGS)
    second.log_history([_row(1)])
    second.log_epoch(_row(2))
    second.end("FINISHED")
    client = server.client()
    (run,) = client.search_runs([client.get_experiment_by_name("no-state").experiment_id])
    assert run.info.run_id == second.mlflow_run_id and run.info.status == "FINISHED"
    assert _epochs_logged(client, run.info.run_id)["loss"] == [1, 2]
    assert run.data.params["epochs"] == "4"  # MLflow params keep their first value


def _timed(call, *args) -> float:
    started = time.monotonic()
    call(*args)
    return time.monotonic() - started


def test_a_server_down_mid_run_costs_seconds_and_its_backlog_is_logged_after(
        mlflow_server: MlflowServer, tmp_path: Path, warnings_logged: list) -> None:
    server = mlflow_server
    environ = _environ(server, "outage")
    tracker = Tracker.open(environ, "outage-run", None, PARAMS, TAGS)
    tracker.log_epoch(_row(1))
    assert tracker.wait(SENT_SECONDS)
    server.stop()
    try:
        assert _timed(tracker.log_epoch, _row(2)) < DOWN_SECONDS
        assert _timed(tracker.log_epoch, _row(3)) < DOWN_SECONDS
        # A pod started while the server is down: its run is created once the server is back.
        late = Tracker.open(environ, "late-run", None, PARAMS, TAGS)
        assert _timed(late.log_epoch, _row(1)) < DOWN_SECONDS
        assert not late.wait(SENT_SECONDS) and late.mlflow_run_id is None
        assert not tracker.wait(SENT_SECONDS)
        assert tracker.pending == ["metrics of epoch 2", "metrics of epoch 3"]
        # One warning per tracker for the whole outage, naming the server.
        assert len(warnings_logged) == 2
        assert all(server.uri in w.getMessage() for w in warnings_logged)
    finally:
        server.start()
    tracker.log_epoch(_row(4))
    late.log_epoch(_row(2))
    assert tracker.wait(SENT_SECONDS) and late.wait(SENT_SECONDS)
    assert tracker.pending == [] and late.pending == []
    client = server.client()
    assert _epochs_logged(client, tracker.mlflow_run_id) == {k: [1, 2, 3, 4] for k in METRICS}
    assert _epochs_logged(client, late.mlflow_run_id)["val_loss"] == [1, 2]
    late.end("FINISHED")

    # Down at the end: the job still ends, and one warning says what MLflow did not get.
    # (The server stays stopped: the next test, if any, starts it again.)
    server.stop()
    warnings_logged.clear()
    started = time.monotonic()
    tracker.log_final({"accuracy": 0.9}, _run_files(tmp_path))
    missing = tracker.end("FINISHED")
    assert time.monotonic() - started < DOWN_SECONDS
    assert missing == ["final metrics", "artifact best.h5", "artifact export",
                       "artifact report.html", "artifact curves.png", "status FINISHED"]
    assert len(warnings_logged) == 2  # the outage, then the list of what was not logged
    assert "artifact best.h5" in warnings_logged[-1].getMessage()
    assert "status FINISHED" in warnings_logged[-1].getMessage()


def test_a_server_never_reached_is_named_without_credentials(warnings_logged: list) -> None:
    (port,) = free_ports(1)
    environ = {"MLFLOW_TRACKING_URI": f"http://trainer:s3cret@127.0.0.1:{port}"}
    started = time.monotonic()
    tracker = Tracker.open(environ, "never", None, PARAMS, TAGS)
    tracker.log_epoch(_row(1))
    assert tracker.mlflow_run_id is None
    assert tracker.end("FAILED") == ["the MLflow run with its params", "metrics of epoch 1",
                                     "status FAILED"]
    assert time.monotonic() - started < DOWN_SECONDS
    messages = [w.getMessage() for w in warnings_logged]
    assert len(messages) == 2 and f"127.0.0.1:{port}" in messages[0]
    assert not any("s3cret" in m for m in messages)


def test_a_call_mlflow_refuses_is_dropped_and_the_next_ones_are_logged(
        mlflow_server: MlflowServer, warnings_logged: list) -> None:
    tracker = Tracker.open(_environ(mlflow_server, "refusals"), "refused", None, PARAMS, TAGS)
    tracker.log_epoch({"epoch": 1, "no such name!": 1.0})  # not a valid MLflow metric name
    tracker.log_epoch(_row(2))
    assert tracker.wait(SENT_SECONDS) and tracker.pending == []
    (warning,) = warnings_logged  # the refusal, never an outage
    assert warning.getMessage().startswith("MLflow refused metrics of epoch 1: ")
    assert tracker.end("FINISHED") == []
    client = mlflow_server.client()
    assert _epochs_logged(client, tracker.mlflow_run_id) == {k: [2] for k in METRICS}
    assert client.get_run(tracker.mlflow_run_id).info.status == "FINISHED"


def test_a_server_that_hangs_costs_a_call_seconds_and_never_holds_up_the_caller(
        hanging_server: HangingServer, warnings_logged: list) -> None:
    """It accepts and never answers: MLflow's own timeout (5 s, no retry: CLIENT_DEFAULTS) ends
    each call, on the tracker's thread; `end` waits no longer than it is told."""
    import mlflow  # noqa: F401 - its first import (a second) is not what is timed here

    environ = {"MLFLOW_TRACKING_URI": hanging_server.uri}
    started = time.monotonic()
    tracker = Tracker.open(environ, "hanging", None, PARAMS, TAGS)
    for epoch in (1, 2, 3):
        tracker.log_epoch(_row(epoch))
    assert time.monotonic() - started < 1.0  # the caller never waits for the server
    started = time.monotonic()
    assert not tracker.wait(SENT_SECONDS)  # the thread gave up on the call in flight
    assert 4.0 < time.monotonic() - started < 8.0  # one call of 5 s: not MLflow's minutes
    assert hanging_server.accepted
    tracker.log_epoch(_row(4))  # tried again now, on the thread: the server still hangs
    started = time.monotonic()
    missing = tracker.end("KILLED", 2.0)
    assert time.monotonic() - started < 3.0
    assert missing == ["the MLflow run with its params", *(f"metrics of epoch {e}" for e in
                                                           (1, 2, 3, 4)), "status KILLED"]
    outage, dropped = (w.getMessage() for w in warnings_logged)  # one line each
    assert hanging_server.uri in outage and "timeout" in outage.lower()
    assert dropped.startswith(f"MLflow tracking server {hanging_server.uri} unreachable or too "
                              "slow: not logged to MLflow run (not created) within 2 s: ")
    assert dropped.endswith("metrics of epoch 4; status KILLED")

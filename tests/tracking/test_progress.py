"""Progress and ETA over a whole run, and the Kubeflow TrainJob status posted to a local HTTPS
server that checks the bearer token (Kubeflow Trainer v2's status server protocol).

    .venv/bin/python -m pytest tests/tracking/test_progress.py     (no TensorFlow)
"""

from __future__ import annotations

import datetime
import socket
import time
from pathlib import Path

from trainjob_status import STATUS_PATH, StatusServer

from trainer.tracking.progress import Plan, Progress, TrainerStatusReporter, trainer_status


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_plan_counts_every_epoch_with_its_evaluation() -> None:
    plan = Plan(epochs=4, steps_per_epoch=30, evaluation_steps=9)
    assert plan.total == 4 * (30 + 3) + 3  # and the best model's evaluation at the end
    assert plan.done(0) == 0 and plan.done(4) == plan.total - 3
    assert plan.done(2, 15) == 2 * 33 + 15
    assert plan.done(1, 99) == plan.done(2) - 3  # the steps, not yet the evaluation


def test_progress_and_eta_from_this_process_only() -> None:
    clock = Clock()
    plan = Plan(epochs=10, steps_per_epoch=100)
    # A resumed run: 4 epochs were done by the pod before; this one starts with tracing.
    progress = Progress(plan.total, clock)
    clock.now += 40  # building the model and tracing: not part of the rate
    assert progress.update(plan.done(4, 10)) == {"progress": 0.41, "eta_seconds": None}
    clock.now += 20  # 90 steps in 20 s
    assert progress.update(plan.done(5)) == {"progress": 0.5, "eta_seconds": 111}
    clock.now += 25  # 100 more in 25 s: 190 steps in 45 s, 500 left
    assert progress.update(plan.done(6)) == {"progress": 0.6, "eta_seconds": round(400 * 45 / 190)}
    clock.now += 1
    assert progress.update(plan.done(10)) == {"progress": 1.0, "eta_seconds": 0}


def test_progress_never_goes_back_nor_past_one() -> None:
    clock = Clock()
    progress = Progress(100, clock)
    progress.update(50)
    clock.now += 5
    assert progress.update(40)["progress"] == 0.5
    assert progress.update(130)["progress"] == 1.0


def test_status_body_follows_the_trainjob_api() -> None:
    now = datetime.datetime(2026, 11, 29, 12, 30, 5, tzinfo=datetime.UTC).timestamp()
    body = trainer_status(0.4567, 3600.4, {"loss": 0.123456789, "val_accuracy": 0.9,
                                            "note": "text", "x" * 80: 1.0}, now=now)
    assert body == {"trainerStatus": {
        "progressPercentage": 45,
        "estimatedRemainingSeconds": 3600,
        "metrics": [{"name": "loss", "value": "0.123457"}, {"name": "val_accuracy",
                                                             "value": "0.9"},
                    {"name": "x" * 64, "value": "1"}],
        "lastUpdatedTime": "2026-11-29T12:30:05Z"}}
    unknown = trainer_status(1.5, None)["trainerStatus"]
    assert unknown["progressPercentage"] == 100 and "estimatedRemainingSeconds" not in unknown


def _wait_for(server: StatusServer, count: int) -> None:
    deadline = time.monotonic() + 5
    while len(server.received) < count and time.monotonic() < deadline:
        time.sleep(0.02)


def test_no_reporter_outside_a_trainjob() -> None:
    assert TrainerStatusReporter.from_environ({}) is None


def test_reports_progress_eta_and_metrics_with_the_token(
        status_server: StatusServer, tmp_path: Path, warnings_logged: list) -> None:
    environ = status_server.environ(tmp_path)
    reporter = TrainerStatusReporter.from_environ(environ, min_interval=0.5)
    assert reporter is not None
    started = time.monotonic()
    reporter.report(0.1, None, {"loss": 2.5})
    _wait_for(status_server, 1)
    for percent in range(20, 60, 10):  # faster than the interval: only the latest is sent
        reporter.report(percent / 100, 120.0, {"loss": 1.0, "val_accuracy": percent / 100})
    assert time.monotonic() - started < 0.5  # the training thread never waits for the server
    _wait_for(status_server, 2)
    # The token rotates: the reporter reads the file again for each update.
    status_server.token = "token-2"
    (tmp_path / "token").write_text("token-2")
    reporter.report(1.0, 0, {"loss": 0.5, "val_accuracy": 0.95})
    reporter.close()
    statuses = [body["trainerStatus"] for body in status_server.received]
    assert [s["progressPercentage"] for s in statuses] == [10, 50, 100]
    assert "estimatedRemainingSeconds" not in statuses[0]
    assert statuses[1]["estimatedRemainingSeconds"] == 120
    assert statuses[2]["metrics"] == [{"name": "loss", "value": "0.5"},
                                      {"name": "val_accuracy", "value": "0.95"}]
    assert all(s["lastUpdatedTime"].endswith("Z") for s in statuses)
    assert status_server.refused == 0 and reporter.posted == 3 and warnings_logged == []


def test_a_wrong_token_is_one_warning(status_server: StatusServer, tmp_path: Path,
                                      warnings_logged: list) -> None:
    environ = status_server.environ(tmp_path)
    (tmp_path / "token").write_text("stale")
    reporter = TrainerStatusReporter.from_environ(environ, min_interval=0.0)
    for i in range(3):
        reporter.report(i / 10, None)
        time.sleep(0.2)
    reporter.close()
    assert status_server.refused >= 2 and status_server.received == []
    assert len(warnings_logged) == 1
    message = warnings_logged[0].getMessage()
    assert "HTTP 403" in message and "stale" not in message


def test_an_unreachable_or_silent_server_is_one_warning_and_never_waited_for(
        status_server: StatusServer, tmp_path: Path, warnings_logged: list) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    refused = TrainerStatusReporter.from_environ(
        status_server.environ(tmp_path, f"https://127.0.0.1:{port}{STATUS_PATH}"),
        min_interval=0.0)
    refused.report(0.5, 10.0)
    time.sleep(0.3)
    refused.report(0.6, 9.0)
    refused.close()
    assert len(warnings_logged) == 1 and refused.posted == 0
    # A server that accepts the connection and never answers: close() gives up on time.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"https://127.0.0.1:{silent.getsockname()[1]}{STATUS_PATH}"
        reporter = TrainerStatusReporter.from_environ(status_server.environ(tmp_path, url),
                                                      timeout=10.0)
        started = time.monotonic()
        reporter.report(0.7, 8.0)
        reporter.close(timeout=2.0)
        assert time.monotonic() - started < 3.0
    assert reporter.posted == 0

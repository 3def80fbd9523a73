"""How a run stopped unfinished, kept in the store (trainer.store.failures), as the job records
it (trainer.job.run_job) and `trainer runs` reads it. No TensorFlow: these runs fail before
training. A run that fails while training: tests/test_train.py (the diverging loss); one stopped
by SIGTERM, then finished: tests/test_state.py."""

from __future__ import annotations

import html
import json
from pathlib import Path

import pytest
from conftest import TINY_JOB, S3Server, clean_environ, free_ports

from trainer import job
from trainer.errors import DataError, TrainerError, TransientError
from trainer.job import run_job
from trainer.reports.sweep_page import build_sweep_page, collect_runs, sweep_lines
from trainer.runs import list_runs
from trainer.settings import load_settings
from trainer.store.failures import FAILURE_FILE, clear_failure, read_failure, record_failure
from trainer.store.s3 import S3Store
from trainer.store.stores import LocalStore


def test_a_run_that_fails_records_its_exit_code_and_line(tmp_path: Path) -> None:
    settings = load_settings(clean_environ(TINY_JOB, DATASET=str(tmp_path / "nowhere"),
                                           ARTIFACT_URI=str(tmp_path / "runs"), RUN_ID="lr-3"))
    with pytest.raises(DataError) as caught:
        run_job(settings, clean_environ())
    store = LocalStore(str(tmp_path / "runs"))
    assert read_failure(store, "lr-3") == {"status": "failed", "exit_code": 3,
                                           "error": str(caught.value)}
    header, line = list_runs(store)
    assert header.endswith("BEST (or why it stopped)")  # the reason is not a best value
    assert line.split()[:2] == ["lr-3", "failed"] and line.endswith(f"exit 3: {caught.value}")
    # Combination 3 of the sweep `lr`, failed before its first epoch, is listed with it.
    header, row = sweep_lines(collect_runs(store, "lr"))
    assert header.split()[-1] == "WHY" and row.split()[:3] == ["lr-3", "failed", "0"]
    assert row.endswith(f"exit 3: {caught.value}")
    page = build_sweep_page("lr", collect_runs(store, "lr"))
    assert "<th>why</th>" in page and html.escape(f"exit 3: {caught.value}") in page


def test_a_failure_that_a_retry_may_mend_lists_as_interrupted_not_failed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (port,) = free_ports(1)  # nothing listens: storage unreachable, exit 75, retried
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    settings = load_settings(clean_environ(
        TINY_JOB, DATASET="s3://bucket/flowers", S3_ENDPOINT_URL=f"http://127.0.0.1:{port}",
        ARTIFACT_URI=str(tmp_path / "runs"), RUN_ID="lr-4"))
    with pytest.raises(TransientError) as caught:
        run_job(settings, clean_environ())
    store = LocalStore(str(tmp_path / "runs"))
    assert read_failure(store, "lr-4") == {"status": "interrupted", "exit_code": 75,
                                           "error": str(caught.value)}
    line = list_runs(store)[1]
    assert line.split()[:2] == ["lr-4", "interrupted"] and line.endswith(f"exit 75: {caught.value}")
    assert sweep_lines(collect_runs(store, "lr"))[1].split()[:2] == ["lr-4", "interrupted"]


def test_a_bug_lists_as_interrupted_with_exit_1(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def bug(*_: object) -> None:
        raise KeyError("classes")

    monkeypatch.setattr(job, "load_run_dataset", bug)  # a bug where the dataset is read
    settings = load_settings(clean_environ(TINY_JOB, DATASET=str(tmp_path / "data.npz"),
                                           ARTIFACT_URI=str(tmp_path / "runs"), RUN_ID="bug"))
    with pytest.raises(KeyError):
        run_job(settings, clean_environ())
    failure = read_failure(LocalStore(str(tmp_path / "runs")), "bug")
    assert failure == {"status": "interrupted", "exit_code": 1, "error": (
        "internal error: KeyError: 'classes'; rerun with LOG_LEVEL=DEBUG for the traceback and "
        "report it")}
    assert list_runs(LocalStore(str(tmp_path / "runs")))[1].split()[:3] == [
        "bug", "interrupted", "0"]


def test_the_record_holds_no_secret_and_a_new_attempt_clears_it(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path))
    record_failure(store, "run", TransientError(
        "s3://bucket unreachable at https://user:hunter2@minio:9000/?X-Amz-Signature=abc"))
    failure = read_failure(store, "run")
    assert failure and (failure["status"], failure["exit_code"]) == ("interrupted", 75)
    assert "hunter2" not in json.dumps(failure) and "abc" not in json.dumps(failure)
    clear_failure(store, "run")
    assert read_failure(store, "run") is None and not (tmp_path / "run" / FAILURE_FILE).exists()


def test_in_s3_a_first_attempt_clears_nothing_and_a_record_is_cleared(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    store = S3Store(f"s3://{s3_server.new_bucket()}/runs", s3_server.endpoint, "path")
    clear_failure(store, "lr-0")  # every run's start: nothing there yet is no error
    record_failure(store, "lr-0", DataError("DATASET=s3://b/x: no such prefix"))
    assert read_failure(store, "lr-0") == {"status": "failed", "exit_code": 3,
                                           "error": "DATASET=s3://b/x: no such prefix"}
    clear_failure(store, "lr-0")
    assert read_failure(store, "lr-0") is None


def test_a_store_that_cannot_take_the_record_leaves_the_error_alone(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    store = LocalStore(str(tmp_path / "file"))
    record_failure(store, "run", TrainerError("the error the job reports"))  # no raise
    assert read_failure(store, "run") is None

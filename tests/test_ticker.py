"""Progress of the long steps besides training: log lines with counts that grow to the total,
and on a terminal a bar that `trainer fetch` draws while it downloads and leaves no trace of.

    .venv/bin/python -m pytest tests/test_ticker.py     (no TensorFlow; about 10 s)
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import S3Server, trainer_log

import trainer.ticker
from trainer.logs import TerminalHandler, TextFormatter
from trainer.runs import fetch_run
from trainer.store.s3 import S3Store
from trainer.ticker import progress_ticker

if TYPE_CHECKING:
    from faults import FaultProxy


def _lines(records: list[logging.LogRecord], step: str) -> list[dict]:
    return [vars(r) for r in records if getattr(r, "step", None) == step]


def test_a_long_step_logs_counts_that_grow_and_end_at_the_total() -> None:
    with trainer_log(logging.INFO) as records, progress_ticker(
            "work", "items", total=5, bytes_total=5000, every=0.05, run_id="r") as ticker:
        for item in range(5):
            ticker.running(f"item {item}")
            time.sleep(0.12)
            ticker.add(done=1, bytes_done=1000)
    lines = _lines(records, "work")
    assert len(lines) >= 5
    done = [line["done"] for line in lines]
    assert done == sorted(done) and done[0] < 5
    assert [lines[-1][k] for k in ("done", "total", "bytes_done", "bytes_total")] == [
        5, 5, 5000, 5000]
    assert lines[-1]["msg"].startswith("work items finished: 5/5, 0.0 of 0.0 MB")
    assert "running" not in lines[-1] and lines[0]["running"].startswith("item ")
    assert lines[-1]["run_id"] == "r" and lines[-1]["elapsed_seconds"] >= 0.5
    seconds = [line["elapsed_seconds"] for line in lines]
    assert seconds == sorted(seconds)


def test_a_quick_step_or_a_failed_one_says_nothing_more() -> None:
    with trainer_log(logging.INFO) as records:
        with progress_ticker("quick", total=1) as ticker:  # the module's 30 s
            ticker.add(done=1)
        with pytest.raises(OSError), progress_ticker("failing", total=2, every=0.05):
            time.sleep(0.08)
            raise OSError("disk full")
    assert not _lines(records, "quick")
    failing = _lines(records, "failing")
    assert failing and all(line["msg"].startswith("failing : 0/2") for line in failing)


def test_a_terminal_bar_is_cleared_before_each_log_line_and_drawn_after_it() -> None:
    stream = io.StringIO()
    handler = TerminalHandler(stream)
    handler.setFormatter(TextFormatter())
    handler.show("fetch [####....] 50%")
    handler.emit(logging.makeLogRecord({"msg": "a line", "levelname": "INFO"}))
    handler.show("")
    assert re.fullmatch(r"\r\x1b\[Kfetch \[####....\] 50%\r\x1b\[K\S+ INFO +a line\n"
                        r"fetch \[####....\] 50%\r\x1b\[K", stream.getvalue())


# --- `trainer fetch` from S3, slowed down by the fault proxy (both servers) ---

def _stored_run(s3_server: S3Server, size: int) -> tuple[str, str]:
    """A finished run's files in a new bucket: (ARTIFACT_URI, run id)."""
    bucket, run = s3_server.new_bucket(), "slow-run"
    files = {"best.h5": os.urandom(size), "config.json": b"{}", "history.json": b"[]"}
    artifacts = {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                 for name, data in files.items()}
    files["manifest.json"] = json.dumps({"status": "finished", "artifacts": artifacts}).encode()
    for name, data in files.items():
        s3_server.client().put_object(Bucket=bucket, Key=f"runs/{run}/{name}", Body=data)
    return f"s3://{bucket}/runs", run


def test_a_fetch_logs_files_and_bytes_as_they_arrive(
        s3_server: S3Server, fault_proxy: FaultProxy, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    uri, run = _stored_run(s3_server, 1_000_000)
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(trainer.ticker, "PROGRESS_SECONDS", 0.1)
    fault_proxy.set("throttle", rate=1_000_000)  # best.h5 alone: about 1 s
    with trainer_log(logging.INFO) as records:
        fetch_run(S3Store(uri, fault_proxy.endpoint, "path"), run, tmp_path)
    lines = _lines(records, "fetch")
    total = 1_000_000 + len(b"{}[]")
    assert len(lines) >= 3 and lines[0]["done"] < 3
    assert any(0 < line["bytes_done"] < 1_000_000 for line in lines)  # within best.h5
    assert [lines[-1][k] for k in ("done", "total", "bytes_done", "bytes_total")] == [
        3, 3, total, total]
    done = [line["bytes_done"] for line in lines]
    assert done == sorted(done)
    assert lines[-1]["msg"].startswith(f"fetch {uri}/{run} finished: 3/3")


def _on_a_terminal(command: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run `command` with a pseudo-terminal as stdin, stdout and stderr; its exit code and
    everything it wrote."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(command, stdin=follower, stdout=follower, stderr=follower,
                               env=env, close_fds=True)
    os.close(follower)
    output = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: every holder of the terminal has closed it
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(timeout=60), output.decode(errors="replace")


def _screen(output: str) -> list[str]:
    """The lines a terminal shows in the end: what follows the last carriage return of each."""
    lines = output.replace("\r\n", "\n").split("\n")
    return [re.split(r"\r(?:\x1b\[K)?", line)[-1] for line in lines if line.strip()]


def test_trainer_fetch_on_a_terminal_draws_a_bar_and_leaves_only_its_answer(
        s3_server: S3Server, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    uri, run = _stored_run(s3_server, 800_000)
    fault_proxy.set("throttle", rate=400_000)  # about 2 s: several bars
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "COLUMNS": "160",
           **s3_server.env(), "S3_ENDPOINT_URL": fault_proxy.endpoint}
    trainer = str(Path(sys.executable).parent / "trainer")
    code, output = _on_a_terminal(
        [trainer, "fetch", run, "--to", str(tmp_path / "models"), "--artifact-uri", uri], env)
    assert code == 0, output
    percents = [int(p) for p in re.findall(rf"\r\x1b\[Kfetch {uri}/{run} \[[#.]+\] +(\d+)%",
                                           output)]
    assert len(percents) >= 3 and percents == sorted(percents), output
    assert max(percents) > 0 and min(percents) < 100
    assert _screen(output) == [str(tmp_path / "models" / run / "best.h5")]

"""Strategy selection: TF_CONFIG from an Indexed Job, and two real workers on loopback."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import (
    REPO,
    TINY_JOB,
    RunStore,
    check_finished_run,
    clean_environ,
    free_ports,
    history_epochs,
    json_lines,
    run_entrypoint,
)

from trainer.distribution import resolve_cluster, tf_config_from_indexed_job
from trainer.errors import ConfigError

INDEXED_JOB = {"JOB_COMPLETION_INDEX": "1", "WORKER_COUNT": "3", "WORKER_SERVICE": "workers",
               "JOB_NAME": "train-cifar", "WORKER_PORT": "2222"}


def test_tf_config_is_derived_from_the_indexed_job_variables() -> None:
    assert tf_config_from_indexed_job(INDEXED_JOB) == {
        "cluster": {"worker": ["train-cifar-0.workers:2222", "train-cifar-1.workers:2222",
                               "train-cifar-2.workers:2222"]},
        "task": {"type": "worker", "index": 1},
    }
    cluster, _ = resolve_cluster(INDEXED_JOB)
    assert cluster.is_multi_worker and not cluster.is_chief
    without_name = {k: v for k, v in INDEXED_JOB.items() if k != "JOB_NAME"}
    derived = tf_config_from_indexed_job({**without_name, "RUN_ID": "run-7"})
    assert derived["cluster"]["worker"][0] == "run-7-0.workers:2222"


def test_tf_config_wins_and_a_single_process_is_its_own_chief() -> None:
    explicit = {"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 0}}
    cluster, config = resolve_cluster({**INDEXED_JOB, "TF_CONFIG": json.dumps(explicit)})
    assert (cluster.workers, cluster.is_chief, config) == (("a:1", "b:2"), True, explicit)
    alone, none = resolve_cluster({"JOB_COMPLETION_INDEX": "0"})
    assert (alone.is_multi_worker, alone.is_chief, none) == (False, True, None)


@pytest.mark.parametrize(("change", "message"), [
    ({"TF_CONFIG": "{not json"}, "TF_CONFIG is not valid"),
    ({"WORKER_COUNT": "two"}, "must be whole numbers"),
    ({"JOB_COMPLETION_INDEX": "3"}, "outside WORKER_COUNT=3"),
    ({"WORKER_SERVICE": ""}, "WORKER_SERVICE and JOB_NAME"),
])
def test_bad_cluster_settings_are_config_errors(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve_cluster({**INDEXED_JOB, **change})


def _start_workers(env_of: Callable[[int], dict[str, str]], count: int = 2
                   ) -> tuple[list[subprocess.Popen], list[str]]:
    """`count` entrypoints on loopback, worker i with TF_CONFIG and the environment env_of(i);
    the processes and the workers' addresses."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(count)]
    processes = []
    for index in range(count):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**env_of(index), "TF_CONFIG": json.dumps(tf_config)}
        processes.append(subprocess.Popen([sys.executable, "entrypoint.py"], env=env, cwd=REPO,
                                          text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
    return processes, workers


def _outputs(processes: list[subprocess.Popen]) -> list[tuple[str, str]]:
    return [p.communicate(timeout=600) for p in processes]


def _digest(stdout: str) -> str:
    return next(r["weights_sha256"] for r in json_lines(stdout) if "weights_sha256" in r)


def test_two_workers_train_together_and_only_the_chief_writes(run_store: RunStore,
                                                              tiny_npz: Path,
                                                              tmp_path: Path) -> None:
    # The other worker gets a location of its own, to show that it writes nothing there.
    elsewhere = run_store.env["ARTIFACT_URI"] + "/worker-1"
    processes, _ = _start_workers(lambda index: clean_environ(
        TINY_JOB, run_store.env, DATASET=str(tiny_npz), RUN_ID="together",
        WORK_DIR=str(tmp_path / f"work-{index}"),
        **({"ARTIFACT_URI": elsewhere} if index else {})))
    outputs = _outputs(processes)
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    assert _digest(outputs[0][0]) == _digest(outputs[1][0])
    written = {key.split("/", 1)[1] for key in run_store.keys("together/")}
    assert {"best.h5", "manifest.json", "history.json", "config.json"} <= written
    assert not run_store.keys("worker-1/")
    assert not (tmp_path / "work-1" / "runs").exists()
    config = json.loads(run_store.read("together/config.json"))
    assert config["replicas"] == 2
    manifest = json.loads(run_store.read("together/manifest.json"))
    assert set(manifest["artifacts"]) == written - {"manifest.json"}


def test_sigterm_to_one_worker_stops_both_after_the_same_step(run_store: RunStore,
                                                              tiny_npz: Path,
                                                              tmp_path: Path) -> None:
    """One node preempted: its pod gets SIGTERM, the other does not. Both stop after the same
    step, the chief saves the state, and the restarted pair resumes from it."""
    def env_of(index: int) -> dict[str, str]:
        return clean_environ(TINY_JOB, run_store.env, DATASET=str(tiny_npz), RUN_ID="preempted",
                             EPOCHS="3", BATCH_SIZE="2", STEPS_PER_CALL="1",
                             VALIDATION_SPLIT="0.25", LEARNING_RATE="1e-4",
                             WORK_DIR=str(tmp_path / f"work-{index}"))

    processes, _ = _start_workers(env_of)
    deadline = time.monotonic() + 300
    while not history_epochs(run_store, "preempted"):  # epoch 1 saved: epoch 2 has begun
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.1)
    time.sleep(0.5)
    processes[1].send_signal(signal.SIGTERM)
    sent = time.monotonic()
    codes = [p.wait(timeout=60) for p in processes]
    assert codes == [143, 143] and time.monotonic() - sent < 30
    stops = [re.search(r"at epoch 2, step (\d+)", p.stderr.read()) for p in processes]
    assert stops[0] and stops[1] and stops[0].group(1) == stops[1].group(1)
    pointer = json.loads(run_store.read("preempted/state/LATEST.json"))["states"][0]
    assert (pointer["epoch"], pointer["step"]) == (1, int(stops[0].group(1)))

    restarted, _ = _start_workers(env_of)
    outputs = _outputs(restarted)
    for process, (_, stderr) in zip(restarted, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    for stdout, _ in outputs:
        resumed = next(r for r in json_lines(stdout) if r["message"].startswith("resuming"))
        assert (resumed["resume_epoch"], resumed["resume_step"]) == (2, pointer["step"])
    assert _digest(outputs[0][0]) == _digest(outputs[1][0])
    check_finished_run(run_store, "preempted", env_of(0), tiny_npz, epochs=3)


def test_a_worker_lost_mid_run_ends_the_other_with_exit_75(run_store: RunStore,
                                                           tiny_npz: Path,
                                                           tmp_path: Path) -> None:
    processes, workers = _start_workers(lambda index: clean_environ(
        TINY_JOB, run_store.env, DATASET=str(tiny_npz), RUN_ID="lost", EPOCHS="3",
        BATCH_SIZE="2", STEPS_PER_CALL="1", WORK_DIR=str(tmp_path / f"work-{index}")))
    # The chief's own copy of the state pointer: written before its upload starts.
    local_root = tmp_path / ("runs" if run_store.kind == "local" else "work-0/runs")
    pointer = local_root / "lost" / "state" / "LATEST.json"
    deadline = time.monotonic() + 300
    while not pointer.exists():
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.02)
    processes[1].kill()  # its pod OOM-killed, or its node gone, while the chief uploads
    assert processes[0].wait(timeout=120) == 75
    stderr = processes[0].stderr.read()
    assert f"lost contact with worker(s) {workers[1]} during training" in stderr
    assert "Traceback" not in stderr
    # Nothing saved is lost: the state the chief had saved is in the store for the restart.
    assert run_store.read("lost/state/LATEST.json") == pointer.read_bytes()


def test_a_worker_whose_peer_never_comes_up_exits_75_naming_it(tiny_npz: Path,
                                                               tmp_path: Path) -> None:
    own, missing = free_ports(2)
    tf_config = {"cluster": {"worker": [f"127.0.0.1:{own}", f"127.0.0.1:{missing}"]},
                 "task": {"type": "worker", "index": 0}}
    env = clean_environ(TINY_JOB, DATASET=str(tiny_npz), RUN_ID="alone", PEER_TIMEOUT="2",
                        ARTIFACT_URI=str(tmp_path / "runs"), TF_CONFIG=json.dumps(tf_config))
    result = run_entrypoint(env, timeout=120)
    assert result.returncode == 75, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: could not reach worker(s) 127.0.0.1:{missing} (connection refused) within "
        "PEER_TIMEOUT=2 s; check that their pods run, and WORKER_SERVICE, WORKER_PORT or "
        "TF_CONFIG name them")
    assert not (tmp_path / "runs" / "alone").exists()

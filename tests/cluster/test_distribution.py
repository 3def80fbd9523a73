"""Several workers as one cluster, on loopback: a chief and two workers, a SIGTERM to one worker
and the restart, a worker lost mid-run, a peer that never comes up. The runs that resume go to
S3 (an rclone server of the test's own), as a cluster's would."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

from conftest import (
    TINY_JOB,
    Job,
    RunStore,
    check_finished_run,
    clean_environ,
    free_ports,
    run_entrypoint,
)


def _start_workers(env_of: Callable[[int], dict[str, str]], count: int = 2, chief: bool = False
                   ) -> tuple[list[Job], list[str]]:
    """`count` entrypoints on loopback, process i with TF_CONFIG and the environment env_of(i);
    with `chief`, process 0 is the chief task and the others workers 0, 1, ...; the jobs and
    their addresses."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    cluster = ({"chief": addresses[:1], "worker": addresses[1:]} if chief
               else {"worker": addresses})
    jobs = []
    for index in range(count):
        task = ({"type": "chief", "index": 0} if chief and index == 0
                else {"type": "worker", "index": index - chief})
        env = {**env_of(index), "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
        jobs.append(Job(env))
    return jobs, addresses


def test_a_chief_and_two_workers_train_as_one_cluster_and_only_the_chief_writes(
        tiny_npz: Path, tmp_path: Path) -> None:
    """TF_CONFIG as Vertex AI and Kubeflow write it: a chief plus workers 0 and 1. A backbone
    with BatchNorm, whose statistics each worker keeps across workers (BATCH_NORM_SYNC=auto)
    and the three average before each evaluation and save."""
    roots = [tmp_path / f"runs-{index}" for index in range(3)]
    jobs, _ = _start_workers(lambda index: clean_environ(
        TINY_JOB, DATASET=str(tiny_npz), RUN_ID="chief", EPOCHS="1", BATCH_SIZE="8",
        BACKBONE="MobileNet", ARTIFACT_URI=str(roots[index]),
        WORK_DIR=str(tmp_path / f"work-{index}")), count=3, chief=True)
    for job in jobs:
        code, stderr = job.finish()
        assert code == 0, stderr[-2000:]
    # Every variable equal on the three, the moving statistics of their own batches included.
    assert len({job.field("weights_sha256") for job in jobs}) == 1
    assert json.loads((roots[0] / "chief" / "manifest.json").read_text())["status"] == "finished"
    config = json.loads((roots[0] / "chief" / "config.json").read_text())
    assert (config["replicas"], config["batch_norm_synchronized"]) == (3, False)
    # The workers, each given a location of its own, write nothing there.
    assert not [path for root in roots[1:] if root.exists() for path in root.rglob("*")
                if path.is_file()]


def test_sigterm_to_one_worker_stops_both_then_they_resume_together(run_store: RunStore,
                                                                   tiny_npz: Path,
                                                                   tmp_path: Path) -> None:
    """One node preempted: its pod gets SIGTERM, the other does not. Both stop after the same
    step, the chief saves the state, and the restarted pair resumes from it and finishes, only
    the chief writing, with equal weights everywhere."""
    def env_of(index: int) -> dict[str, str]:
        return clean_environ(TINY_JOB, run_store.env, DATASET=str(tiny_npz), RUN_ID="preempted",
                             EPOCHS="2", BATCH_SIZE="2", STEPS_PER_CALL="1",
                             VALIDATION_SPLIT="0.25", LEARNING_RATE="1e-4",
                             WORK_DIR=str(tmp_path / f"work-{index}"))

    jobs, _ = _start_workers(env_of)
    jobs[1].wait_for("first training steps done")
    jobs[1].process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    ended = [job.finish(timeout=60) for job in jobs]
    assert [code for code, _ in ended] == [143, 143] and time.monotonic() - sent < 30, ended
    stops = [re.search(r"at epoch 1, step (\d+)", stderr) for _, stderr in ended]
    assert stops[0] and stops[1] and stops[0].group(1) == stops[1].group(1), ended
    pointer = json.loads(run_store.read("preempted/state/LATEST.json"))["states"][0]
    assert (pointer["epoch"], pointer["step"]) == (0, int(stops[0].group(1)))

    restarted, _ = _start_workers(env_of)
    for job in restarted:
        code, stderr = job.finish()
        assert code == 0, stderr[-2000:]
        assert job.resumed() == (1, pointer["step"])
    assert len({job.field("weights_sha256") for job in restarted}) == 1
    # The other worker only read the state it resumed from: it wrote and staged nothing.
    local = tmp_path / "work-1" / "runs" / "preempted"
    assert {p.relative_to(local).parts[0] for p in local.rglob("*") if p.is_file()} == {"state"}
    written = {key.split("/", 1)[1] for key in run_store.keys("preempted/")}
    manifest = json.loads(run_store.read("preempted/manifest.json"))
    assert set(manifest["artifacts"]) == written - {"manifest.json"}
    assert json.loads(run_store.read("preempted/config.json"))["replicas"] == 2
    check_finished_run(run_store, "preempted", tmp_path, tiny_npz, epochs=2)


def test_a_worker_lost_mid_run_ends_the_other_with_exit_75(run_store: RunStore,
                                                           tiny_npz: Path,
                                                           tmp_path: Path) -> None:
    jobs, workers = _start_workers(lambda index: clean_environ(
        TINY_JOB, run_store.env, DATASET=str(tiny_npz), RUN_ID="lost", EPOCHS="3",
        BATCH_SIZE="2", STEPS_PER_CALL="1", WORK_DIR=str(tmp_path / f"work-{index}")))
    # The chief's own copy of the state pointer: written before its upload starts.
    pointer = tmp_path / "work-0" / "runs" / "lost" / "state" / "LATEST.json"
    deadline = time.monotonic() + 300
    while not pointer.exists():
        assert time.monotonic() < deadline and all(j.process.poll() is None for j in jobs)
        time.sleep(0.02)
    jobs[1].process.kill()  # its pod OOM-killed, or its node gone, while the chief uploads
    code, stderr = jobs[0].finish(timeout=120)
    assert code == 75, stderr
    assert f"lost contact with worker(s) {workers[1]} during training" in stderr
    assert "Traceback" not in stderr
    # Nothing saved is lost: the state the chief had saved is in the store for the restart.
    assert run_store.read("lost/state/LATEST.json") == pointer.read_bytes()
    jobs[1].finish()


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
    # Nothing of a run but the record that `trainer runs` shows it by: a retry may mend it.
    assert [p.name for p in (tmp_path / "runs" / "alone").iterdir()] == ["failure.json"]
    record = json.loads((tmp_path / "runs" / "alone" / "failure.json").read_text())
    assert (record["status"], record["exit_code"]) == ("interrupted", 75)

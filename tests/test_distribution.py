"""Strategy selection: TF_CONFIG (with a chief or without), Vertex AI's CLUSTER_SPEC, TF_CONFIG
derived on an Indexed Job, and real workers on loopback."""

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

from trainer.cluster import Cluster, resolve_cluster, tf_config_from_indexed_job
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


CHIEF_AND_WORKERS = {"chief": ["chief-0:2222"], "worker": ["worker-0:2222", "worker-1:2222"]}


def _tf_config(task_type: str, index: int, cluster: dict | None = None) -> dict[str, str]:
    return {"TF_CONFIG": json.dumps({"cluster": cluster or CHIEF_AND_WORKERS,
                                     "task": {"type": task_type, "index": index}})}


def test_with_a_chief_only_the_chief_writes_and_every_task_is_a_peer() -> None:
    tasks = [("chief", 0), ("worker", 0), ("worker", 1)]
    clusters = [resolve_cluster(_tf_config(*task))[0] for task in tasks]
    assert [c.is_chief for c in clusters] == [True, False, False]
    everyone = ("chief-0:2222", "worker-0:2222", "worker-1:2222")
    assert all(c.addresses == everyone and c.is_multi_worker for c in clusters)
    # Each task's own address by its type and index: worker 0 is not the chief's address.
    assert [c.address for c in clusters] == list(everyone)
    _, config = resolve_cluster(_tf_config("worker", 1))
    assert config == {"cluster": CHIEF_AND_WORKERS, "task": {"type": "worker", "index": 1}}


def test_without_a_chief_worker_0_writes() -> None:
    workers = {"worker": ["a:1", "b:2", "c:3"]}
    writers = [resolve_cluster(_tf_config("worker", i, workers))[0].is_chief for i in range(3)]
    assert writers == [True, False, False]


def test_vertex_cluster_spec_is_read_when_tf_config_is_absent() -> None:
    spec = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"],
                        "workerpool1": ["cmle-training-workerpool1-ab-0:2222",
                                        "cmle-training-workerpool1-ab-1:2222"]},
            "environment": "cloud", "task": {"type": "workerpool1", "index": 1, "trial": ""}}
    cluster, config = resolve_cluster({"CLUSTER_SPEC": json.dumps(spec)})
    assert (cluster.task_type, cluster.index, cluster.is_chief) == ("worker", 1, False)
    assert cluster.chief == "cmle-training-workerpool0-ab-0:2222"
    assert config == {"cluster": {"chief": spec["cluster"]["workerpool0"],
                                  "worker": spec["cluster"]["workerpool1"]},
                      "task": {"type": "worker", "index": 1}}
    primary = {**spec, "task": {"type": "workerpool0", "index": 0}}
    assert resolve_cluster({"CLUSTER_SPEC": json.dumps(primary)})[0].is_chief
    # TF_CONFIG, which Vertex AI sets too, wins; one replica alone is no cluster.
    both = {"CLUSTER_SPEC": json.dumps(primary), **_tf_config("worker", 0)}
    assert resolve_cluster(both)[0].address == "worker-0:2222"
    alone = {"cluster": {"workerpool0": ["cmle-training-workerpool0-ab-0:2222"]},
             "task": {"type": "workerpool0", "index": 0}}
    single, _ = resolve_cluster({"CLUSTER_SPEC": json.dumps(alone)})
    assert (single.is_multi_worker, single.is_chief) == (False, True)


def test_parameter_server_pools_are_left_out_of_the_cluster() -> None:
    with_ps = {**CHIEF_AND_WORKERS, "ps": ["ps-0:2222"]}
    cluster, config = resolve_cluster(_tf_config("worker", 0, with_ps))
    assert "ps-0:2222" not in cluster.addresses and "ps" not in config["cluster"]
    with pytest.raises(ConfigError, match="'ps' task"):
        resolve_cluster(_tf_config("ps", 0, with_ps))


@pytest.mark.parametrize(("environ", "message"), [
    (_tf_config("worker", 0, {**CHIEF_AND_WORKERS, "evaluator": ["e:1"]}),
     "TF_CONFIG names an evaluator task"),
    (_tf_config("evaluator", 0, {**CHIEF_AND_WORKERS, "evaluator": ["e:1"]}),
     "TF_CONFIG names an evaluator task"),
    ({"CLUSTER_SPEC": json.dumps({"cluster": {"workerpool0": ["a:1"], "workerpool3": ["e:1"]},
                                  "task": {"type": "workerpool3", "index": 0}})},
     "CLUSTER_SPEC names an evaluator task"),
    ({"CLUSTER_SPEC": "[]"}, "CLUSTER_SPEC is not valid"),
    (_tf_config("master", 0, {"master": ["m:1"], "worker": ["w:1"]}),
     "names task type.s. master"),
    (_tf_config("chief", 0, {"chief": ["a:1", "b:1"], "worker": ["w:1"]}),
     "names 2 chief tasks"),
    (_tf_config("worker", 2), "task worker 2 is not in its cluster"),
    (_tf_config("worker", 0, {"chief": ["a:1"], "worker": ["a:1"]}), "one host:port for several"),
    (_tf_config("worker", 0, {"worker": ["no-port", "b:2"]}), "TF_CONFIG is not valid"),
])
def test_clusters_this_trainer_cannot_run_are_config_errors(environ: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        resolve_cluster(environ)
    assert raised.value.exit_code == 2


def test_a_lost_peer_is_named_from_tensorflows_message() -> None:
    cluster = Cluster(workers=("w0:1", "w1:1"), index=0, task_type="worker", chief="c:1")
    message = ("Collective ops is aborted by: failed to connect to all addresses; "
               "/job:chief/replica:0/task:0 and /job:worker/replica:0/task:1 and "
               "/job:worker/replica:0/task:0 (this one) and /job:worker/replica:0/task:7")
    assert cluster.peers_named_in(message) == ["c:1", "w1:1"]
    assert cluster.address_of("chief", 0) == "c:1" and cluster.address_of("worker", 7) is None
    assert Cluster(workers=("a:1", "b:1")).peers_named_in(message) == ["b:1"]


def _start_workers(env_of: Callable[[int], dict[str, str]], count: int = 2, chief: bool = False
                   ) -> tuple[list[subprocess.Popen], list[str]]:
    """`count` entrypoints on loopback, process i with TF_CONFIG and the environment env_of(i);
    with `chief`, process 0 is the chief task and the others workers 0, 1, ...; the processes and
    their addresses."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    cluster = ({"chief": addresses[:1], "worker": addresses[1:]} if chief
               else {"worker": addresses})
    processes = []
    for index in range(count):
        task = ({"type": "chief", "index": 0} if chief and index == 0
                else {"type": "worker", "index": index - chief})
        env = {**env_of(index), "TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
        processes.append(subprocess.Popen([sys.executable, "entrypoint.py"], env=env, cwd=REPO,
                                          text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
    return processes, addresses


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


def test_a_chief_and_two_workers_train_as_one_cluster_and_only_the_chief_writes(
        tiny_npz: Path, tmp_path: Path) -> None:
    """TF_CONFIG as Vertex AI and Kubeflow write it: a chief plus workers 0 and 1."""
    roots = [tmp_path / f"runs-{index}" for index in range(3)]
    processes, _ = _start_workers(lambda index: clean_environ(
        TINY_JOB, DATASET=str(tiny_npz), RUN_ID="chief", EPOCHS="1", BATCH_SIZE="8",
        ARTIFACT_URI=str(roots[index]), WORK_DIR=str(tmp_path / f"work-{index}")),
        count=3, chief=True)
    outputs = _outputs(processes)
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    assert len({_digest(stdout) for stdout, _ in outputs}) == 1
    assert json.loads((roots[0] / "chief" / "manifest.json").read_text())["status"] == "finished"
    assert json.loads((roots[0] / "chief" / "config.json").read_text())["replicas"] == 3
    # The workers, each given a location of its own, write nothing there.
    assert not [path for root in roots[1:] if root.exists() for path in root.rglob("*")
                if path.is_file()]


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

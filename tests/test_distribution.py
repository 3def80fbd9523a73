"""Strategy selection: TF_CONFIG from an Indexed Job, and two real workers on loopback."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, TINY_JOB, clean_environ, json_lines

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


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def test_two_workers_train_together_and_only_the_chief_writes(tiny_npz: Path,
                                                              tmp_path: Path) -> None:
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = clean_environ(TINY_JOB, DATASET=str(tiny_npz), RUN_ID="together",
                            ARTIFACT_URI=str(tmp_path / f"store-{index}"),
                            WORK_DIR=str(tmp_path / f"work-{index}"),
                            TF_CONFIG=json.dumps(tf_config))
        processes.append(subprocess.Popen([sys.executable, "entrypoint.py"], env=env, cwd=REPO,
                                          text=True, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE))
    outputs = [p.communicate(timeout=900) for p in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    digests = [next(r["weights_sha256"] for r in json_lines(out) if "weights_sha256" in r)
               for out, _ in outputs]
    assert digests[0] == digests[1]
    chief_run = tmp_path / "store-0" / "together"
    assert {"best.h5", "manifest.json", "history.json"} <= {p.name for p in chief_run.iterdir()}
    assert not (tmp_path / "store-1" / "together").exists()
    config = json.loads((chief_run / "config.json").read_text())
    assert config["replicas"] == 2

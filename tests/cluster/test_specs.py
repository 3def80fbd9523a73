"""The cluster a process is part of: TF_CONFIG (with or without a chief), Vertex AI's
CLUSTER_SPEC, and TF_CONFIG derived from a Kubernetes Indexed Job. No TensorFlow."""

from __future__ import annotations

import json

import pytest

from trainer.cluster.specs import Cluster, resolve_cluster, tf_config_from_indexed_job
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

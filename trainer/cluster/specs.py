"""The cluster a process is part of, without TensorFlow.

Multi-worker runs read TF_CONFIG as TensorFlow defines it: a cluster of one optional `chief` and
`worker` tasks, and this process's task (type and index). The chief, or worker 0 when there is
none, is the one task that writes. TF_CONFIG as Vertex AI, Kubeflow's TFJob and Volcano write it
works as it is; an `evaluator` is refused (exit 2: evaluate with `trainer evaluate` after the
run), and `ps` tasks (parameter servers, or Vertex AI's Reduction Server) are left out of the
cluster, a process that is one refused. Without TF_CONFIG, Vertex AI's CLUSTER_SPEC is read
(`workerpool0` is the chief, `workerpool1` the workers, `workerpool2` left out like `ps`,
`workerpool3` evaluators refused), else TF_CONFIG is derived on a Kubernetes Indexed Job from:
JOB_COMPLETION_INDEX (set by Kubernetes), WORKER_COUNT, WORKER_SERVICE (the headless Service
that is the pods' subdomain), JOB_NAME (default RUN_ID) and WORKER_PORT (default 2222). Every
task starts training once every other has answered (trainer.cluster.peers), within PEER_TIMEOUT.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError

DEFAULT_WORKER_PORT = 2222
TASK_TYPES = ("chief", "worker")
# Parameter servers (and Vertex AI's Reduction Server pool) take no part in all-reduce training.
LEFT_OUT_TYPES = ("ps",)
VERTEX_POOLS = {"workerpool0": "chief", "workerpool1": "worker", "workerpool2": "ps",
                "workerpool3": "evaluator"}
# How TensorFlow names a task in its errors, e.g. /job:worker/replica:0/task:1.
_TASK_NAME = re.compile(r"/job:(chief|worker)/replica:\d+/task:(\d+)")


@dataclass(frozen=True)
class Cluster:
    """Where this process stands among the tasks of a run; `is_chief` is the one that writes.

    `workers` lists the `worker` tasks' addresses, `chief` the chief's (None without one);
    `task_type` and `index` name this process's task. A process alone has no workers.
    """

    workers: tuple[str, ...] = ()
    index: int = 0
    task_type: str = "worker"
    chief: str | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        """Every task's host:port, the chief first."""
        return ((self.chief,) if self.chief else ()) + self.workers

    @property
    def address(self) -> str | None:
        """This task's own host:port (None for a process alone)."""
        return self.address_of(self.task_type, self.index)

    @property
    def task_count(self) -> int:
        """How many processes train together (1 alone): TensorFlow's input pipelines."""
        return max(1, len(self.addresses))

    @property
    def task_position(self) -> int:
        """This task's place among them, the chief first: its input pipeline's id."""
        return self.addresses.index(self.address) if self.address in self.addresses else 0

    @property
    def is_multi_worker(self) -> bool:
        return len(self.addresses) > 1

    @property
    def is_chief(self) -> bool:
        """True for the one task that writes: the chief, else worker 0 (and a process alone)."""
        if self.chief:
            return self.task_type == "chief"
        return self.index == 0

    def address_of(self, job: str, index: int) -> str | None:
        """The host:port of task `index` of `job` ("chief" or "worker"), None if no such task."""
        tasks = ((self.chief,) if self.chief else ()) if job == "chief" else (
            self.workers if job == "worker" else ())
        return tasks[index] if 0 <= index < len(tasks) else None

    def peers_named_in(self, message: str) -> list[str]:
        """The addresses of the other tasks that a TensorFlow error message names (as
        /job:worker/replica:0/task:1 or /job:chief/...), in cluster order, without this one."""
        named = {self.address_of(job, int(index)) for job, index in _TASK_NAME.findall(message)}
        return [address for address in self.addresses
                if address in named and address != self.address]


def tf_config_from_indexed_job(environ: Mapping[str, str]) -> dict[str, Any] | None:
    """TF_CONFIG for pod JOB_COMPLETION_INDEX of an Indexed Job, or None outside one.

    Pod i of Indexed Job J has the host name J-i; with `subdomain: WORKER_SERVICE` (a headless
    Service) it resolves as J-i.WORKER_SERVICE inside the namespace.
    """
    if "JOB_COMPLETION_INDEX" not in environ or "WORKER_COUNT" not in environ:
        return None
    names = ("JOB_COMPLETION_INDEX", "WORKER_COUNT", "WORKER_PORT")
    try:
        index, count, port = (
            int(environ.get(name, DEFAULT_WORKER_PORT if name == "WORKER_PORT" else ""))
            for name in names
        )
    except ValueError:
        raise ConfigError(
            "JOB_COMPLETION_INDEX, WORKER_COUNT and WORKER_PORT must be whole numbers; "
            "check the Job's environment"
        ) from None
    service = environ.get("WORKER_SERVICE", "").strip()
    job = (environ.get("JOB_NAME") or environ.get("RUN_ID") or "").strip()
    if not service or not job:
        raise ConfigError(
            "WORKER_SERVICE and JOB_NAME (or RUN_ID) must be set with WORKER_COUNT to derive "
            "TF_CONFIG; set them in the multi-node Job"
        )
    if not 0 <= index < count:
        raise ConfigError(f"JOB_COMPLETION_INDEX={index} is outside WORKER_COUNT={count}")
    workers = [f"{job}-{i}.{service}:{port}" for i in range(count)]
    return {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}


def tf_config_from_cluster_spec(raw: str) -> dict[str, Any]:
    """TF_CONFIG's cluster and task from Vertex AI's CLUSTER_SPEC (its worker pools renamed)."""
    try:
        spec = json.loads(raw)
        pools, task = spec["cluster"], spec["task"]
        config = {"cluster": {VERTEX_POOLS.get(pool, pool): addresses
                              for pool, addresses in pools.items()},
                  "task": {**task, "type": VERTEX_POOLS.get(task["type"], task["type"])}}
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(
            "CLUSTER_SPEC is not valid: give JSON with cluster (workerpool0, workerpool1: lists "
            "of host:port) and task (type, index), as Vertex AI sets it"
        ) from None
    return config


def resolve_cluster(environ: Mapping[str, str]) -> tuple[Cluster, dict[str, Any] | None]:
    """The cluster this process is part of, and the TF_CONFIG that describes it to TensorFlow
    (chief and worker tasks only; None for a process alone)."""
    raw = environ.get("TF_CONFIG", "").strip()
    if raw:
        source = "TF_CONFIG"
        try:
            config = json.loads(raw)
        except ValueError:
            config = None
    elif environ.get("CLUSTER_SPEC", "").strip():
        source, config = "CLUSTER_SPEC", tf_config_from_cluster_spec(environ["CLUSTER_SPEC"])
    else:
        source, config = "TF_CONFIG", tf_config_from_indexed_job(environ)
        if config is None:
            return Cluster(), None
    cluster = _cluster_of(config, source)
    tasks = {"chief": [cluster.chief] if cluster.chief else [], "worker": list(cluster.workers)}
    described = {"cluster": {job: addresses for job, addresses in tasks.items() if addresses},
                 "task": {"type": cluster.task_type, "index": cluster.index}}
    return cluster, described


def _cluster_of(config: Any, source: str) -> Cluster:
    invalid = ConfigError(
        f"{source} is not valid: give JSON with cluster (chief: one host:port, worker: a list "
        "of host:port) and task (type: chief or worker, index)")
    try:
        jobs, task = dict(config["cluster"]), dict(config["task"])
        task_type, index = str(task.get("type", "worker")), int(task.get("index", 0))
        jobs = {str(job): [str(a) for a in addresses] for job, addresses in jobs.items()}
    except (KeyError, TypeError, ValueError):
        raise invalid from None
    if "evaluator" in jobs or task_type == "evaluator":
        raise ConfigError(
            f"{source} names an evaluator task, which this trainer does not run (it evaluates "
            "on the validation split every epoch); remove the evaluator, and evaluate a finished "
            "run with `trainer evaluate`")
    if task_type in LEFT_OUT_TYPES:
        raise ConfigError(
            f"{source} makes this process a {task_type!r} task (a parameter server); this "
            "trainer runs chief and worker tasks only: start the image on those alone")
    unknown = sorted(set(jobs) - set(TASK_TYPES) - set(LEFT_OUT_TYPES)) + (
        [task_type] if task_type not in TASK_TYPES else [])
    if unknown:
        raise ConfigError(f"{source} names task type(s) {', '.join(unknown)}; this trainer runs "
                          "chief and worker tasks only")
    chiefs, workers = jobs.get("chief", []), jobs.get("worker", [])
    if len(chiefs) > 1:
        raise ConfigError(f"{source} names {len(chiefs)} chief tasks; give at most one")
    addresses = chiefs + workers
    if any(not re.fullmatch(r".+:\d+", address) for address in addresses):
        raise invalid
    if len(set(addresses)) < len(addresses):
        raise ConfigError(f"{source} names one host:port for several tasks; give each its own")
    tasks = chiefs if task_type == "chief" else workers
    if not 0 <= index < len(tasks):
        raise ConfigError(f"{source}: task {task_type} {index} is not in its cluster, which has "
                          f"{len(tasks)} {task_type} task(s)")
    return Cluster(workers=tuple(workers), index=index, task_type=task_type,
                   chief=chiefs[0] if chiefs else None)

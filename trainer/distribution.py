"""Which tf.distribute strategy runs the loop: one CPU or GPU, all local GPUs, or several nodes.

Multi-worker runs read TF_CONFIG, or derive it on a Kubernetes Indexed Job from:
JOB_COMPLETION_INDEX (set by Kubernetes), WORKER_COUNT, WORKER_SERVICE (the headless Service
that is the pods' subdomain), JOB_NAME (default RUN_ID) and WORKER_PORT (default 2222). They
start training once every peer has answered (trainer.peers), within PEER_TIMEOUT.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError

DEFAULT_WORKER_PORT = 2222


@dataclass(frozen=True)
class Cluster:
    """Where this process stands: `chief` writes artifacts; the others only train."""

    workers: tuple[str, ...]
    index: int

    @property
    def is_multi_worker(self) -> bool:
        return len(self.workers) > 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0


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


def resolve_cluster(environ: Mapping[str, str]) -> tuple[Cluster, dict[str, Any] | None]:
    """The cluster this process is part of, and the TF_CONFIG that describes it (None alone)."""
    raw = environ.get("TF_CONFIG", "").strip()
    if raw:
        try:
            config = json.loads(raw)
            workers = tuple(config["cluster"].get("worker", ()))
            index = int(config["task"]["index"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ConfigError(
                "TF_CONFIG is not valid: give JSON with cluster.worker (a list of host:port) "
                "and task.index"
            ) from None
    else:
        config = tf_config_from_indexed_job(environ)
        if config is None:
            return Cluster(workers=(), index=0), None
        workers, index = tuple(config["cluster"]["worker"]), config["task"]["index"]
    return Cluster(workers=workers, index=index), config


def make_strategy(
    cpu_replicas: int, environ: Mapping[str, str] | None = None, peer_timeout: float = 600.0
) -> tuple[Any, Cluster]:
    """MultiWorkerMirroredStrategy across nodes (once every peer answers, within
    `peer_timeout` seconds), MirroredStrategy over several local devices, else the default
    strategy on the one device."""
    environ = os.environ if environ is None else environ
    cluster, config = resolve_cluster(environ)
    import tensorflow as tf

    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
        )
    if cluster.is_multi_worker:
        from trainer.peers import wait_for_peers

        wait_for_peers(cluster.workers, cluster.index, peer_timeout)
        os.environ["TF_CONFIG"] = json.dumps(config)
        return tf.distribute.MultiWorkerMirroredStrategy(), cluster
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) == 1:
        # One device: the default strategy runs the same loop without MirroredStrategy's
        # per-step overhead (measured here: 30% fewer images per second on one CPU).
        return tf.distribute.get_strategy(), cluster
    return tf.distribute.MirroredStrategy(devices=devices), cluster


def resolve_precision(precision: str) -> str:
    """The Keras dtype policy for PRECISION: `auto` is bfloat16 where every GPU has bfloat16
    tensor cores (compute capability 8.0 or newer), float32 on older GPUs and on CPUs, where
    bfloat16 is emulated and slower."""
    import tensorflow as tf

    if precision == "auto":
        gpus = tf.config.list_physical_devices("GPU")
        capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
                        for gpu in gpus]
        modern = bool(gpus) and all(c and c >= (8, 0) for c in capabilities)
        precision = "bfloat16" if modern else "float32"
    return {"float32": "float32", "bfloat16": "mixed_bfloat16",
            "float16": "mixed_float16"}[precision]


def resolve_xla(xla: str, strategy: Any) -> bool:
    """XLA for each replica's forward and backward pass: `auto` compiles on GPUs with one
    replica per worker; on CPUs, and under MirroredStrategy whose synchronized BatchNorm
    all-reduces inside the pass, it stays off."""
    import tensorflow as tf

    if xla != "auto":
        return xla == "on"
    one_replica = strategy.num_replicas_in_sync == 1
    return one_replica and bool(tf.config.list_logical_devices("GPU"))

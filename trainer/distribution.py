"""Which tf.distribute strategy runs the loop: one CPU or GPU, all local GPUs (MirroredStrategy),
or several nodes (MultiWorkerMirroredStrategy over the cluster of trainer.cluster); and the
precision and XLA choices that depend on the devices.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import tensorflow as tf

from trainer.cluster import Cluster, resolve_cluster
from trainer.peers import wait_for_peers


def make_strategy(
    cpu_replicas: int, environ: Mapping[str, str] | None = None, peer_timeout: float = 600.0
) -> tuple[tf.distribute.Strategy, Cluster]:
    """MultiWorkerMirroredStrategy across nodes (once every peer answers, within
    `peer_timeout` seconds), MirroredStrategy over several local devices, else the default
    strategy on the one device."""
    environ = os.environ if environ is None else environ
    cluster, config = resolve_cluster(environ)
    if cpu_replicas > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_replicas
        )
    if cluster.is_multi_worker:
        assert cluster.address is not None  # a task of a multi-worker cluster has one
        wait_for_peers(cluster.addresses, cluster.address, peer_timeout)
        os.environ["TF_CONFIG"] = json.dumps(config)
        return tf.distribute.MultiWorkerMirroredStrategy(), cluster
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) == 1:
        # One device: the default strategy runs the same loop without MirroredStrategy's
        # per-step overhead (measured here: 30% fewer images per second on one CPU).
        return tf.distribute.get_strategy(), cluster
    return tf.distribute.MirroredStrategy(devices=devices), cluster


def resolve_precision(precision: str, cpuinfo: str = "/proc/cpuinfo") -> tuple[str, str]:
    """The Keras dtype policy for PRECISION, and why. `auto` is bfloat16 where the hardware
    runs bfloat16 matrix work natively: GPUs of compute capability 8.0 or newer (tensor cores),
    or, without GPUs, CPUs with AMX-BF16 (Intel Sapphire Rapids and later). Elsewhere it is
    float32: AVX512-BF16 alone (AMD Zen 4) measured 1.5x slower in bfloat16 here (VGG16 on
    digits at 32x32: 67.8 against 103.6 images/s), and older GPUs and CPUs emulate it."""
    policies = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
    if precision != "auto":
        return policies[precision], f"PRECISION={precision}"
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        capabilities = [tf.config.experimental.get_device_details(gpu).get("compute_capability")
                        for gpu in gpus]
        if all(c and c >= (8, 0) for c in capabilities):
            return policies["bfloat16"], f"auto: GPUs of compute capability {capabilities[0]}"
        return policies["float32"], f"auto: a GPU of compute capability {min(capabilities)} " \
            "has no bfloat16 tensor cores"
    if "amx_bf16" in _cpu_flags(cpuinfo):
        return policies["bfloat16"], "auto: the CPU has AMX-BF16 (amx_bf16)"
    return policies["float32"], "auto: no GPU, and the CPU has no AMX-BF16"


def _cpu_flags(cpuinfo: str) -> set[str]:
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags")
            for flag in line.split(":", 1)[1].split()}


def resolve_xla(xla: str, strategy: tf.distribute.Strategy) -> bool:
    """XLA for each replica's forward and backward pass: `auto` compiles on GPUs with one
    replica per worker; on CPUs, and under MirroredStrategy whose synchronized BatchNorm
    all-reduces inside the pass, it stays off."""
    if xla != "auto":
        return xla == "on"
    one_replica = strategy.num_replicas_in_sync == 1
    return one_replica and bool(tf.config.list_logical_devices("GPU"))

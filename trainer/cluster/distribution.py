"""Which tf.distribute strategy runs the loop: one CPU or GPU, all local GPUs (MirroredStrategy),
or several nodes (MultiWorkerMirroredStrategy over the cluster of trainer.cluster.specs); and the
precision and XLA choices that depend on the devices.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import tensorflow as tf

from trainer.cluster.peers import wait_for_peers
from trainer.cluster.specs import Cluster, resolve_cluster


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


# bfloat16 on CPUs with AVX512-BF16 but no AMX measured both ways on machines reporting the
# same flags (VGG16 on digits: 1.5x slower one day, 1.5x faster another), so auto measures it.
BFLOAT16_MIN_SPEEDUP = 1.2


def resolve_precision(precision: str, cpuinfo: str = "/proc/cpuinfo",
                      measure: Callable[[], float] | None = None) -> tuple[str, str]:
    """The Keras dtype policy for PRECISION, and why. `auto` is bfloat16 where the hardware
    runs bfloat16 matrix work natively: GPUs of compute capability 8.0 or newer (tensor cores);
    without GPUs, CPUs with AMX-BF16 (Intel Sapphire Rapids and later), and CPUs with
    AVX512-BF16 alone where `measure` (bfloat16_speedup) finds bfloat16 at least
    BFLOAT16_MIN_SPEEDUP times as fast. Elsewhere float32: older GPUs and CPUs emulate it."""
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
    flags = _cpu_flags(cpuinfo)
    if "amx_bf16" in flags:
        return policies["bfloat16"], "auto: the CPU has AMX-BF16 (amx_bf16)"
    if "avx512_bf16" in flags:
        speedup = (measure or bfloat16_speedup)()
        measured = (f"the CPU has AVX512-BF16 and a convolution ran {speedup:.2f}x as fast in "
                    f"bfloat16 as in float32 here")
        if speedup >= BFLOAT16_MIN_SPEEDUP:
            return policies["bfloat16"], f"auto: {measured}"
        return policies["float32"], f"auto: {measured} (bfloat16 needs {BFLOAT16_MIN_SPEEDUP}x)"
    return policies["float32"], "auto: no GPU, and the CPU has neither AMX-BF16 nor AVX512-BF16"


def bfloat16_speedup(repeats: int = 5) -> float:
    """How many times as fast a 3x3 convolution's forward and backward pass (the bulk of a
    backbone's step) runs in bfloat16 as in float32 on this CPU: the best of `repeats` timed
    calls each, after a first one; about half a second."""
    best = {}
    for dtype in (tf.float32, tf.bfloat16):
        images = tf.cast(tf.random.uniform((16, 32, 32, 64)), dtype)
        kernel = tf.cast(tf.random.uniform((3, 3, 64, 64)), dtype)

        @tf.function
        def step(images: tf.Tensor, kernel: tf.Tensor) -> list[tf.Tensor]:
            with tf.GradientTape() as tape:
                tape.watch([images, kernel])
                loss = tf.reduce_sum(tf.nn.conv2d(images, kernel, 1, "SAME"))
            return tape.gradient(loss, [images, kernel])

        step(images, kernel)[0].numpy()
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            step(images, kernel)[0].numpy()
            times.append(time.perf_counter() - started)
        best[dtype] = min(times)
    return best[tf.float32] / best[tf.bfloat16]


def synchronized_batch_norm(setting: str, replicas: int, workers: int) -> tuple[bool, str]:
    """Whether BatchNormalization computes its statistics over the global batch in every step
    (BATCH_NORM_SYNC=step) or each replica over its own batch, the moving statistics averaged
    before each evaluation and save (save), and why. `auto` synchronizes inside one worker,
    where the collectives stay on the node, and not across workers, where each of the hundreds
    per step crosses the network (BENCHMARKS.md: save trained 2.2x as fast as step with two
    workers even on loopback). One replica has nobody to synchronize with, and Keras'
    synchronized layers would cost it half as much again per step."""
    if replicas == 1:
        return False, "one replica: nothing to synchronize"
    if setting == "auto":
        if workers > 1:
            return False, "auto: several workers, each replica's statistics averaged at saves"
        return True, "auto: one worker, statistics synchronized across its replicas every step"
    return setting == "step", f"BATCH_NORM_SYNC={setting}"


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

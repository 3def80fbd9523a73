"""The training recipe's own exits: a loss that diverges, float16 across replicas, and a device
out of memory are settings to change (exit 2), never bugs to retry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tensorflow as tf
from conftest import TINY_JOB, MlflowServer, clean_environ, run_entrypoint

from trainer.control import out_of_memory_is_a_setting
from trainer.errors import ConfigError
from trainer.models.classifier import build_model
from trainer.reports.sweep_page import collect_runs, sweep_lines
from trainer.runs import list_runs
from trainer.settings import load_settings
from trainer.store.stores import LocalStore


@pytest.mark.xdist_group("mlflow")  # one worker runs the tests of the MLflow server
def test_a_diverging_loss_stops_with_exit_2_keeping_the_epochs_before(
        tiny_npz: Path, tmp_path: Path, mlflow_server: MlflowServer) -> None:
    weights = tmp_path / "start.weights.h5"
    build_model("VGG16", "avg", 32, 4, None).save_weights(weights)
    # Epoch 1 trains the head at a sane rate; epoch 2 fine-tunes at an absurd one.
    env = clean_environ(TINY_JOB, DATASET=str(tiny_npz), ARTIFACT_URI=str(tmp_path / "runs"),
                        RUN_ID="lr-1", WEIGHTS=str(weights), EPOCHS="1",
                        FINE_TUNE_EPOCHS="1", FINE_TUNE_LEARNING_RATE="1e30",
                        VALIDATION_SPLIT="0.25", MLFLOW_TRACKING_URI=mlflow_server.uri,
                        MLFLOW_EXPERIMENT_NAME=f"diverged-{tmp_path.name}")
    result = run_entrypoint(env)
    assert result.returncode == 2, result.stderr
    client = mlflow_server.client()  # a failed run is FAILED in MLflow, not RUNNING or FINISHED
    experiment = client.get_experiment_by_name(env["MLFLOW_EXPERIMENT_NAME"])
    assert [r.info.status for r in client.search_runs([experiment.experiment_id])] == ["FAILED"]
    line = result.stderr.strip().splitlines()[-1]
    assert "loss became NaN or infinite in epoch 2" in line and "lower LEARNING_RATE" in line
    run = tmp_path / "runs" / "lr-1"
    history = json.loads((run / "history.json").read_text())  # valid JSON: NaN is null
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0]["val_accuracy"] is not None and history[1]["loss"] is None
    pointer = json.loads((run / "state" / "LATEST.json").read_text())
    assert pointer["states"][0]["epoch"] == 1  # the diverged epoch is not kept
    assert (run / "best.h5").is_file() and not (run / "manifest.json").exists()
    # Combination 1 of a sweep `lr` (its RUN_ID): `trainer runs --sweep` shows that it failed
    # and why, from the store, once its pod is gone (the other combinations go on).
    store = LocalStore(str(tmp_path / "runs"))
    header, row = sweep_lines(collect_runs(store, "lr"))
    assert header.split() == ["RUN_ID", "STATUS", "EPOCHS", "BEST", "BEST_EPOCH", "WHY"]
    why = f"exit 2: {line.removeprefix('error: ')}"
    assert row.split()[:3] == ["lr-1", "failed", "2"] and row.endswith(why)
    (listed,) = list_runs(store)[1:]
    assert listed.split()[:3] == ["lr-1", "failed", "2"] and listed.endswith(why)


def test_float16_across_replicas_is_refused(tiny_npz: Path, tmp_path: Path) -> None:
    env = clean_environ(TINY_JOB, DATASET=str(tiny_npz), ARTIFACT_URI=str(tmp_path),
                        PRECISION="float16", CPU_REPLICAS="2")
    result = run_entrypoint(env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: PRECISION=float16 is not supported with 2 replicas; use PRECISION=bfloat16 "
        "(or auto), or float32")


def test_out_of_device_memory_names_the_sizes_to_lower() -> None:
    settings = load_settings({"BATCH_SIZE": "512"})
    expected = r"BATCH_SIZE=512 per replica at IMAGE_SIZE=224; lower BATCH_SIZE or IMAGE_SIZE"
    with pytest.raises(ConfigError, match=expected), out_of_memory_is_a_setting(settings, 224):
        # What TensorFlow raises when an allocation on the device fails.
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")


def test_precision_auto_is_bfloat16_only_where_the_cpu_runs_it_natively(tmp_path: Path) -> None:
    from trainer.cluster.distribution import resolve_precision

    def cpu(flags: str) -> str:
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: fpu sse2 {flags}\n")
        return str(tmp_path / "cpuinfo")

    # This machine has no GPU: the CPU's flags decide.
    assert resolve_precision("auto", cpu("avx512f amx_tile amx_bf16")) == (
        "mixed_bfloat16", "auto: the CPU has AMX-BF16 (amx_bf16)")
    # AVX512-BF16 alone: as fast as a convolution measures it on the machine.
    assert resolve_precision("auto", cpu("avx512f avx512_bf16"), lambda: 1.6) == (
        "mixed_bfloat16", "auto: the CPU has AVX512-BF16 and a convolution ran 1.60x as fast in "
        "bfloat16 as in float32 here")
    policy, why = resolve_precision("auto", cpu("avx512f avx512_bf16"), lambda: 0.7)
    assert policy == "float32" and "0.70x" in why
    assert resolve_precision("auto", cpu("avx512f avx2")) == (
        "float32", "auto: no GPU, and the CPU has neither AMX-BF16 nor AVX512-BF16")
    assert resolve_precision("float16", cpu("amx_bf16")) == ("mixed_float16", "PRECISION=float16")


def test_the_bfloat16_measurement_times_both_precisions() -> None:
    from trainer.cluster.distribution import bfloat16_speedup

    # Whatever this CPU is, both passes ran and took time: a ratio, neither 0 nor infinite.
    assert 0.01 < bfloat16_speedup(repeats=2) < 100


def test_batch_norm_synchronizes_inside_a_worker_and_not_across_workers() -> None:
    from trainer.cluster.distribution import synchronized_batch_norm

    assert synchronized_batch_norm("auto", replicas=1, workers=1)[0] is False
    assert synchronized_batch_norm("step", replicas=1, workers=1)[0] is False
    assert synchronized_batch_norm("auto", replicas=4, workers=1)[0] is True
    assert synchronized_batch_norm("auto", replicas=4, workers=2)[0] is False
    assert synchronized_batch_norm("step", replicas=4, workers=2) == (True, "BATCH_NORM_SYNC=step")
    assert synchronized_batch_norm("save", replicas=4, workers=1) == (False, "BATCH_NORM_SYNC=save")

"""The transfer-learning recipe: what trains in each phase, the learning-rate schedule, early
stopping, mixed precision, and transfer from a pre-trained backbone beating a cold start."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_JOB, clean_environ, json_lines, run_entrypoint
from trainjob_status import StatusServer

from trainer.recipe import PhasedSchedule, phase_of, phases, set_trainable, stop_early
from trainer.settings import load_settings


def _train_steps(model, steps: int = 3) -> tuple:
    """Real training steps of the job's loop on random images, 3 classes."""
    import keras
    import tensorflow as tf

    from trainer.data.load import Split
    from trainer.data.pipeline import batch_preprocessor, training_input
    from trainer.loop import Loop
    from trainer.models.classifier import preprocess_function

    optimizer = keras.optimizers.Adam(1e-2)
    set_trainable(model, phases(load_settings({}))[0], None)  # every layer, as the job builds it
    optimizer.build(model.trainable_variables)
    loop = Loop(tf.distribute.get_strategy(), model, optimizer, global_batch=8)
    rng = np.random.default_rng(0)
    split = Split(rng.integers(0, 256, (32, 32, 32, 3), dtype=np.uint8), np.arange(32) % 3)
    preprocess = batch_preprocessor(32, preprocess_function("MobileNetV2"))
    return loop, lambda: loop.train_epoch(training_input(split, 32, preprocess, 8, 0, 1), steps)


def _values(model) -> dict[str, np.ndarray]:
    return {v.path: np.array(v.numpy()) for v in model.variables}


@pytest.fixture(scope="module")
def mobilenet():
    import keras

    from trainer.models.classifier import build_model

    keras.utils.set_random_seed(0)
    return build_model("MobileNetV2", "avg", 32, 3, None)


def test_the_head_phase_changes_the_head_only(mobilenet) -> None:
    settings = load_settings({"FINE_TUNE_EPOCHS": "1", "EPOCHS": "1"})
    loop, train = _train_steps(mobilenet)
    assert set_trainable(mobilenet, phase_of(settings, 1), None) == []
    loop.retrace()
    before = _values(mobilenet)
    train()
    after = _values(mobilenet)
    changed = {path for path in before if not np.array_equal(before[path], after[path])}
    # BatchNormalization's moving statistics too: frozen means inference mode.
    assert changed and all(path.startswith("predictions/") for path in changed), changed


def test_fine_tuning_trains_exactly_the_top_n_layers(mobilenet) -> None:
    settings = load_settings({"FINE_TUNE_EPOCHS": "1", "EPOCHS": "1", "FINE_TUNE_LAYERS": "4"})
    loop, train = _train_steps(mobilenet)
    trained = set_trainable(mobilenet, phase_of(settings, 2), settings.fine_tune_layers)
    loop.retrace()
    assert len(trained) == 4
    before = _values(mobilenet)
    train()
    after = _values(mobilenet)
    changed_layers = {path.split("/")[0] for path in before
                      if not np.array_equal(before[path], after[path])}
    assert changed_layers == {*trained, "predictions"}
    assert not any("BN" in name or "bn" in name for name in changed_layers)


def test_the_schedule_warms_up_decays_and_switches_rate_per_phase() -> None:
    settings = load_settings({"EPOCHS": "4", "WARMUP_EPOCHS": "1", "LR_SCHEDULE": "cosine",
                              "LEARNING_RATE": "1e-3", "FINE_TUNE_EPOCHS": "2",
                              "FINE_TUNE_LEARNING_RATE": "1e-4"})
    schedule = PhasedSchedule(settings, steps_per_epoch=10)
    rate = {step: float(schedule(step)) for step in (0, 4, 9, 20, 39, 40, 50, 59, 60)}
    assert rate[0] == pytest.approx(1e-4)  # warm-up: 1/10 of the way
    assert rate[4] == pytest.approx(5e-4 * 0.5 * (1 + np.cos(np.pi * 4 / 40)), rel=1e-5)
    assert rate[9] == pytest.approx(1e-3 * 0.5 * (1 + np.cos(np.pi * 9 / 40)), rel=1e-5)
    assert rate[20] == pytest.approx(5e-4, rel=1e-5)  # halfway down the cosine
    assert rate[39] < 1e-5
    assert rate[40] == pytest.approx(1e-4)  # the fine-tuning phase starts at its own rate
    assert rate[50] == pytest.approx(5e-5, rel=1e-5)
    assert rate[59] < 1e-6 and rate[60] == 0.0
    constant = PhasedSchedule(load_settings({"EPOCHS": "3"}), steps_per_epoch=10)
    assert [float(constant(s)) for s in (0, 15, 29)] == pytest.approx([1e-3] * 3)


def test_early_stopping_counts_the_last_phase_only() -> None:
    settings = load_settings({"EPOCHS": "3", "FINE_TUNE_EPOCHS": "5",
                              "EARLY_STOPPING_PATIENCE": "2"})
    assert not stop_early(settings, epoch=3, best_epoch=1)  # the head phase always completes
    assert not stop_early(settings, epoch=4, best_epoch=1)
    assert stop_early(settings, epoch=5, best_epoch=1)
    assert not stop_early(settings, epoch=6, best_epoch=5)
    assert not stop_early(load_settings({"EPOCHS": "9"}), epoch=9, best_epoch=1)


def test_early_stopping_label_smoothing_augmentation_xla_and_trainjob_status(
        tiny_npz: Path, tmp_path: Path, status_server: StatusServer) -> None:
    """One run for several settings: a learning rate too small to change any prediction
    (val_accuracy never improves) stops after EARLY_STOPPING_PATIENCE epochs; the cosine
    schedule is on its way down from the first epoch; every augmentation and label smoothing
    run; XLA=on compiles each replica's step with XLA (its dump names the loop's gradient
    function); in a Kubeflow TrainJob the chief reports its progress to the status server."""
    dump = tmp_path / "xla-dump"
    env = clean_environ(TINY_JOB, status_server.environ(tmp_path), DATASET=str(tiny_npz),
                        ARTIFACT_URI=str(tmp_path), RUN_ID="patience", EPOCHS="6",
                        LEARNING_RATE="1e-12", EARLY_STOPPING_PATIENCE="2",
                        VALIDATION_SPLIT="0.25", LABEL_SMOOTHING="0.1", LR_SCHEDULE="cosine",
                        AUGMENT="flip,crop,translate", XLA="on",
                        XLA_FLAGS=f"--xla_dump_to={dump} --xla_dump_hlo_as_text")
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    history = json.loads((tmp_path / "patience" / "history.json").read_text())
    assert [row["epoch"] for row in history] == [1, 2, 3]
    manifest = json.loads((tmp_path / "patience" / "manifest.json").read_text())
    assert manifest["stopped_early"] is True and manifest["best_epoch"] == 1
    assert any(r["message"].startswith("stopping early") for r in json_lines(result.stdout))
    config = json.loads((tmp_path / "patience" / "config.json").read_text())
    assert config["augmentations"] == ["flip", "crop", "translate"] and config["xla"] is True
    assert all(np.isfinite(row["loss"]) for row in history)
    assert history[0]["learning_rate"] < 1e-12  # the cosine is on its way down
    assert any("_gradients" in path.name for path in dump.iterdir())
    final = status_server.received[-1]["trainerStatus"]
    assert final["progressPercentage"] == 100 and final["estimatedRemainingSeconds"] == 0
    assert {m["name"] for m in final["metrics"]} >= {"loss", "val_accuracy"}

"""The distributed loop: replicas stay identical, and evaluation counts every example once.

Both ways of keeping BatchNormalization's statistics across replicas (BATCH_NORM_SYNC): step,
synchronized in every step; save, each replica's own, averaged before evaluations and saves.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import clean_environ

TWO_REPLICAS = """
import json
import numpy as np, tensorflow as tf, keras
from trainer.cluster.distribution import make_strategy
from trainer.models.classifier import build_model, preprocess_function
from trainer.data.load import Split
from trainer.loop import Loop
from trainer.data.pipeline import batch_preprocessor, evaluation_input, training_input

def differing(model, names):
    return [v.path for v in model.variables if any(n in v.path for n in names)
            and not all(np.array_equal(v._value.values[0].numpy(), other.numpy())
                        for other in v._value.values[1:])]

strategy, _ = make_strategy(2, {})
keras.utils.set_random_seed(0)
with strategy.scope():
    model = build_model("MobileNetV2", "avg", 32, 3, None)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
rng = np.random.default_rng(0)
train = Split(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 3)
val = Split(train.images[:13], train.labels[:13])
prep = batch_preprocessor(32, preprocess_function("MobileNetV2"))
report = {"replicas": strategy.num_replicas_in_sync, "variables": len(model.variables)}

loop = Loop(strategy, model, optimizer, global_batch=8)
metrics = loop.train_epoch(training_input(train, 32, prep, 8, 0, 1), 3)
report["images"] = metrics.totals.images
report["step_differing"] = differing(model, [""])
loss, accuracy = loop.evaluate(evaluation_input(val, 32, prep, 8), 2)
probabilities = model.predict(prep(val.images), verbose=0)
report["accuracy"] = accuracy
report["expected"] = float(np.mean(np.argmax(probabilities, 1) == val.labels))

for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.synchronized = False
loop = Loop(strategy, model, optimizer, global_batch=8)
loop.train_epoch(training_input(train, 32, prep, 8, 0, 2), 3)
report["save_trained_differing"] = differing(model, ["kernel", "gamma", "beta"])
report["save_statistics_differing"] = len(differing(model, ["moving_"]))
loop.average_batch_norm()
report["save_averaged_differing"] = differing(model, [""])
print(json.dumps(report))
"""


def test_two_replicas_keep_every_variable_identical_and_evaluate_exactly() -> None:
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS], capture_output=True,
                            text=True, timeout=600, env=clean_environ())
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["replicas"] == 2
    assert report["images"] == 24  # 3 steps of a global batch of 8
    # BATCH_NORM_SYNC=step: every variable, BatchNormalization's moving statistics included.
    assert report["variables"] > 200 and report["step_differing"] == []
    # 13 examples padded to 16: the padding must not count.
    assert abs(report["accuracy"] - report["expected"]) < 1e-6
    # BATCH_NORM_SYNC=save: the weights agree; each replica's statistics drift apart until
    # they are averaged, after which nothing differs.
    assert report["save_trained_differing"] == []
    assert report["save_statistics_differing"] > 50
    assert report["save_averaged_differing"] == []


def _small_model(classes: int = 3, activation_scale: float = 1.0):
    """A convolution and the job's head (a float32 softmax Dense) on 16x16 images, under the
    global precision policy: the loop's behaviour in seconds, where a backbone takes minutes in
    float16 on a CPU."""
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Rescaling(activation_scale)(x)
    outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32",
                                 name="predictions")(x)
    return keras.Model(inputs, outputs)


def _images(count: int = 32, classes: int = 3):
    import numpy as np

    from trainer.data.load import Split

    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (count, 16, 16, 3), dtype=np.uint8),
                 np.arange(count) % classes)


def test_label_smoothing_is_the_loss_that_trains() -> None:
    """LABEL_SMOOTHING as the job's loop reads it: the loss it trains on (and reports) is the
    cross-entropy against smoothed targets, (1 - e) one-hot + e / classes."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer.data.pipeline import batch_preprocessor, training_input
    from trainer.loop import Loop
    from trainer.settings import load_settings

    model, split = _small_model(activation_scale=30.0), _images()  # confident predictions
    preprocess = batch_preprocessor(16, lambda x: x / 127.5 - 1)
    probabilities = model.predict(preprocess(split.images), verbose=0).astype(np.float64)
    onehot = np.eye(3)[split.labels]

    def epoch_loss(smoothing: str) -> float:
        optimizer = keras.optimizers.Adam(0.0)  # the model stays as predicted above
        optimizer.build(model.trainable_variables)
        loop = Loop.for_settings(load_settings({"LABEL_SMOOTHING": smoothing}),
                                 tf.distribute.get_strategy(), model, optimizer, 8)
        metrics = loop.train_epoch(training_input(split, 16, preprocess, 8, 0, 1), 4)
        return metrics.totals.loss

    def cross_entropy(targets: np.ndarray) -> float:
        return float(np.mean(-np.sum(targets * np.log(probabilities), axis=1)))

    smoothed = cross_entropy(0.8 * onehot + 0.2 / 3)
    assert abs(cross_entropy(onehot) - smoothed) > 0.01  # the check can tell them apart
    assert epoch_loss("0.2") == pytest.approx(smoothed, abs=1e-4)
    assert epoch_loss("0") == pytest.approx(cross_entropy(onehot), abs=1e-4)


def test_a_float16_step_moves_the_weights_as_a_float32_step_does() -> None:
    """PRECISION=float16 as the job builds its optimizer and loop: loss scaling makes a step
    change every weight as float32 does. The activations are scaled down to where float16
    gradients underflow without it; a loss not scaled before the backward pass (every update
    ~32,768x too small) or an optimizer that does not unscale both change the step."""
    import keras
    import numpy as np
    import tensorflow as tf

    from trainer.cluster.distribution import resolve_precision
    from trainer.data.pipeline import batch_preprocessor, training_input
    from trainer.loop import Loop
    from trainer.recipe import make_optimizer
    from trainer.settings import load_settings

    def step_change(precision: str) -> np.ndarray:
        settings = load_settings({"PRECISION": precision, "LEARNING_RATE": "1e-3"})
        policy, _ = resolve_precision(settings.precision)
        keras.mixed_precision.set_global_policy(policy)
        try:
            model = _small_model(activation_scale=1e-4)
            optimizer = make_optimizer(settings, steps_per_epoch=4, policy=policy)
            optimizer.build(model.trainable_variables)
            loop = Loop.for_settings(settings, tf.distribute.get_strategy(), model, optimizer, 8)
            before = [np.array(v.numpy()) for v in model.trainable_variables]
            preprocess = batch_preprocessor(16, lambda x: x / 127.5 - 1)
            loop.train_epoch(training_input(_images(), 16, preprocess, 8, 0, 1), 1)
            return np.concatenate([(np.array(v.numpy()) - b).ravel()
                                   for v, b in zip(model.trainable_variables, before,
                                                   strict=True)])
        finally:
            keras.mixed_precision.set_global_policy("float32")

    float32, float16 = step_change("float32"), step_change("float16")
    assert np.linalg.norm(float32) > 1e-4  # the step did move the weights
    # Measured: 0.001 with loss scaling; 0.95 with the loss unscaled, 0.55 with no scaling.
    assert np.linalg.norm(float16 - float32) / np.linalg.norm(float32) < 0.05

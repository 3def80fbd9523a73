"""The distributed loop: replicas stay identical, and evaluation counts every example once."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import clean_environ

TWO_REPLICAS = """
import json
import numpy as np, tensorflow as tf, keras
from trainer.distribution import make_strategy
from trainer.model import build_model, preprocess_function
from trainer.data import Split
from trainer.loop import Loop
from trainer.pipeline import batch_preprocessor, evaluation_input, training_input

strategy, _ = make_strategy(2, {})
keras.utils.set_random_seed(0)
with strategy.scope():
    model = build_model("MobileNetV2", "avg", 32, 3, None)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
loop = Loop(strategy, model, optimizer, global_batch=8)
rng = np.random.default_rng(0)
train = Split(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8), np.arange(40) % 3)
val = Split(train.images[:13], train.labels[:13])
prep = batch_preprocessor(32, preprocess_function("MobileNetV2"))
metrics = loop.train_epoch(training_input(train, 32, prep, 8, 0, 1), 3)
loss, accuracy = loop.evaluate(evaluation_input(val, 32, prep, 8), 2)
probabilities = model.predict(prep(val.images), verbose=0)
expected = float(np.mean(np.argmax(probabilities, 1) == val.labels))
differing = [v.path for v in model.variables
             if not all(np.array_equal(v._value.values[0].numpy(), other.numpy())
                        for other in v._value.values[1:])]
print(json.dumps({"replicas": strategy.num_replicas_in_sync,
                  "images": metrics.totals.images,
                  "differing": differing, "accuracy": accuracy, "expected": expected,
                  "variables": len(model.variables)}))
"""


def test_two_replicas_keep_every_variable_identical_and_evaluate_exactly() -> None:
    result = subprocess.run([sys.executable, "-c", TWO_REPLICAS], capture_output=True,
                            text=True, timeout=600, env=clean_environ())
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["replicas"] == 2
    assert report["images"] == 24  # 3 steps of a global batch of 8
    # BatchNormalization's moving statistics included, not only the trainable weights.
    assert report["variables"] > 200 and report["differing"] == []
    # 13 examples padded to 16: the padding must not count.
    assert abs(report["accuracy"] - report["expected"]) < 1e-6

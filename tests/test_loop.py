"""The distributed loop: replicas stay identical, and evaluation counts every example once.

Both ways of keeping BatchNormalization's statistics across replicas (BATCH_NORM_SYNC): step,
synchronized in every step; save, each replica's own, averaged before evaluations and saves.
"""

from __future__ import annotations

import json
import subprocess
import sys

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

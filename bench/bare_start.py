"""The bare minimum before a first optimizer step, for bench/bench.py's start-up figure: import
TensorFlow, build MobileNetV2 at 32x32 with a Dense head, compile, train one batch.

    .venv/bin/python bench/bare_start.py BATCH

Prints one JSON line when the batch is trained; the parent times it from the process start.
"""

from __future__ import annotations

import json
import sys

import keras
import numpy as np

if __name__ == "__main__":
    batch = int(sys.argv[1])
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    base = keras.applications.MobileNetV2(include_top=False, weights=None, input_tensor=inputs,
                                          pooling="avg")
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(base.output))
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy")
    images = np.random.default_rng(0).uniform(-1, 1, (batch, 32, 32, 3)).astype(np.float32)
    labels = np.arange(batch) % 10
    model.train_on_batch(images, labels)
    print(json.dumps({"event": "first step done"}), flush=True)

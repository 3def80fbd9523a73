"""In-process speed figures for bench/bench.py, printed as one JSON line (run in a fresh process
so that each measurement has TensorFlow to itself):

    .venv/bin/python bench/speed.py pipeline BACKBONE SIZE BATCH
    .venv/bin/python bench/speed.py tutorial BACKBONE SIZE BATCH EPOCHS

`pipeline`: the job's loop fed by the real tf.data pipeline against the same loop fed by one
preprocessed batch already in memory, alternating rounds so that both see the same machine.
`tutorial`: the job's loop against the tutorial's `model.fit` on numpy arrays (same backbone,
size, batch, optimizer and seed): training images per second, and the validation accuracy and
elapsed seconds after every epoch.
"""

from __future__ import annotations

import json
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from trainer.data import load_dataset
from trainer.loop import Loop
from trainer.model import build_model, preprocess_function
from trainer.pipeline import batch_preprocessor, evaluation_input, padded_length, training_input

ROUNDS = 3


def _setup(backbone: str, size: int, batch: int) -> tuple:
    data = load_dataset("digits", validation_split=0.2, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model(backbone, "avg", size, len(data.class_names), None)
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.build(model.trainable_variables)
    loop = Loop(tf.distribute.get_strategy(), model, optimizer, batch, steps_per_call=10)
    return data, model, loop, batch_preprocessor(size, preprocess_function(backbone))


def pipeline(backbone: str, size: int, batch: int) -> dict:
    data, _, loop, preprocess = _setup(backbone, size, batch)
    steps = len(data.train) // batch
    images, labels = preprocess(data.train.images[:batch]), data.train.labels[:batch]

    def synthetic(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    def real(epoch: int):  # noqa: ANN202
        return training_input(data.train, size, preprocess, batch, 0, epoch)

    loop.train_epoch(real(0), 10)
    loop.train_epoch(synthetic, 10)
    seconds = {"real": 0.0, "synthetic": 0.0}
    for round_ in range(ROUNDS):
        seconds["real"] += loop.train_epoch(real(round_ + 1), steps).seconds
        seconds["synthetic"] += loop.train_epoch(synthetic, steps).seconds
    rate = {k: ROUNDS * steps * batch / v for k, v in seconds.items()}
    return {"real": rate["real"], "synthetic": rate["synthetic"],
            "ratio": rate["real"] / rate["synthetic"], "images_per_round": steps * batch}


def tutorial(backbone: str, size: int, batch: int, epochs: int) -> dict:
    data, model, loop, preprocess = _setup(backbone, size, batch)
    steps = len(data.train) // batch
    evaluation = evaluation_input(data.val, size, preprocess, batch)
    evaluation_steps = padded_length(len(data.val), batch) // batch
    ours, started = [], time.perf_counter()
    for epoch in range(1, epochs + 1):
        metrics = loop.train_epoch(
            training_input(data.train, size, preprocess, batch, 0, epoch), steps)
        _, accuracy = loop.evaluate(evaluation, evaluation_steps)
        ours.append({"epoch": epoch, "val_accuracy": accuracy,
                     "elapsed": time.perf_counter() - started,
                     "images_per_second": metrics.totals.images / metrics.totals.seconds})

    # The tutorial: every image resized and preprocessed up front into one float32 array.
    keras.utils.set_random_seed(0)
    theirs_model = build_model(backbone, "avg", size, len(data.class_names), None)
    theirs_model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy",
                         metrics=["accuracy"])
    started = time.perf_counter()
    x_train = np.asarray(preprocess(data.train.images))
    x_val = np.asarray(preprocess(data.val.images))
    theirs: list[dict] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.began = time.perf_counter()

        def on_train_batch_end(self, batch_index: int, logs: dict | None = None) -> None:
            self.trained = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            theirs.append({"epoch": epoch + 1, "val_accuracy": float(logs["val_accuracy"]),
                           "elapsed": time.perf_counter() - started,
                           "images_per_second": len(x_train) / (self.trained - self.began)})

    theirs_model.fit(x_train, data.train.labels, batch_size=batch, epochs=epochs,
                     validation_data=(x_val, data.val.labels), callbacks=[Timer()], verbose=0,
                     shuffle=True)
    return {"ours": ours, "theirs": theirs, "train_images": steps * batch}


if __name__ == "__main__":
    kind, backbone, size, batch, *rest = sys.argv[1:]
    tf.get_logger().setLevel("ERROR")
    if kind == "pipeline":
        result = pipeline(backbone, int(size), int(batch))
    else:
        result = tutorial(backbone, int(size), int(batch), int(rest[0]))
    print(json.dumps(result))

"""The tutorial's way, the other side of bench/bench.py's race: a plain Keras script, as the
notebook does it. Every image resized and preprocessed up front into one numpy array, then
`model.compile` + `model.fit` with a ModelCheckpoint on the best val_accuracy.

    .venv/bin/python bench/tutorial.py EPOCHS BATCH LEARNING_RATE OUT_DIR

VGG16 from random weights, scikit-learn's digits at 32x32, the job's own validation split
(VALIDATION_SPLIT=0.1, SEED=0: the same images are held out). Prints one JSON line per event,
flushed, so that the parent can time each from the process start; nothing is exported.
"""

from __future__ import annotations

import json
import sys
import time

STARTED = time.perf_counter()

import keras  # noqa: E402 - the clock above starts before the imports, as the parent's does
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

SIZE, SEED, VALIDATION_SPLIT = 32, 0, 0.1


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, "seconds": time.perf_counter() - STARTED, **fields}),
          flush=True)


def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val) as float32 arrays ready for VGG16: the job's split
    (trainer.data.splits.random_split) and its preprocessing (gray to RGB, bilinear resize,
    caffe)."""
    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    order = np.random.default_rng(SEED).permutation(len(images))
    held = max(1, int(round(len(images) * VALIDATION_SPLIT)))
    val, train = order[:held], order[held:]

    def prepare(index: np.ndarray) -> np.ndarray:
        rgb = tf.image.grayscale_to_rgb(tf.convert_to_tensor(images[index])[..., tf.newaxis])
        resized = tf.image.resize(rgb, (SIZE, SIZE))
        return np.asarray(keras.applications.vgg16.preprocess_input(resized))

    return prepare(train), bunch.target[train], prepare(val), bunch.target[val]


def main(epochs: int, batch: int, learning_rate: float, out_dir: str) -> None:
    keras.utils.set_random_seed(SEED)
    x_train, y_train, x_val, y_val = digits()
    say("data", train=len(x_train), val=len(x_val))
    inputs = keras.Input((SIZE, SIZE, 3))
    base = keras.applications.VGG16(include_top=False, weights=None, input_tensor=inputs,
                                    pooling="avg")
    outputs = keras.layers.Dense(10, activation="softmax")(base.output)
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(learning_rate), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])  # jit_compile="auto", Keras' default
    say("compiled", jit_compile=bool(model.jit_compile))

    class Epochs(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.began = time.perf_counter()

        def on_train_batch_end(self, index: int, logs: dict | None = None) -> None:
            self.trained = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            say("epoch", epoch=epoch + 1, val_accuracy=float(logs["val_accuracy"]),
                train_seconds=self.trained - self.began,
                images_per_second=len(x_train) / (self.trained - self.began))

    checkpoint = keras.callbacks.ModelCheckpoint(f"{out_dir}/best.h5", monitor="val_accuracy",
                                                 save_best_only=True)
    model.fit(x_train, y_train, batch_size=batch, epochs=epochs, validation_data=(x_val, y_val),
              callbacks=[checkpoint, Epochs()], verbose=0)
    say("done")


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4])

"""In-process figures for bench/bench.py, printed as one JSON line (each run in a fresh process
so that it has TensorFlow to itself):

    .venv/bin/python bench/speed.py pipeline BACKBONE SIZE BATCH
    .venv/bin/python bench/speed.py profile BACKBONE SIZE BATCH
    .venv/bin/python bench/speed.py batchnorm BACKBONE SIZE BATCH
    .venv/bin/python bench/speed.py export MODEL_H5 OUT_DIR
    .venv/bin/python bench/speed.py flops BACKBONE SIZE

`pipeline`: the job's loop fed by the real tf.data pipeline against the same loop fed by one
preprocessed batch already in memory, alternating rounds so that both see the same machine.
`profile`: what the loop spends besides the model's own work: one call of zero steps (the call
and its host sync), seconds per step with STEPS_PER_CALL 1 and 10, one evaluation of the
validation split, how often the train function was traced over epochs; and what this CPU's
matrix multiply reaches in float32 and bfloat16.
`batchnorm`: seconds per step on one device with BatchNormalization synchronized and not.
`export`: trainer.serving.export.export_model of MODEL_H5 one format at a time: seconds to write
each and to check it in a fresh process.
`flops`: multiply-adds of one forward pass, counted layer by layer (bench/flops.py).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import forward_macs  # noqa: E402 - bench/ on the path above

from trainer.data.load import load_dataset  # noqa: E402
from trainer.data.pipeline import (  # noqa: E402
    batch_preprocessor,
    evaluation_input,
    evaluation_steps,
    training_input,
)
from trainer.loop import Loop  # noqa: E402
from trainer.models.classifier import build_model, preprocess_function  # noqa: E402

ROUNDS = 3


def _setup(backbone: str, size: int, batch: int, xla: bool = False) -> tuple:
    data = load_dataset("digits", validation_split=0.1, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model(backbone, "avg", size, len(data.class_names), None)
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)
    loop = Loop(tf.distribute.get_strategy(), model, optimizer, batch, steps_per_call=10,
                xla=xla)
    return data, model, loop, batch_preprocessor(size, preprocess_function(backbone))


def _in_memory(data: object, preprocess: object, batch: int) -> object:
    images = preprocess(data.train.images[:batch])  # type: ignore[attr-defined, operator]
    labels = data.train.labels[:batch]  # type: ignore[attr-defined]

    def synthetic(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    return synthetic


def pipeline(backbone: str, size: int, batch: int) -> dict:
    data, _, loop, preprocess = _setup(backbone, size, batch)
    steps = len(data.train) // batch
    synthetic = _in_memory(data, preprocess, batch)

    def real(epoch: int):  # noqa: ANN202
        return training_input(data.train, size, preprocess, batch, 0, epoch)

    loop.train_epoch(real(0), 10)
    loop.train_epoch(synthetic, 10)
    seconds = {"real": 0.0, "synthetic": 0.0}
    for round_ in range(ROUNDS):
        seconds["real"] += loop.train_epoch(real(round_ + 1), steps).totals.seconds
        seconds["synthetic"] += loop.train_epoch(synthetic, steps).totals.seconds
    rate = {k: ROUNDS * steps * batch / v for k, v in seconds.items()}
    return {"real": rate["real"], "synthetic": rate["synthetic"],
            "ratio": rate["real"] / rate["synthetic"], "images_per_round": steps * batch}


def profile(backbone: str, size: int, batch: int) -> dict:
    data, _, loop, preprocess = _setup(backbone, size, batch)
    steps = len(data.train) // batch
    synthetic = _in_memory(data, preprocess, batch)
    strategy = loop.strategy

    # One call of zero steps: the Python call into the traced function, its empty tf.range and
    # the host sync that reads the sums back, i.e. the cost per call beyond the steps.
    iterator = iter(strategy.distribute_datasets_from_function(synthetic))
    for _ in range(3):
        [float(v) for v in loop._train(iterator, tf.constant(0))]  # noqa: SLF001
    started = time.perf_counter()
    calls = 50
    for _ in range(calls):
        [float(v) for v in loop._train(iterator, tf.constant(0))]  # noqa: SLF001
    empty_call = (time.perf_counter() - started) / calls

    # Seconds per step with one host sync per step and with the job's one per 10 steps.
    loop.train_epoch(synthetic, 10)
    variants = {"steps_per_call=1": 1, "steps_per_call=10": 10}
    seconds = dict.fromkeys(variants, 0.0)
    rounds = 2
    for _ in range(rounds):
        for name, per_call in variants.items():
            loop.steps_per_call = per_call
            seconds[name] += loop.train_epoch(synthetic, steps).totals.seconds
    per_step = {name: value / (rounds * steps) for name, value in seconds.items()}

    # One evaluation of the validation split, as every epoch does.
    evaluation = evaluation_input(data.val, size, preprocess, batch)
    eval_steps = evaluation_steps(data.val, batch)
    loop.evaluate(evaluation, eval_steps)
    started = time.perf_counter()
    loop.evaluate(evaluation, eval_steps)
    evaluation_seconds = time.perf_counter() - started

    # Epochs of the real pipeline: a new iterator each, and a last call shorter than the rest.
    loop.steps_per_call = 10
    for epoch in range(2):
        loop.train_epoch(training_input(data.train, size, preprocess, batch, 0, epoch), 12)
    return {"steps_per_epoch": steps, "batch": batch, "empty_call_seconds": empty_call,
            "seconds_per_step": per_step, "evaluation_seconds": evaluation_seconds,
            "matmul_gflops": _matmul_gflops(),
            "train_traces": loop._train.experimental_get_tracing_count(),  # noqa: SLF001
            "validation_images": len(data.val)}


def batchnorm(backbone: str, size: int, batch: int) -> dict:
    """Seconds per step on this one device with BatchNormalization built synchronized (what
    BATCH_NORM_SYNC=step builds, whatever the replicas) and not (what `save` builds)."""
    data = load_dataset("digits", validation_split=0.1, seed=0)
    preprocess = batch_preprocessor(size, preprocess_function(backbone))
    synthetic = _in_memory(data, preprocess, batch)
    steps = len(data.train) // batch
    loops = {}
    for synchronized in (True, False):
        keras.utils.set_random_seed(0)
        model = build_model(backbone, "avg", size, len(data.class_names), None, synchronized)
        optimizer = keras.optimizers.Adam(1e-3)
        optimizer.build(model.trainable_variables)
        loops[synchronized] = Loop(tf.distribute.get_strategy(), model, optimizer, batch)
        loops[synchronized].train_epoch(synthetic, 10)
    seconds = dict.fromkeys(loops, 0.0)
    for _ in range(ROUNDS):
        for synchronized, loop in loops.items():
            seconds[synchronized] += loop.train_epoch(synthetic, steps).totals.seconds
    return {"synchronized": seconds[True] / (ROUNDS * steps),
            "own": seconds[False] / (ROUNDS * steps), "steps": ROUNDS * steps}


def _matmul_gflops(side: int = 2048, repeats: int = 10) -> dict:
    """What this CPU's matrix multiply reaches, float32 and bfloat16 (GFLOP/s)."""
    rates = {}
    for dtype in (tf.float32, tf.bfloat16):
        a = tf.cast(tf.random.normal((side, side)), dtype)

        @tf.function
        def chain(x: tf.Tensor) -> tf.Tensor:
            for _ in range(repeats):
                x = tf.matmul(x, a) * tf.cast(1.0 / side, dtype)  # noqa: B023 - traced here
            return x

        chain(a).numpy()
        started = time.perf_counter()
        chain(a).numpy()
        rates[dtype.name] = repeats * 2 * side**3 / (time.perf_counter() - started) / 1e9
    return rates


def export(model_h5: str, out_dir: str) -> dict:
    from trainer.serving.export import export_model

    reference = load_dataset("digits", validation_split=0.1, seed=0).val.images[:64]
    results = {}
    for kind in ("savedmodel", "onnx", "litert"):
        started = time.perf_counter()
        result = export_model(Path(model_h5), Path(out_dir) / kind, [kind],
                              reference_images=reference)[kind]
        folder = Path(out_dir) / kind
        results[kind] = {
            "status": result["status"], "error": result.get("error"),
            "seconds": result["seconds"], "check_seconds": result.get("check_seconds"),
            "call_seconds": time.perf_counter() - started,
            "max_abs_difference": result["max_abs_difference"],
            "megabytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()
                             and p.name != "labels.txt") / 1e6}
    return {"model_megabytes": Path(model_h5).stat().st_size / 1e6, "formats": results}


def flops(backbone: str, size: int) -> dict:
    model = build_model(backbone, "avg", size, 1000, None)
    return {"backbone": backbone, "size": size, "forward_macs": forward_macs(model),
            "parameters": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
            "variables": len(model.trainable_variables),
            "batch_norm_layers": sum(isinstance(layer, keras.layers.BatchNormalization)
                                     for layer in model.layers)}


if __name__ == "__main__":
    kind, *args = sys.argv[1:]
    tf.get_logger().setLevel("ERROR")
    if kind == "pipeline":
        result = pipeline(args[0], int(args[1]), int(args[2]))
    elif kind == "profile":
        result = profile(args[0], int(args[1]), int(args[2]))
    elif kind == "batchnorm":
        result = batchnorm(args[0], int(args[1]), int(args[2]))
    elif kind == "export":
        result = export(args[0], args[1])
    else:
        result = flops(args[0], int(args[1]))
    print(json.dumps(result))

"""Benchmarks, written to BENCHMARKS.md as ratios of runs made side by side on this machine.

    make bench          # or: .venv/bin/python bench/bench.py   (about 20 minutes on 2 cores)

1. pipeline efficiency: the job's loop on the real tf.data pipeline over the same loop on
   batches already in memory (bench/speed.py pipeline);
2. the job's loop against the tutorial's `model.fit` on numpy arrays: images per second, and
   seconds to the same validation accuracy (bench/speed.py tutorial);
3. upload overhead: the same job into S3 on loopback (moto_server) over a local folder;
4. seconds from process start to the first training steps, and peak memory, of those jobs;
5. transfer: a backbone pre-trained on digits 0-4, frozen then fine-tuned on digits 5-9, against
   the same budget from random weights.
The GPU section comes from bench/gpu.sh on a GPU machine.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SPEED = {"backbone": "MobileNetV2", "size": 32, "batch": 32, "epochs": 6}
JOB = {"BACKBONE": "VGG16", "WEIGHTS": "none", "IMAGE_SIZE": "32", "EPOCHS": "3",
       "BATCH_SIZE": "32", "LEARNING_RATE": "1e-4", "LOG_FORMAT": "json", "STEPS_PER_CALL": "10"}


def _digits(path: Path, classes: range = range(10), limit: int | None = None,
            train_per_class: int | None = None) -> Path:
    """digits of `classes` labelled from 0 (the first `limit`); with `train_per_class`, that
    many training images per class and the rest as the test split."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * 255 / 16).astype(np.uint8)
    labels = (digits.target - classes.start).astype(np.int64)
    if train_per_class is None:
        keep = np.flatnonzero(np.isin(digits.target, list(classes)))[:limit]
        np.savez(path, x_train=images[keep], y_train=labels[keep])
        return path
    rng = np.random.default_rng(0)
    indices = [rng.permutation(np.flatnonzero(digits.target == c)) for c in classes]
    train = np.concatenate([i[:train_per_class] for i in indices])
    test = np.concatenate([i[train_per_class:] for i in indices])
    np.savez(path, x_train=images[train], y_train=labels[train], x_test=images[test],
             y_test=labels[test])
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _speed(kind: str, *args: object) -> dict:
    result = subprocess.run([sys.executable, str(REPO / "bench" / "speed.py"), kind,
                             *map(str, args)], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    if result.returncode != 0:
        raise SystemExit(f"bench/speed.py {kind} failed: {result.stderr[-3000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def _run(env: dict[str, str]) -> dict:
    """The real entrypoint; wall time, time to the first training steps, peak memory."""
    started = time.monotonic()
    process = subprocess.Popen([sys.executable, str(REPO / "entrypoint.py")], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               cwd=REPO)
    rows, first_steps = [], None
    for line in process.stdout:
        if line.startswith("{"):
            rows.append(json.loads(line))
            if rows[-1]["message"] == "first training steps done" and first_steps is None:
                first_steps = time.monotonic() - started
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    if process.returncode != 0:
        raise SystemExit(f"benchmark run failed: {process.stderr.read()[-3000:]}")
    epochs = [r for r in rows if "images_per_second" in r]
    return {"wall": wall, "train": sum(r["seconds"] for r in epochs),
            "first_steps": first_steps, "peak_mb": usage.ru_maxrss / 1024,
            "images_per_second": float(np.mean([r["images_per_second"] for r in epochs[1:]])),
            "val_accuracy": epochs[-1]["val_accuracy"]}


def upload_overhead(work: Path) -> dict:
    import boto3

    port = _free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H",
                               "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        time.sleep(3)
        credentials = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"}
        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                     aws_access_key_id="bench", aws_secret_access_key="bench-secret"
                     ).create_bucket(Bucket="bench")
        base = {**os.environ, **JOB, "DATASET": str(_digits(work / "digits.npz", limit=640)),
                "WORK_DIR": str(work)}
        local = _run({**base, "ARTIFACT_URI": str(work / "local"), "RUN_ID": "local"})
        remote = _run({**base, **credentials, "ARTIFACT_URI": "s3://bench/runs", "RUN_ID": "s3",
                       "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "S3_ADDRESSING_STYLE": "path"})
    finally:
        server.terminate()
    return {"local": local, "s3": remote, "train_ratio": remote["train"] / local["train"],
            "wall_ratio": remote["wall"] / local["wall"]}


def transfer(work: Path) -> dict:
    """The transfer test's protocol (tests/test_recipe.py), with a longer pre-training."""
    base = {**os.environ, **JOB, "ARTIFACT_URI": str(work / "transfer"), "WORK_DIR": str(work),
            "AUGMENT": "none", "BATCH_SIZE": "16", "SEED": "1"}
    source = _digits(work / "source.npz", range(0, 5))
    target = _digits(work / "target.npz", range(5, 10), train_per_class=30)
    pretrain = _run({**base, "DATASET": str(source), "RUN_ID": "source", "EPOCHS": "4",
                     "BATCH_SIZE": "32", "VALIDATION_SPLIT": "0.25"})
    weights = str(work / "transfer" / "source" / "best.h5")
    transferred = _run({**base, "DATASET": str(target), "RUN_ID": "transfer", "WEIGHTS": weights,
                        "EPOCHS": "1", "FINE_TUNE_EPOCHS": "1", "LEARNING_RATE": "1e-2",
                        "FINE_TUNE_LEARNING_RATE": "1e-4"})
    scratch = _run({**base, "DATASET": str(target), "RUN_ID": "scratch", "EPOCHS": "2"})
    return {"source": pretrain, "transfer": transferred, "scratch": scratch}


def _to_accuracy(epochs: list[dict], target: float) -> float | None:
    return next((e["elapsed"] for e in epochs if e["val_accuracy"] >= target), None)


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.1f}"


def main() -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        pipeline = _speed("pipeline", SPEED["backbone"], SPEED["size"], SPEED["batch"])
        race = _speed("tutorial", SPEED["backbone"], SPEED["size"], SPEED["batch"],
                      SPEED["epochs"])
        upload = upload_overhead(work)
        proof = transfer(work)
    ours, theirs = race["ours"], race["theirs"]
    ours_rate = float(np.mean([e["images_per_second"] for e in ours[1:]]))
    theirs_rate = float(np.mean([e["images_per_second"] for e in theirs[1:]]))
    target = round(0.95 * min(max(e["val_accuracy"] for e in ours),
                              max(e["val_accuracy"] for e in theirs)), 3)
    ours_time, theirs_time = _to_accuracy(ours, target), _to_accuracy(theirs, target)
    cpu = next((line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    import tensorflow as tf

    job = ", ".join(f"{k}={v}" for k, v in JOB.items() if k != "LOG_FORMAT")
    speed = f"{SPEED['backbone']} at {SPEED['size']}x{SPEED['size']}, batch {SPEED['batch']}"
    epochs_table = "\n".join(
        f"| {a['epoch']} | {a['val_accuracy']:.3f} | {a['elapsed']:.1f} | {b['val_accuracy']:.3f}"
        f" | {b['elapsed']:.1f} |" for a, b in zip(ours, theirs, strict=True))
    rows = {name: proof[name] for name in ("transfer", "scratch")}
    text = f"""# Benchmarks

Made by `make bench` (`bench/bench.py`, {time.monotonic() - started:.0f} s) on
{time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores ({cpu}), no GPU, Python
{platform.python_version()}, TensorFlow {tf.__version__} (CPU). Each ratio compares two
measurements made one after the other in the same invocation. Images are scikit-learn's
`digits` (8x8 grayscale, offline), resized in the pipeline.

## 1. Pipeline efficiency (target >= 0.95)

The job's loop ({speed}, STEPS_PER_CALL=10) fed by the real tf.data pipeline (shuffle, resize,
preprocess, prefetch) against the same loop fed by one preprocessed batch already in memory,
{pipeline['images_per_round']} images per round, 3 rounds each, alternating.

| real pipeline, images/s | in-memory tensors, images/s | ratio |
|---|---|---|
| {pipeline['real']:.1f} | {pipeline['synthetic']:.1f} | **{pipeline['ratio']:.3f}** |

## 2. Against the tutorial's `model.fit` (target >= 1.3 on this CPU)

Same backbone, size, batch ({speed}), Adam 1e-3, seed, random initial weights, {SPEED['epochs']}
epochs on {race['train_images']} training images. The tutorial's way: every image resized and
preprocessed up front into one numpy array, then `model.compile` + `model.fit` (Keras'
defaults). Images per second exclude each side's first epoch (tracing).

| | the job's loop | `model.fit` on numpy | ratio |
|---|---|---|---|
| training images/s | {ours_rate:.1f} | {theirs_rate:.1f} | **{ours_rate / theirs_rate:.2f}** |
| seconds to val_accuracy >= {target} (95% of the lower best) | {_seconds(ours_time)} | {_seconds(theirs_time)} | {(ours_time / theirs_time) if ours_time and theirs_time else float('nan'):.2f} |

| epoch | ours val_accuracy | ours elapsed s | fit val_accuracy | fit elapsed s |
|---|---|---|---|---|
{epochs_table}

## 3. Upload overhead (target <= 1.03)

The job ({job}, 640 `digits` images) into a local folder, then into `moto_server` on loopback.
Each epoch uploads `best.h5` when it improves, the resume state (model and Adam slots) and the
history, in the background.

| | local folder | S3 on loopback | ratio S3 / local |
|---|---|---|---|
| training seconds (sum of epochs) | {upload['local']['train']:.1f} | {upload['s3']['train']:.1f} | **{upload['train_ratio']:.3f}** |
| wall seconds (process start to exit) | {upload['local']['wall']:.1f} | {upload['s3']['wall']:.1f} | {upload['wall_ratio']:.3f} |
| images per second (epochs after the first) | {upload['local']['images_per_second']:.1f} | {upload['s3']['images_per_second']:.1f} | {upload['s3']['images_per_second'] / upload['local']['images_per_second']:.3f} |

## 4. Start-up and memory

The same two jobs: seconds from process start to the log line `first training steps done`
(imports, data, model, tracing, the first {JOB['STEPS_PER_CALL']} steps), and peak resident
memory of the process.

| | local folder | S3 on loopback |
|---|---|---|
| seconds to the first training steps | {upload['local']['first_steps']:.1f} | {upload['s3']['first_steps']:.1f} |
| peak memory, MB | {upload['local']['peak_mb']:.0f} | {upload['s3']['peak_mb']:.0f} |

## 5. Transfer learning, offline

VGG16 at 32x32 trained from random weights on all of digits 0-4 (4 epochs, val_accuracy
{proof['source']['val_accuracy']:.3f}); its `best.h5` is then `WEIGHTS` for digits 5-9 with 30
training images per class (batch 16): 1 epoch of the head alone (backbone frozen,
LEARNING_RATE=1e-2) and 1 of fine-tuning (FINE_TUNE_LEARNING_RATE=1e-4), against 2 epochs from
random weights (LEARNING_RATE=1e-4). Accuracy on the other ~750 images of digits 5-9.

| digits 5-9, 2 epochs | val_accuracy | training seconds |
|---|---|---|
| from the digits 0-4 backbone | **{rows['transfer']['val_accuracy']:.3f}** | {rows['transfer']['train']:.1f} |
| from random weights | {rows['scratch']['val_accuracy']:.3f} | {rows['scratch']['train']:.1f} |

## GPU

Not measured: this machine has no GPU. On a machine with NVIDIA GPUs, `bash bench/gpu.sh`
(about 3 minutes) prints ResNet50 at 224x224, bfloat16 and XLA: images per second per GPU and
the fraction of the GPU's bfloat16 peak; paste its table here.
"""
    (REPO / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

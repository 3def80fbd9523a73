"""Benchmarks, written to BENCHMARKS.md as ratios of runs made side by side on this machine.

    make bench          # or: .venv/bin/python bench/bench.py

So far: the upload overhead, i.e. the same training job with ARTIFACT_URI on an S3 server on
loopback (moto_server) against a local folder. Uploads run in the background, so the training
time should not change (target: ratio <= 1.03).
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
JOB = {"BACKBONE": "VGG16", "WEIGHTS": "none", "IMAGE_SIZE": "32", "EPOCHS": "3",
       "BATCH_SIZE": "32", "LEARNING_RATE": "1e-4", "LOG_FORMAT": "json", "STEPS_PER_CALL": "10"}


def _dataset(folder: Path, images: int = 640) -> Path:
    from sklearn.datasets import load_digits

    digits = load_digits()
    path = folder / "digits.npz"
    np.savez(path, x_train=np.round(digits.images[:images] * 255 / 16).astype(np.uint8),
             y_train=digits.target[:images])
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(env: dict[str, str]) -> dict[str, float]:
    started = time.monotonic()
    result = subprocess.run([sys.executable, str(REPO / "entrypoint.py")], env=env,
                            capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"benchmark run failed: {result.stderr}")
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    epochs = [r for r in rows if "images_per_second" in r]
    return {"wall": wall, "train": sum(r["seconds"] for r in epochs),
            "images_per_second": float(np.mean([r["images_per_second"] for r in epochs[1:]]))}


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
        base = {**os.environ, **JOB, "DATASET": str(_dataset(work)), "WORK_DIR": str(work)}
        local = _run({**base, "ARTIFACT_URI": str(work / "local"), "RUN_ID": "local"})
        remote = _run({**base, **credentials, "ARTIFACT_URI": "s3://bench/runs", "RUN_ID": "s3",
                       "S3_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                       "S3_ADDRESSING_STYLE": "path"})
    finally:
        server.terminate()
    return {"local": local, "s3": remote, "train_ratio": remote["train"] / local["train"],
            "wall_ratio": remote["wall"] / local["wall"]}


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        upload = upload_overhead(Path(folder))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    text = f"""# Benchmarks

Made by `make bench` (`bench/bench.py`) on {time.strftime('%Y-%m-%d')}: {os.cpu_count()} cores
({cpu}), {platform.python_version()}, CPU TensorFlow. Each figure is a ratio of two runs made one
after the other in the same invocation.

## Upload overhead (target <= 1.03)

The same job ({', '.join(f'{k}={v}' for k, v in JOB.items() if k != 'LOG_FORMAT')}, 640
`digits` images) into a local folder, then into `moto_server` on loopback. Each epoch uploads
`best.h5` when it improves (59 MB), the resume state (about 180 MB: model and Adam slots) and the
history, in the background.

| | local folder | S3 on loopback | ratio S3 / local |
|---|---|---|---|
| training seconds (sum of epochs) | {upload['local']['train']:.1f} | {upload['s3']['train']:.1f} | **{upload['train_ratio']:.3f}** |
| wall seconds (process start to exit) | {upload['local']['wall']:.1f} | {upload['s3']['wall']:.1f} | {upload['wall_ratio']:.3f} |
| images per second (epochs after the first) | {upload['local']['images_per_second']:.1f} | {upload['s3']['images_per_second']:.1f} | {upload['s3']['images_per_second'] / upload['local']['images_per_second']:.3f} |

## Not measured yet

Pipeline efficiency against synthetic in-memory tensors, throughput against the tutorial's
`model.fit`, time to first step and peak memory, and the GPU section (issue "5 of 6") are not
implemented; there is no `bench/gpu.sh` yet.
"""
    (REPO / "BENCHMARKS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

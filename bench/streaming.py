"""Shards streamed from S3 against the same shards on local disk, and the disk a stream uses.

    .venv/bin/python bench/streaming.py          # about 2 minutes on 2 cores; one JSON line

scikit-learn's digits (1,797 images, 8x8, as PNG, twice) in 40 WebDataset shards are
trained on by the job's loop (MobileNetV2 at 32x32, batch 32, STEPS_PER_CALL 10), fed by the job's
pipeline (`trainer.data.pipeline.training_input`) from a local folder and from an rclone S3
server on loopback (the same process and cores as the training), round after round alternately,
each round one epoch of its own order. `ratio` is the images per second from S3 over those from
local disk. DATA_CACHE_BYTES is a tenth of the dataset; a thread samples the bytes under the
cache's folder every 2 ms while the S3 rounds run (`peak_disk_bytes`), beside the cache's own
high-water mark (`cache_peak_bytes`). `bench/bench.py` calls it for BENCHMARKS.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import shutil
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from s3_prefix import KEY, SECRET, _start  # noqa: E402 - bench/ on the path above

from trainer.data.counting import count_records  # noqa: E402
from trainer.data.load import load_dataset, remote_dataset  # noqa: E402
from trainer.data.pipeline import batch_preprocessor, training_input  # noqa: E402
from trainer.data.shard_downloads import _caches  # noqa: E402
from trainer.data.tfrecords import Remote  # noqa: E402
from trainer.loop import Loop  # noqa: E402
from trainer.models.classifier import build_model, preprocess_function  # noqa: E402
from trainer.store.s3 import client_config  # noqa: E402

SHARDS, COPIES, ROUNDS, BATCH, SIZE = 40, 2, 3, 32, 32
BACKBONE = "MobileNetV2"  # bench/speed.py's pipeline figure: a fast model, a pipeline to keep up


def _write_shards(folder: Path) -> int:
    """The digits as PNGs in SHARDS WebDataset tars; returns their bytes."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    folder.mkdir(parents=True)
    tars = [tarfile.open(folder / f"train-{s:04d}.tar", "w")  # noqa: SIM115 - closed below
            for s in range(SHARDS)]
    for i in range(COPIES * len(images)):
        png = io.BytesIO()
        Image.fromarray(images[i % len(images)]).save(png, format="PNG")
        for name, data in ((f"{i:06d}.png", png.getvalue()),
                           (f"{i:06d}.cls", str(digits.target[i % len(images)]).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tars[i % SHARDS].addfile(info, io.BytesIO(data))
    for tar in tars:
        tar.close()
    return sum(p.stat().st_size for p in folder.iterdir())


class _Disk:
    """The most bytes seen under `folder`, sampled every 2 ms from a thread."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.peak, self.done = folder, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            total = 0
            for top, _, files in os.walk(self.folder):
                for name in files:
                    with contextlib.suppress(FileNotFoundError):
                        total += os.stat(os.path.join(top, name)).st_size
            self.peak = max(self.peak, total)
            time.sleep(0.002)

    def stop(self) -> int:
        self.done.set()
        self.thread.join()
        return self.peak


def measure() -> dict:
    work = Path(tempfile.mkdtemp(prefix="bench-streaming-"))
    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    os.environ.update(env)
    server, endpoint = _start("rclone", work / "s3")
    try:
        total = _write_shards(work / "local")
        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, config=client_config(endpoint, "path"))
        client.create_bucket(Bucket="bench")
        for path in sorted((work / "local").iterdir()):
            client.upload_file(str(path), "bench", f"set/{path.name}")
        cache = total // 10
        remote = Remote(endpoint, "path", str(work / "cache"), cache, 300)
        splits = {
            "local": count_records(load_dataset(str(work / "local"), validation_split=0.1,
                                                seed=0)).train,
            "s3": count_records(remote_dataset("s3://bench/set", remote, validation_split=0.1,
                                               seed=0)).train}
        keras.utils.set_random_seed(0)
        model = build_model(BACKBONE, "avg", SIZE, 10, None)
        optimizer = keras.optimizers.Adam(1e-4)
        optimizer.build(model.trainable_variables)
        loop = Loop(tf.distribute.get_strategy(), model, optimizer, BATCH, steps_per_call=10)
        preprocess = batch_preprocessor(SIZE, preprocess_function(BACKBONE))
        steps = len(splits["local"]) // BATCH

        def epoch(name: str, number: int) -> float:
            return loop.train_epoch(training_input(splits[name], SIZE, preprocess, BATCH, 0,
                                                   number), steps).totals.seconds

        epoch("local", 0)  # traced, warmed up
        seconds = {"local": 0.0, "s3": 0.0}
        disk = _Disk(work / "cache")
        for round_ in range(ROUNDS):
            for name in ("local", "s3"):
                seconds[name] += epoch(name, round_ + 1)
        peak_disk = disk.stop()
        stream_cache = next(iter(_caches.values()))
        rate = {name: ROUNDS * steps * BATCH / value for name, value in seconds.items()}
        return {"images_per_second_local": round(rate["local"], 1),
                "images_per_second_s3": round(rate["s3"], 1),
                "ratio": round(rate["s3"] / rate["local"], 3), "rounds": ROUNDS,
                "images_per_round": steps * BATCH, "shards": SHARDS, "dataset_bytes": total,
                "cache_bytes": cache, "peak_disk_bytes": peak_disk,
                "cache_peak_bytes": stream_cache.peak,
                "shards_streamed": len(stream_cache.fetched),
                "dataset_over_cache": round(total / cache, 1),
                "cpu": platform.processor() or platform.machine()}
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(json.dumps(measure()), flush=True)

"""Streamed shards in the tf.data pipelines: every example once per epoch across workers, a
resumed epoch that starts where it stopped without reading what came before (on a fresh disk),
broken samples left out and named, a failing reader ending the run with its own error; and real
runs of two workers streaming WebDataset and Parquet shards from S3 on loopback."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    TINY_JOB,
    DiskSampler,
    Job,
    S3Server,
    clean_environ,
    free_ports,
    trainer_in_process,
    upload_folder,
    write_hf_parquet,
    write_webdataset,
)
from faults import FaultProxy

from trainer.data.bad_images import apply_bad_images_policy
from trainer.data.counting import count_records
from trainer.data.decode_failures import take_decode_failures
from trainer.data.load import Dataset, load_dataset, remote_dataset
from trainer.data.pipeline import (
    batch_preprocessor,
    evaluation_input,
    evaluation_steps,
    training_input,
)
from trainer.data.shard_downloads import _caches
from trainer.data.sources import local_count
from trainer.data.stream_failures import stream_failures_raised
from trainer.data.streaming import plan, stream
from trainer.data.tfrecords import Remote
from trainer.errors import DataError
from trainer.reports.evaluation import every_example

CONTEXT = tf.distribute.InputContext()


def _identity(images: tf.Tensor) -> tf.Tensor:
    return images


def _names(split, worker: int, workers: int, order_seed: int | None) -> list[str]:  # noqa: ANN001
    return [name.decode() for _, _, name in stream(split, worker, workers, order_seed,
                                                   buffer=7).as_numpy_iterator()]


def test_each_epoch_visits_every_example_once_across_workers(tmp_path: Path) -> None:
    write_webdataset(tmp_path / "five", list(range(3)) * 21, shards=5)  # uneven shards
    data = count_records(load_dataset(str(tmp_path / "five"), validation_split=0.2, seed=0))
    everything = set(_names(data.train, 0, 1, None))
    assert len(everything) == len(data.train) and len(data.train) + len(data.val) == 63
    for workers in (2, 3, 7):  # 7 workers, 5 shards: each its share of every shard's samples
        shares = [_names(data.train, w, workers, 11) for w in range(workers)]
        assert sorted(n for share in shares for n in share) == sorted(everything)
        assert all(shares)
    assert len(_names(data.train, 0, 1, 11)) == local_count(data.train, 0, 1)
    assert _names(data.train, 0, 2, 11) == _names(data.train, 0, 2, 11)  # seeded
    assert _names(data.train, 0, 2, 11) != _names(data.train, 0, 2, 12)  # each epoch its own
    held = set(_names(data.val, 0, 1, None))
    assert not held & everything and len(held) == len(data.val)


def test_a_resumed_epoch_starts_at_its_window_on_a_fresh_disk(rclone_server: S3Server,
                                                             tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """A restart on a new node: nothing cached, the shards before the resume point never
    downloaded, and the batches the ones the epoch would have gone on with."""
    write_webdataset(tmp_path / "set", list(range(4)) * 60, shards=6, side=8)
    bucket = rclone_server.new_bucket()
    upload_folder(rclone_server.client(), bucket, tmp_path / "set", "set")
    for name, value in rclone_server.env().items():
        monkeypatch.setenv(name, value)

    def counted(cache: str) -> Dataset:
        remote = Remote(rclone_server.endpoint, "path", str(tmp_path / cache), 2**20, 30)
        return count_records(remote_dataset(f"s3://{bucket}/set", remote,
                                            validation_split=0.1, seed=0))

    def batches(data, skip_steps: int, count: int) -> list:  # noqa: ANN001
        fn = training_input(data.train, 8, batch_preprocessor(8, _identity), 20, 5, 2,
                            skip_steps=skip_steps, budget=1)  # windows of 64 examples
        return [(x.numpy(), y.numpy()) for x, y in fn(CONTEXT).take(count)]

    whole = batches(counted("first-node"), 0, 8)
    data = counted("new-node")
    resumed = batches(data, 4, 4)  # 80 examples in: the window from 64 on
    cache = _caches[str(tmp_path / "new-node" / bucket)]
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(whole[4:], resumed, strict=True))
    order = [Path(data.train.files[i]).name for i, _ in plan(data.train, 0, 1, 5 * 100_003 + 2)]
    streamed = [Path(key).name for key in cache.fetched]
    assert streamed[0] == order[1]
    assert order[0] not in streamed[:len(order) - 1]  # only the next pass may want it again
    assert cache.peak <= 2**20


def test_broken_samples_are_left_out_and_named(tmp_path: Path) -> None:
    (first, _) = write_webdataset(tmp_path / "set", [0, 1] * 10, shards=2)
    with tarfile.open(first) as tar:
        good = tar.extractfile("s00000.png").read()
    with tarfile.open(first, "a") as tar:
        for name, content in (("broken.png", b"\x89PNG\r\n\x1a\n" + bytes(40)),
                              ("broken.cls", b"1"), ("unlabelled.png", good)):
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    data = count_records(load_dataset(str(tmp_path / "set"), validation_split=0.25, seed=0))
    take_decode_failures()
    every = evaluation_input(every_example(data), 12, batch_preprocessor(12, _identity), 4)
    weights = np.concatenate([w for _, _, w in every(CONTEXT).as_numpy_iterator()])
    assert weights.sum() == 20  # the 22 samples counted, 2 left out
    named = take_decode_failures()
    assert set(named) == {"train-0000.tar#broken", "train-0000.tar#unlabelled"}
    with pytest.raises(DataError, match="2 image.s. failed to decode: train-0000.tar#"):
        apply_bad_images_policy(named, "fail")


def test_a_shard_gone_from_the_store_ends_the_run_with_its_own_error(
        rclone_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_webdataset(tmp_path / "set", [0, 1] * 8, shards=2)
    bucket, client = rclone_server.new_bucket(), rclone_server.client()
    upload_folder(client, bucket, tmp_path / "set", "set")
    for name, value in rclone_server.env().items():
        monkeypatch.setenv(name, value)
    remote = Remote(rclone_server.endpoint, "path", str(tmp_path / "cache"), 2**20, 30)
    data = count_records(remote_dataset(f"s3://{bucket}/set", remote, validation_split=0.25,
                                        seed=0))
    client.delete_object(Bucket=bucket, Key="set/train-0001.tar")
    fn = evaluation_input(data.val, 12, batch_preprocessor(12, _identity), 4)
    with pytest.raises(DataError, match=r"s3://.*/set/train-0001.tar is gone from the store"), \
            stream_failures_raised():
        for _ in fn(CONTEXT):
            pass
    assert evaluation_steps(data.val, 4) >= 1


# --- Real runs: two workers on loopback, the shards in S3 ---------------------------------------


def _workers(env_of) -> list[Job]:  # noqa: ANN001
    """Two entrypoints as one cluster on loopback, worker i with the environment env_of(i)."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    return [Job({**env_of(i), "TF_CONFIG": json.dumps({
        "cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})})
        for i in range(2)]


def _shards_read(job: Job) -> set[str]:
    """The shards a worker downloaded (its DEBUG lines)."""
    return {Path(r["shard"]).name for r in job.lines
            if r["message"].startswith("streamed DATASET shard")}


def _wait_until(found: Callable[[], object], jobs: list[Job], what: str) -> object:
    """What `found` returns once it is something, the workers still running meanwhile."""
    deadline = time.monotonic() + 120
    while not (value := found()):
        for job in jobs:
            assert job.process.poll() is None, job.process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"no {what} within 120 s"
        time.sleep(0.05)
    return value


def test_two_workers_stream_webdataset_from_s3_through_an_outage(
        rclone_server: S3Server, fault_proxies: Callable[[str], FaultProxy],
        tmp_path: Path) -> None:
    """300 images in 8 shards, 3 times the cache: each worker downloads its own training shards
    as it trains, never more on disk than DATA_CACHE_BYTES, and storage that stops answering
    mid-run is waited out: a worker that needs a shard meanwhile retries, then trains on (the
    cache's own patience past botocore's retries: tests/data/test_shard_cache.py)."""
    write_webdataset(tmp_path / "set", [0, 1, 2] * 100, shards=8)
    write_webdataset(tmp_path / "set", [0, 1, 2] * 12, shards=2, prefix="val", seed=1)
    bucket = rclone_server.new_bucket()
    total = upload_folder(rclone_server.client(), bucket, tmp_path / "set", "wds")
    proxy = fault_proxies(rclone_server.endpoint)
    cache = total // 3
    works = [tmp_path / f"work-{i}" for i in range(2)]
    jobs = _workers(lambda i: clean_environ(
        TINY_JOB, rclone_server.env(), S3_ENDPOINT_URL=proxy.endpoint,
        DATASET=f"s3://{bucket}/wds", RUN_ID="streamed", ARTIFACT_URI=str(tmp_path / "runs"),
        BATCH_SIZE="16", STEPS_PER_CALL="2", DATA_CACHE_BYTES=str(cache), LOG_LEVEL="DEBUG",
        WORK_DIR=str(works[i])))
    disk = DiskSampler(*(work / "stream-cache" for work in works))
    jobs[0].wait_for("first training steps done")
    proxy.set("reset", after=0)  # every connection cut, the open ones too
    before = [len(job.lines) for job in jobs]  # what was logged before the cut took effect

    def waiting() -> tuple[Job, int] | None:  # a worker's reader needs a shard it lacks
        return next(((job, i) for job, start in zip(jobs, before, strict=True)
                     for i, r in enumerate(job.lines[start:], start)
                     if r["message"].startswith("waiting for DATASET shard")), None)

    blocked, waited = _wait_until(waiting, jobs, "worker waiting for a shard")
    resets = proxy.resets
    _wait_until(lambda: proxy.resets >= resets + 2, jobs, "download retried")  # in the outage
    proxy.set("pass")
    for job in jobs:
        code, stderr = job.finish()
        assert code == 0, stderr[-3000:]
    peak = disk.stop()
    assert all(job.trained_epochs() == [1, 2] for job in jobs)
    assert any(r["message"].startswith("epoch 2/") for r in blocked.lines[waited:])  # trained on
    assert len({job.field("weights_sha256") for job in jobs}) == 1
    assert 0 < peak <= cache
    logged = [r for job in jobs for r in job.lines if "data_cache_peak_bytes" in r]
    assert logged and all(0 < r["data_cache_peak_bytes"] <= cache for r in logged)
    train = [{name for name in _shards_read(job) if name.startswith("train")} for job in jobs]
    assert train == [{f"train-{i:04d}.tar" for i in range(w, 8, 2)} for w in (0, 1)]
    config = json.loads((tmp_path / "runs" / "streamed" / "config.json").read_text())
    assert (config["train_examples"], config["validation_examples"]) == (300, 36)


def test_two_workers_stream_a_hugging_face_parquet_dataset(moto_s3: S3Server,
                                                           tmp_path: Path) -> None:
    """The Hub's layout (data/train-*.parquet, data/test-*.parquet, class names in the files'
    metadata), twice the cache: each worker its own shards, the class names in config.json;
    `trainer evaluate` streams the same prefix with the DATA_CACHE_BYTES it is given."""
    names = ["cat", "dog", "eel"]
    write_hf_parquet(tmp_path / "hub" / "data", [0, 1, 2] * 100, shards=6, names=names)
    write_hf_parquet(tmp_path / "hub" / "data", [0, 1, 2] * 10, shards=1, names=names,
                     prefix="test", seed=1)
    bucket = moto_s3.new_bucket()
    total = upload_folder(moto_s3.client(), bucket, tmp_path / "hub", "hub")
    cache = total // 2
    works = [tmp_path / f"work-{i}" for i in range(2)]
    jobs = _workers(lambda i: clean_environ(
        TINY_JOB, moto_s3.env(), DATASET=f"s3://{bucket}/hub", RUN_ID="hub", EPOCHS="1",
        ARTIFACT_URI=str(tmp_path / "runs"), DATA_CACHE_BYTES=str(cache), LOG_LEVEL="DEBUG",
        WORK_DIR=str(works[i])))
    disk = DiskSampler(*(work / "stream-cache" for work in works))
    for job in jobs:
        code, stderr = job.finish()
        assert code == 0, stderr[-3000:]
    assert 0 < disk.stop() <= cache
    shards = [f"train-{i:05d}-of-00006.parquet" for i in range(6)]
    train = [{name for name in _shards_read(job) if name.startswith("train")} for job in jobs]
    assert train == [set(shards[0::2]), set(shards[1::2])]
    config = json.loads((tmp_path / "runs" / "hub" / "config.json").read_text())
    assert config["class_names"] == names
    assert (config["train_examples"], config["validation_examples"]) == (300, 30)
    metrics = json.loads((tmp_path / "runs" / "hub" / "metrics.json").read_text())
    assert metrics["examples"] == 30  # the chief evaluates the whole test split

    def evaluate(*flags: str) -> subprocess.CompletedProcess:
        return trainer_in_process(
            "evaluate", "hub", f"s3://{bucket}/hub", "--artifact-uri", str(tmp_path / "runs"),
            "--to", str(tmp_path / "eval"), "--work-dir", str(tmp_path / "eval-work"), *flags,
            env=clean_environ(moto_s3.env()))

    refused = evaluate("--data-cache-bytes", "1000")  # the setting is the user's, not a default
    assert refused.returncode == 2 and "DATA_CACHE_BYTES=1000 cannot hold the shard" in \
        refused.stderr
    evaluated = evaluate("--data-cache-bytes", str(cache))
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert again["confusion_matrix"] == metrics["confusion_matrix"]

"""Streamed shards in the tf.data pipelines: every example once per epoch across workers, a
resumed epoch that starts where it stopped without reading what came before (on a fresh disk),
broken samples left out and named, a failing reader ending the run with its own error; and real
runs of two workers streaming WebDataset and Parquet shards from S3 on loopback."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    S3Server,
    upload_folder,
    write_webdataset,
)

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
from trainer.data.shard_cache import _caches, stream_failures_raised
from trainer.data.sources import local_count
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

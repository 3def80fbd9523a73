"""TFRecords streamed after the strategy exists: layout, sharding by file (or by record), the
held-out split, counting, and a real run with two replicas (two workers streaming shards from S3:
tests/data/test_streaming.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    TINY_JOB,
    S3Server,
    clean_environ,
    json_lines,
    run_entrypoint,
    upload_folder,
)

from trainer.data.counting import count_records
from trainer.data.load import load_dataset, remote_dataset
from trainer.data.memory import cache_dataset
from trainer.data.pipeline import batch_preprocessor, evaluation_input, training_input
from trainer.data.reading import read_records
from trainer.data.tfrecords import Remote, shard
from trainer.errors import DataError


def write_records(folder: Path, labels: list[int], parts: int, side: int = 12,
                  seed: int = 0) -> Path:
    """`parts` TFRecord files of PNGs (class c a gray level of its own) and int64 labels,
    record i in part i % parts."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    writers = [tf.io.TFRecordWriter(str(folder / f"part-{p}.tfrecord")) for p in range(parts)]
    for index, label in enumerate(labels):
        level = 30 + 60 * label
        pixels = np.clip(rng.normal(level, 15, (side, side, 3)), 0, 255).astype(np.uint8)
        png = io.BytesIO()
        Image.fromarray(pixels).save(png, format="PNG")
        feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png.getvalue()])),
                   "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        writers[index % parts].write(example.SerializeToString())
    for writer in writers:
        writer.close()
    return folder


def _names(records, worker: int, workers: int) -> list[str]:  # noqa: ANN001
    return [name.decode() for _, name in read_records(records, worker, workers).as_numpy_iterator()]


def test_the_layout_lists_files_without_reading_them(tmp_path: Path) -> None:
    root = write_records(tmp_path / "r" / "train", [0, 1] * 4, parts=2)
    write_records(tmp_path / "r" / "val", [0, 1], parts=1)
    (root / ".part-9.tfrecord").write_bytes(b"a hidden file is no data")
    (tmp_path / "r" / "classes.txt").write_text("cat\ndog\n\n")
    data = load_dataset(str(tmp_path / "r"), validation_split=0.1, seed=0)
    assert data.streamed and data.class_names == ("cat", "dog")
    assert [Path(f).name for f in data.train.files] == ["part-0.tfrecord", "part-1.tfrecord"]
    assert data.val.holdout is None and data.train.count is None  # counted after the strategy


def test_workers_read_their_own_files_or_their_share_of_records(tmp_path: Path) -> None:
    data = load_dataset(str(write_records(tmp_path / "four", list(range(3)) * 8, parts=4)),
                        validation_split=0.25, seed=0)
    everything = set(_names(data.train, 0, 1))
    files = [{name.split("#")[0] for name in _names(data.train, w, 2)} for w in (0, 1)]
    assert files == [{"part-0.tfrecord", "part-2.tfrecord"}, {"part-1.tfrecord", "part-3.tfrecord"}]
    assert set(_names(data.train, 0, 2)) | set(_names(data.train, 1, 2)) == everything
    assert shard(4, 1, 2) == ([1, 3], False) and shard(1, 1, 2) == ([0], True)
    single = load_dataset(str(write_records(tmp_path / "one", list(range(3)) * 8, parts=1)),
                          validation_split=0.25, seed=0)
    shares = [set(_names(single.train, w, 3)) for w in range(3)]
    assert all(shares) and not (shares[0] & shares[1] or shares[1] & shares[2])
    assert set.union(*shares) == set(_names(single.train, 0, 1))


def test_the_held_out_records_depend_on_the_seed_alone(tmp_path: Path) -> None:
    root = write_records(tmp_path / "r", list(range(3)) * 20, parts=3)
    data = load_dataset(str(root), validation_split=0.25, seed=0)
    held = set(_names(data.val, 0, 1))
    kept = set(_names(data.train, 0, 1))
    assert not held & kept and len(held | kept) == 60 and 5 <= len(held) <= 25
    assert set(_names(data.val, 0, 2)) | set(_names(data.val, 1, 2)) == held  # any workers
    other = load_dataset(str(root), validation_split=0.25, seed=1)
    assert set(_names(other.val, 0, 1)) != held
    counted = count_records(data)
    assert (len(counted.train), len(counted.val)) == (len(kept), len(held))
    assert counted.class_names == ("0", "1", "2") and counted.native_size == 12


@pytest.mark.parametrize(("labels", "classes", "message"), [
    ([0, 1, -1, 1], None, "holds a negative label"),
    ([2, 2, 2, 2], None, "has a single class"),
    ([0, 1, 2, 3], "a\nb\n", "labels go up to 3 but classes.txt names 2 classes"),
])
def test_unusable_labels_are_data_errors(tmp_path: Path, labels: list[int], classes: str | None,
                                         message: str) -> None:
    root = write_records(tmp_path / "r" / "train", labels * 3, parts=2)
    write_records(tmp_path / "r" / "val", labels, parts=1)
    if classes:
        (tmp_path / "r" / "classes.txt").write_text(classes)
    with pytest.raises(DataError, match=message):
        count_records(load_dataset(str(root.parent), validation_split=0.1, seed=0))


def test_records_larger_than_the_memory_budget_stream(tmp_path: Path) -> None:
    root = write_records(tmp_path / "r", list(range(2)) * 30, parts=3)
    data = count_records(load_dataset(str(root), validation_split=0.2, seed=0))
    streamed = cache_dataset(data, 16, budget=16 * 16 * 3 * 10)  # room for 10 images only
    assert streamed.train is data.train and streamed.val is data.val
    prep = batch_preprocessor(16, lambda images: images)
    batches = list(training_input(data.train, 16, prep, 8, 0, 1, budget=2000)(
        tf.distribute.InputContext()).take(7))  # more than an epoch: the stream repeats
    assert all(images.shape == (8, 16, 16, 3) for images, _ in batches)
    labels = np.concatenate([labels for _, labels in batches])
    assert set(labels) == {0, 1}
    cached = cache_dataset(data, 16, budget=10**8)
    assert cached.train.in_memory and len(cached.train) == len(data.train)


def test_two_replicas_train_on_tfrecords_with_a_batch_larger_than_the_data(tmp_path: Path
                                                                           ) -> None:
    root = write_records(tmp_path / "records", list(range(3)) * 12, parts=2)
    env = clean_environ(TINY_JOB, DATASET=str(root), ARTIFACT_URI=str(tmp_path / "runs"),
                        RUN_ID="replicas", CPU_REPLICAS="2", BATCH_SIZE="32", EPOCHS="1",
                        VALIDATION_SPLIT="0.25", WORK_DIR=str(tmp_path / "work"))
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((tmp_path / "runs" / "replicas" / "config.json").read_text())
    train = config["train_examples"]
    assert config["replicas"] == 2 and train + config["validation_examples"] == 36
    assert config["settings"]["batch_size"] == train // 2  # capped, and even per replica
    assert config["global_batch_size"] == 2 * (train // 2)
    logged = [line["message"] for line in json_lines(result.stdout)]
    assert any("per replica instead" in message for message in logged)
    metrics = json.loads((tmp_path / "runs" / "replicas" / "metrics.json").read_text())
    assert metrics["examples"] == config["validation_examples"]


def test_a_resumed_epoch_sees_the_batches_it_had_not_trained_on(tmp_path: Path) -> None:
    root = write_records(tmp_path / "r", list(range(3)) * 20, parts=3)
    data = count_records(load_dataset(str(root), validation_split=0.2, seed=0))
    prep = batch_preprocessor(12, lambda images: images)

    def batches(epoch: int, skip: int) -> list:
        fn = training_input(data.train, 12, prep, 4, 7, epoch, skip_steps=skip, budget=10**6)
        return [(x.numpy(), y.numpy()) for x, y in fn(tf.distribute.InputContext()).take(5)]

    whole, resumed = batches(1, 0), batches(1, 2)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
               for a, b in zip(whole[2:], resumed, strict=False))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(whole, batches(2, 0),
                                                              strict=True))


def test_tfrecords_in_s3_are_streamed_with_the_split_they_have_on_disk(
        rclone_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An s3:// prefix of TFRecords is streamed, never fetched whole: counted by reading it once
    (its index kept beside it), the same records held out as from a local copy."""
    root = write_records(tmp_path / "r", list(range(3)) * 20, parts=3)
    (root / "classes.txt").write_text("a\nb\nc\n")
    bucket, client = rclone_server.new_bucket(), rclone_server.client()
    upload_folder(client, bucket, root, "records")
    for name, value in rclone_server.env().items():
        monkeypatch.setenv(name, value)
    local = count_records(load_dataset(str(root), validation_split=0.25, seed=0))
    remote = Remote(rclone_server.endpoint, "path", str(tmp_path / "cache"), 10**6, 30)
    streamed = count_records(remote_dataset(f"s3://{bucket}/records", remote,
                                            validation_split=0.25, seed=0))
    assert not streamed.train.native and streamed.class_names == ("a", "b", "c")
    assert (len(streamed.train), len(streamed.val)) == (len(local.train), len(local.val))
    assert client.head_object(Bucket=bucket, Key="records/part-0.tfrecord.index.json")

    def held_out(split) -> list:  # noqa: ANN001
        fn = evaluation_input(split, 12, batch_preprocessor(12, lambda images: images), 8)
        return sorted((x.tobytes(), int(y)) for images, labels, weights
                      in fn(tf.distribute.InputContext()).as_numpy_iterator()
                      for x, y, w in zip(images, labels, weights, strict=True) if w)

    assert held_out(streamed.val) == held_out(local.val)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]  # read, deleted

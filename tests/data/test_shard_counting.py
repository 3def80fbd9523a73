"""Counting streamed shards before training without reading their images where the format
allows: Parquet from its footer, WebDataset in S3 read once and then from the index kept beside
each shard (a restart on a fresh disk reads the indexes only). Real S3 servers, bytes measured
through tests/faults.py's proxy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import S3Server, upload_folder, write_hf_parquet, write_webdataset
from faults import FaultProxy

from trainer.data.counting import count_records
from trainer.data.load import load_dataset, remote_dataset
from trainer.data.tfrecords import Remote
from trainer.errors import DataError


def test_webdataset_in_s3_is_read_once_to_count_then_counted_from_its_index(
        rclone_server: S3Server, fault_proxies: Callable[[str], FaultProxy], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    shards = write_webdataset(tmp_path / "set", [0, 1, 2] * 20, shards=3, side=40)
    write_webdataset(tmp_path / "set", [0, 1, 2] * 2, shards=1, prefix="val", seed=1, side=40)
    bucket, client = rclone_server.new_bucket(), rclone_server.client()
    total = upload_folder(client, bucket, tmp_path / "set", "set")
    for name, value in rclone_server.env().items():
        monkeypatch.setenv(name, value)
    proxy = fault_proxies(rclone_server.endpoint)

    def count(node: str) -> tuple:
        before = proxy.carried["down"]
        remote = Remote(proxy.endpoint, "path", str(tmp_path / node), 2**20, 30)
        data = count_records(remote_dataset(f"s3://{bucket}/set", remote,
                                            validation_split=0.1, seed=0))
        return data, proxy.carried["down"] - before

    data, first = count("first-node")
    assert (len(data.train), len(data.val), data.class_names) == (60, 6, ("0", "1", "2"))
    assert data.train.file_counts == (20, 20, 20) and data.native_size == 40
    assert first > total  # every shard read once (nothing written to disk: no cache yet)
    indexes = sorted(o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]
                     if o["Key"].endswith(".index.json"))
    assert indexes == [f"set/{p.name}.index.json" for p in shards] + [
        "set/val-0000.tar.index.json"]
    again, second = count("new-node")
    assert (len(again.train), len(again.val), again.train.file_counts) == (60, 6, (20, 20, 20))
    # The indexes, and the first images of one shard for the dataset's side: no other shard.
    assert second < shards[0].stat().st_size + 20_000

    # A shard replaced since: its index (made of the old version) is not trusted.
    write_webdataset(tmp_path / "new", [0, 1, 2, 3] * 10, shards=1, side=40)
    client.upload_file(str(tmp_path / "new" / "train-0000.tar"), bucket, "set/train-0000.tar")
    changed, _ = count("third-node")
    assert changed.train.file_counts == (40, 20, 20) and changed.class_names[-1] == "3"


def test_parquet_is_counted_from_footers_with_its_hub_class_names(
        s3_server: S3Server, fault_proxies: Callable[[str], FaultProxy], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    names = ["airplane", "bird", "cat"]
    write_hf_parquet(tmp_path / "hub" / "data", [0, 1, 2] * 30, shards=3, names=names,
                     side=96, row_group=10)
    local = count_records(load_dataset(str(tmp_path / "hub"), validation_split=0.2, seed=0))
    assert (len(local.train) + len(local.val), local.class_names) == (90, tuple(names))
    assert 8 <= len(local.val) <= 28 and local.native_size == 96
    bucket = s3_server.new_bucket()
    total = upload_folder(s3_server.client(), bucket, tmp_path / "hub", "hub")
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    proxy = fault_proxies(s3_server.endpoint)
    remote = Remote(proxy.endpoint, "path", str(tmp_path / "cache"), 2**20, 30)
    streamed = count_records(remote_dataset(f"s3://{bucket}/hub", remote, validation_split=0.2,
                                            seed=0))
    assert (len(streamed.train), len(streamed.val)) == (len(local.train), len(local.val))
    assert streamed.class_names == tuple(names)
    assert proxy.carried["down"] < total / 2  # footers and the first row group's images
    (tmp_path / "hub" / "classes.txt").write_text("airplane\nbird\n")  # beside the shards: wins
    with pytest.raises(DataError, match="labels go up to 2 but classes.txt names 2 classes"):
        count_records(load_dataset(str(tmp_path / "hub"), validation_split=0.2, seed=0))

"""Shard datasets listed before training: the format, the splits by name, the class names, local
folders and S3 prefixes alike (real S3 servers on loopback). No TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import S3Server, upload_folder, write_hf_parquet, write_webdataset

from trainer.data.load import load_dataset, remote_dataset
from trainer.data.shards import shard_format, split_files
from trainer.data.tfrecords import Remote
from trainer.errors import ConfigError, DataError


def test_splits_come_from_folder_and_file_names() -> None:
    hub = ["data/train-00000-of-00002.parquet", "data/train-00001-of-00002.parquet",
           "data/validation-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"]
    assert split_files(hub) == (hub[:2], [hub[2]])  # validation before test
    assert split_files(["imagenet-train-000.tar", "imagenet-val-000.tar"]) == (
        ["imagenet-train-000.tar"], ["imagenet-val-000.tar"])
    assert split_files(["train/a.tfrecord", "test/b.tfrecord"]) == (["train/a.tfrecord"],
                                                                    ["test/b.tfrecord"])
    assert split_files(["shard-0.tar", "shard-1.tar"]) == (["shard-0.tar", "shard-1.tar"], [])
    assert split_files(["shard-0.tar", "val_0.tar"]) == (["shard-0.tar"], ["val_0.tar"])


def test_the_format_is_detected_or_chosen_where_ambiguous() -> None:
    names = ["train-0.tar", "train-0.tar.index.json", ".hidden.parquet", "classes.txt"]
    assert shard_format(names, None, "d") == "webdataset"
    assert shard_format(["a/x.png", "b/y.jpg"], None, "d") is None  # an image folder
    both = ["train-0.tar", "train-0.parquet"]
    with pytest.raises(ConfigError, match="DATASET=d holds parquet and webdataset files; set "
                                          "DATASET_FORMAT"):
        shard_format(both, None, "d")
    assert shard_format(both, "parquet", "d") == "parquet"
    assert shard_format(both, "folder", "d") is None
    with pytest.raises(DataError, match=r"DATASET=d holds no tfrecord files"):
        shard_format(both, "tfrecord", "d")


def test_local_folders_of_each_format_with_their_class_names(tmp_path: Path) -> None:
    write_webdataset(tmp_path / "wds", [0, 1] * 4, shards=2)
    (tmp_path / "wds" / "labels.txt").write_text("cat\ndog\n")
    wds = load_dataset(str(tmp_path / "wds"), validation_split=0.2, seed=0)
    assert (wds.train.format, wds.class_names, wds.val.holdout.part) == ("webdataset",
                                                                        ("cat", "dog"), "val")
    write_hf_parquet(tmp_path / "hub" / "data", [0, 1, 2] * 2, shards=2, names=["a", "b", "c"])
    write_hf_parquet(tmp_path / "hub" / "data", [0, 1, 2], shards=1, names=["a", "b", "c"],
                     prefix="test")
    hub = load_dataset(str(tmp_path / "hub"), validation_split=0.2, seed=0)
    assert (hub.train.format, hub.class_names, hub.val.holdout) == ("parquet", ("a", "b", "c"),
                                                                    None)
    assert [Path(f).name for f in hub.val.files] == ["test-00000-of-00001.parquet"]
    with pytest.raises(ConfigError, match="DATASET_FORMAT=npz but DATASET=.* is a folder"):
        load_dataset(str(tmp_path / "hub"), validation_split=0.2, seed=0, dataset_format="npz")


def test_an_s3_prefix_is_listed_as_its_local_copy_is(s3_server: S3Server, tmp_path: Path
                                                     ) -> None:
    write_hf_parquet(tmp_path / "hub" / "data", [0, 1, 2] * 4, shards=3, names=["a", "b", "c"])
    write_webdataset(tmp_path / "wds", [0, 1] * 6, shards=3)
    (tmp_path / "wds" / "classes.txt").write_text("cat\ndog\n")
    bucket, client = s3_server.new_bucket(), s3_server.client()
    upload_folder(client, bucket, tmp_path, "sets")
    remote = Remote(s3_server.endpoint, "path", str(tmp_path / "cache"), 10**6, 30)
    env = s3_server.env()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for name in ("hub", "wds"):
            local = load_dataset(str(tmp_path / name), validation_split=0.2, seed=0)
            streamed = remote_dataset(f"s3://{bucket}/sets/{name}", remote,
                                      validation_split=0.2, seed=0)
            assert streamed.class_names == local.class_names
            assert [Path(f).name for f in streamed.train.files] == [
                Path(f).name for f in local.train.files]
            assert streamed.train.files[0].startswith(f"s3://{bucket}/sets/{name}/")
            assert streamed.train.remote == remote and all(streamed.train.sizes)
        assert remote_dataset(f"s3://{bucket}/sets/wds/classes.txt", remote,
                              validation_split=0.2, seed=0) is None  # fetched, not streamed
        small = Remote(s3_server.endpoint, "path", str(tmp_path / "cache"), 1000, 30)
        with pytest.raises(ConfigError, match=r"DATA_CACHE_BYTES=1000 cannot hold the shard "
                                              r"s3://.*/sets/wds/train-000\d.tar \(\d+ bytes\)"):
            remote_dataset(f"s3://{bucket}/sets/wds", small, validation_split=0.2, seed=0)

"""TFRecord datasets: files of tf.train.Example records, `image` (encoded bytes) and `label`
(int64), streamed by tf.data and never held in memory as a whole. This module lists and shards
them, without TensorFlow, and defines `Records`, the split of any shard dataset (TFRecord,
WebDataset tar or Parquet files, local or in S3, listed by trainer.data.shards):

    indices, by_record = shard(len(train.files), worker, workers)

Reading them needs TensorFlow (trainer.data.reading; other formats and S3 trainer.data.streaming),
and TensorFlow may only start once the strategy is made (MultiWorkerMirroredStrategy and
CPU_REPLICAS configure it at start); trainer.data.counting then counts them (`count_records`)
before training.

The layout is a folder of `*.tfrecord` (`.tfrecords`, `.tfrec`) files, or `train/` with `val/`
or `test/` beside it, and an optional `classes.txt` (one class name per line, in label order).

Sharding, the same in the count and in the pipeline: with W workers and at least W files,
worker w reads files w, w + W, w + 2W... of the sorted list (so a worker needs only its files);
with fewer files, every worker reads every file and keeps record p of file f when
(p + f) % W == w.

Without val/ or test/, a record is held out for validation when the FarmHash fingerprint of
"SEED:FILE NAME:POSITION" falls in the first VALIDATION_SPLIT of its range: the same records on
every worker and in `trainer evaluate` with that seed, whatever the order or number of workers
(so the share held out is VALIDATION_SPLIT on average, not exactly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

TFRECORD_SUFFIXES = (".tfrecord", ".tfrecords", ".tfrec")


@dataclass(frozen=True)
class Holdout:
    """Records chosen by their fingerprint: `part` "val" keeps the held-out ones."""

    fraction: float
    seed: int
    part: Literal["train", "val"]


@dataclass(frozen=True)
class Remote:
    """Where streamed shards come from (an S3 prefix) and the local cache they pass through."""

    endpoint_url: str | None
    addressing_style: str
    cache_dir: str  # this worker's folder for the shards being read (trainer.data.shard_cache)
    cache_bytes: int  # DATA_CACHE_BYTES
    wait_seconds: float  # how long an unreachable store is waited for (UPLOAD_TIMEOUT)


@dataclass(frozen=True)
class Records:
    """A split streamed from shard files; its counts are known after `count_records`.

    TFRecord files on local disk are read by tf.data itself (trainer.data.reading); WebDataset and
    Parquet files, and shards in S3 (`remote`), by trainer.data.streaming."""

    files: tuple[str, ...]  # every file of the split, sorted: the same list on every worker
    holdout: Holdout | None = None
    count: int | None = None  # records in the split, over every worker
    shard_counts: tuple[int, ...] = ()  # records each worker reads, by worker index
    mean_bytes: float = 0.0  # of a record's encoded image
    format: str = "tfrecord"  # or "webdataset", "parquet"
    remote: Remote | None = None  # files are s3:// URIs, read through a local cache
    sizes: tuple[int, ...] = ()  # bytes of each file (S3 listings), for the cache
    etags: tuple[str, ...] = ()  # of each file (S3 listings): shard indexes are kept per version
    file_counts: tuple[int, ...] = ()  # examples in each file (streamed shards, once counted)
    columns: tuple[str, str] = ("image", "label")  # Parquet: the image and label columns

    def __len__(self) -> int:
        if self.count is None:
            raise RuntimeError("TFRecords not counted yet: call "
                               "trainer.data.counting.count_records")
        return self.count

    @property
    def native(self) -> bool:
        """Local TFRecord files, which tf.data reads itself; the rest is streamed by
        trainer.data.streaming."""
        return self.format == "tfrecord" and self.remote is None


def is_tfrecord(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in TFRECORD_SUFFIXES and not name.startswith(".")


def shard(files: int, worker: int, workers: int) -> tuple[list[int], bool]:
    """The indices of the files worker `worker` of `workers` reads, and whether it keeps only
    its share of their records (fewer files than workers)."""
    if workers <= 1:
        return list(range(files)), False
    if files >= workers:
        return list(range(worker, files, workers)), False
    return list(range(files)), True

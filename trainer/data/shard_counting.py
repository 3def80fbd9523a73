"""Counting streamed shards before training (WebDataset and Parquet files, and any shards in
S3), without reading their images where the format allows, shared between the workers.

    dataset = count_shards(dataset, strategy, worker, workers)   # after the strategy is made

Each worker counts every W-th shard: a Parquet file from its footer (rows, label statistics), a
local WebDataset tar by its member headers (and the tiny label members), a tar or TFRecord file
in S3 from the index kept beside it (`<shard>.index.json`, trainer.data.shard_index), or, the
first time, by reading it once as a stream (nothing written to disk) and then writing that
index. The per-shard counts are gathered by a collective; from them each worker knows how many
examples every worker reads (the held-out fingerprints and the sharding by record need the
counts only) and which position of which shard a resumed epoch starts at
(trainer.data.streaming).

TensorFlow is imported at the top: this runs after the strategy is made.
"""

from __future__ import annotations

import tarfile
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from trainer.data.reading import held_mask, kept_positions
from trainer.data.shard_files import first_payloads, read_shard, scan_stream, shard_name
from trainer.data.shard_index import ShardScan, index_body, index_key, read_index
from trainer.data.splits import Dataset
from trainer.data.tallies import SIDE_SAMPLE, counted, gather_or_fail, side_of
from trainer.data.tfrecords import Records, shard
from trainer.data.webdataset import scan_tar
from trainer.errors import DataError, StorageError, TransientError
from trainer.logs import get_logger
from trainer.store.faults import storage_error

SCAN_THREADS = 8  # shards counted at once: their footers, indexes and streams wait on storage
_FIELDS = 6  # per shard in a worker's row: counted, examples, labels known, low, high, bytes


class _Shards:
    """The dataset's shard files (both splits), with what their listing says of each."""

    def __init__(self, train: Records, val: Records) -> None:
        self.fmt, self.columns, self.remote = train.format, train.columns, train.remote
        self.listed: dict[str, tuple[int, str]] = {}
        for split in (train, val):
            for i, location in enumerate(split.files):
                self.listed[location] = (split.sizes[i] if split.sizes else 0,
                                         split.etags[i] if split.etags else "")
        self.files = sorted(self.listed)
        self.store: Any = None
        if self.remote is not None:
            from trainer.store.s3 import S3Store

            bucket = self.files[0][len("s3://"):].split("/", 1)[0]
            self.bucket = bucket
            self.store = S3Store(f"s3://{bucket}", self.remote.endpoint_url,
                                 self.remote.addressing_style)
        self.index_refused = False

    def key(self, location: str) -> str:
        return location[len(f"s3://{self.bucket}/"):]

    def parquet(self, location: str) -> Any:
        import pyarrow.parquet as pq

        from trainer.data.parquet import ObjectFile

        if self.store is None:
            return pq.ParquetFile(location)
        return pq.ParquetFile(ObjectFile(self.store.read_range, self.key(location),
                                         self.listed[location][0]))

    def scan(self, location: str) -> ShardScan:
        name = shard_name(location)
        try:
            if self.fmt == "parquet":
                from trainer.data.parquet import scan_parquet

                return scan_parquet(self.parquet(location), self.columns)
            if self.store is None:
                with tarfile.open(location, mode="r:") as tar:
                    return scan_tar(tar)
            return self._remote_scan(location, name)
        except (DataError, StorageError, TransientError):
            raise
        except (OSError, ValueError, tarfile.TarError) as error:
            endpoint = self.remote.endpoint_url if self.remote else None
            mapped = storage_error(error, location, endpoint)
            if mapped is not error:
                raise mapped from None
            raise DataError(f"DATASET: {location} is not a readable {self.fmt} shard "
                            f"({' '.join(str(error).split())[:200]})") from None

    def _remote_scan(self, location: str, name: str) -> ShardScan:
        size, etag = self.listed[location]
        key = self.key(location)
        found = read_index(self.store.read_bytes(index_key(key)), etag, size)
        if found is not None:
            return found
        body = self.store.open_stream(key)
        try:
            scan = scan_stream(body, self.fmt, _tfrecord_label, name)
        finally:
            body.close()
        self._keep_index(key, index_body(scan, etag, size))
        return scan

    def _keep_index(self, key: str, body: bytes) -> None:
        """The count beside the shard, so that no run counts it by reading it again; a store
        that refuses the write costs a read of the shard at the next start, nothing more."""
        if self.index_refused:
            return
        with tempfile.NamedTemporaryFile(suffix=".json") as handle:
            handle.write(body)
            handle.flush()
            try:
                self.store.put_file(index_key(key), Path(handle.name))
            except (StorageError, TransientError) as error:
                self.index_refused = True
                get_logger().warning(f"could not keep shard counts beside the shards ({error});"
                                     " the next run reads the shards again to count them")

    def first_images(self, location: str) -> list[bytes]:
        """The encoded images of the shard's first SIDE_SAMPLE examples."""
        wanted = list(range(SIDE_SAMPLE))
        if self.fmt == "parquet":
            from trainer.data.parquet import rows

            payloads = [data for _, data, _ in rows(self.parquet(location), self.columns,
                                                     wanted)]
        elif self.store is None:
            payloads = [p for _, p, _, _ in read_shard(Path(location), self.fmt, wanted)]
        else:
            body = self.store.open_stream(self.key(location))
            try:
                payloads = first_payloads(body, self.fmt, SIDE_SAMPLE)
            finally:
                body.close()
        if self.fmt == "tfrecord":
            payloads = [_tfrecord_image(record) for record in payloads]
        return payloads


def _example(record: bytes) -> Any:
    try:
        return tf.train.Example.FromString(record).features.feature
    except Exception as error:  # protobuf's DecodeError
        raise ValueError(f"a record is no tf.train.Example ({error})") from None


def _tfrecord_label(record: bytes) -> tuple[int, int]:
    feature = _example(record)
    try:
        return (int(feature["label"].int64_list.value[0]),
                len(feature["image"].bytes_list.value[0]))
    except (KeyError, IndexError):
        raise ValueError("a record has no `image` bytes and int64 `label`") from None


def _tfrecord_image(record: bytes) -> bytes:
    try:
        return bytes(_example(record)["image"].bytes_list.value[0])
    except (ValueError, KeyError, IndexError):
        return b""


def count_shards(dataset: Dataset, strategy: Any = None, worker: int = 0, workers: int = 1
                 ) -> Dataset:
    """The dataset with its counts, class names and side filled in. Every worker calls it at
    the same point: the counts are shared by a collective. A worker that finds a shard unusable
    makes every worker exit 3 (its own exit names the shard)."""
    train, val = dataset.train, dataset.val
    assert isinstance(train, Records) and isinstance(val, Records)
    shards = _Shards(train, val)
    mine = shards.files[worker::workers]
    get_logger().info(f"counting {len(mine)} of {len(shards.files)} {shards.fmt} shard(s)",
                      extra={"worker": worker, "shards_counted": len(mine)})
    row = [0.0] * (2 + _FIELDS * len(shards.files))
    error: Exception | None = None
    try:
        with ThreadPoolExecutor(SCAN_THREADS) as pool:
            scans = dict(zip(mine, pool.map(shards.scan, mine), strict=True))
        side = side_of(shards.first_images(train.files[0])) if worker == 0 else 0
        row = [0.0, float(side)]
        for location in shards.files:
            scan = scans.get(location)
            row += [0.0] * _FIELDS if scan is None else [
                1.0, scan.count, float(scan.high is not None), scan.low or 0, scan.high or 0,
                scan.image_bytes]
    except (DataError, StorageError, TransientError) as found:
        error, row[0] = found, 1.0
    rows = gather_or_fail(row, strategy, workers, error,
                          f"DATASET={dataset.source}: worker(s) {{failed}} could not count their "
                          "shards; their log names the shard")
    found_scans = {}
    for j, location in enumerate(shards.files):
        values = rows[j % workers, 2 + _FIELDS * j: 2 + _FIELDS * (j + 1)]
        found_scans[location] = ShardScan(int(values[1]), int(values[3]) if values[2] else None,
                                          int(values[4]) if values[2] else None, int(values[5]))
        if values[2] and values[3] < 0:
            raise DataError(f"DATASET: {location} holds a negative label; labels are whole "
                            "numbers from 0")
    return _filled(dataset, train, val, found_scans, int(rows[:, 1].max()), workers)


def _filled(dataset: Dataset, train: Records, val: Records, scans: dict[str, ShardScan],
            side: int, workers: int) -> Dataset:
    """Every worker's counts of each split (counted() checks and fills them in), and each
    file's count, which the streamed reader plans its epochs from."""
    masks: dict[tuple[str, int], np.ndarray] = {}

    def part(split: Records) -> np.ndarray:
        """Per worker: examples, image bytes, lowest and highest label."""
        table = np.zeros((workers, 4), np.int64)
        table[:, 2], table[:, 3] = 2**62, -1
        for w in range(workers):
            indices, by_record = shard(len(split.files), w, workers)
            for i in indices:
                location = split.files[i]
                scan = scans[location]
                held = None
                if split.holdout is not None:
                    cache_key = (location, scan.count)
                    if cache_key not in masks:
                        masks[cache_key] = held_mask(split.holdout, shard_name(location),
                                                     scan.count)
                    held = masks[cache_key]
                kept = len(kept_positions(split, i, scan.count, w, workers, by_record, held))
                if not kept:
                    continue
                table[w] += [kept, scan.image_bytes * kept // max(scan.count, 1), 0, 0]
                if scan.high is not None:
                    table[w, 2] = min(table[w, 2], scan.low or 0)
                    table[w, 3] = max(table[w, 3], scan.high)
        return table

    rows = np.zeros((workers, 10), np.int64)
    rows[:, 1] = side
    rows[:, 2:6], rows[:, 6:10] = part(train), part(val)
    train = replace(train, file_counts=tuple(scans[f].count for f in train.files))
    val = replace(val, file_counts=tuple(scans[f].count for f in val.files))
    return counted(dataset, train, val, rows, workers)

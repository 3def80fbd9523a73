"""The bounded cache of shards streamed from S3 (real servers on loopback, real faults through
tests/faults.py): the bytes on disk stay under the limit while shards are read and prefetched,
read shards are deleted, an outage is waited out and one past the timeout is exit 75. No
TensorFlow."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import DiskSampler, S3Server
from faults import FaultProxy

from trainer.data.shard_cache import ShardCache
from trainer.data.shard_downloads import fetcher
from trainer.errors import DataError, TransientError
from trainer.store.s3 import ClientLimits, S3Store

SHARD = 50_000
# Few, short botocore retries: the cache's own patience is what these tests look at.
IMPATIENT = ClientLimits(connect_timeout=1, read_timeout=2, max_attempts=1)


def _shards(server: S3Server, count: int) -> tuple[str, list[tuple[str, int]], dict[str, bytes]]:
    bucket, client = server.new_bucket(), server.client()
    contents = {f"set/train-{i:03d}.tar": os.urandom(SHARD) for i in range(count)}
    for key, body in contents.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    return bucket, [(key, SHARD) for key in contents], contents


def _store(bucket: str, endpoint: str, server: S3Server,
           monkeypatch: pytest.MonkeyPatch) -> S3Store:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return S3Store(f"s3://{bucket}", endpoint, "path", limits=IMPATIENT)


def test_shards_stream_under_the_limit_and_are_deleted_once_read(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket, order, contents = _shards(s3_server, 12)
    store = _store(bucket, s3_server.endpoint, s3_server, monkeypatch)
    limit = int(2.5 * SHARD)  # the dataset is 12 shards: 4.8 times the cache
    cache = ShardCache(tmp_path / "cache", limit, fetcher(store), wait_seconds=30)
    sampler = DiskSampler(tmp_path / "cache")
    reader = cache.reader(order)
    prefetched = 0
    for index, (key, _) in enumerate(order):
        time.sleep(0.05)  # training on the shard before: the next one arrives meanwhile
        prefetched += cache.present(key)
        path = reader.open(index)
        assert path.read_bytes() == contents[key]
        reader.close(index, done=True)
        assert not path.exists()  # read: deleted at once
    reader.stop()
    disk_peak = sampler.stop()
    assert cache.fetched == [key for key, _ in order]  # each once, in order
    assert 2 * SHARD <= cache.peak <= limit and SHARD <= disk_peak <= limit
    assert prefetched >= len(order) // 2  # most shards were there before they were asked for
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_reader_evicts_what_nobody_reads_and_waits_for_what_is_read(
        s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket, order, _ = _shards(s3_server, 3)
    store = _store(bucket, s3_server.endpoint, s3_server, monkeypatch)
    cache = ShardCache(tmp_path / "cache", 2 * SHARD, fetcher(store), wait_seconds=30)
    (first, _), (second, _), (third, _) = order
    assert cache.prefetch(first, SHARD) and cache.prefetch(second, SHARD)
    assert not cache.prefetch(third, SHARD)  # a prefetch takes free room only
    cache.open(second, SHARD)  # being read: pinned
    cache.open(third, SHARD)  # evicts the idle one
    assert not cache.present(first) and cache.peak == 2 * SHARD
    opened = threading.Event()
    waiting = threading.Thread(target=lambda: (cache.open(first, SHARD), opened.set()))
    waiting.start()
    assert not opened.wait(0.5)  # both shards here are being read: it waits
    cache.close(third, done=False)
    assert opened.wait(10) and not cache.present(third) and cache.peak == 2 * SHARD
    waiting.join()


def _open_in_thread(cache: ShardCache, key: str) -> Callable[[], object]:
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["path"] = cache.open(key, SHARD)
        except Exception as error:  # noqa: BLE001 - the test looks at it
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    return lambda: (thread.join(timeout=60), outcome)[1]


def test_an_outage_is_waited_out_and_one_past_the_timeout_is_transient(
        s3_server: S3Server, fault_proxies: Callable[[str], FaultProxy], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, warnings_logged: list) -> None:
    proxy = fault_proxies(s3_server.endpoint)
    bucket, order, contents = _shards(s3_server, 2)
    store = _store(bucket, proxy.endpoint, s3_server, monkeypatch)
    cache = ShardCache(tmp_path / "cache", 2 * SHARD, fetcher(store), wait_seconds=60,
                       where=f"s3://{bucket}/", first_backoff=0.2)
    proxy.set("reset", after=0)  # every connection is cut as it opens
    finish = _open_in_thread(cache, order[0][0])
    deadline = time.monotonic() + 30
    while not any("retrying" in r.getMessage() for r in warnings_logged):
        assert time.monotonic() < deadline, "no retry logged"
        time.sleep(0.05)
    assert proxy.resets >= 1
    proxy.set("pass")
    outcome = finish()
    assert "error" not in outcome and Path(outcome["path"]).read_bytes() == contents[order[0][0]]
    message = next(r.getMessage() for r in warnings_logged if "retrying" in r.getMessage())
    assert message.startswith(f"reading DATASET shard {order[0][0]} failed, retrying in")

    impatient = ShardCache(tmp_path / "other", 2 * SHARD, fetcher(store), wait_seconds=1.5,
                           where=f"s3://{bucket}/", first_backoff=0.2)
    proxy.set("refuse")
    outcome = _open_in_thread(impatient, order[1][0])()
    assert isinstance(outcome.get("error"), TransientError)
    assert "stayed unreachable for UPLOAD_TIMEOUT=1.5 s while streaming DATASET shard " \
           f"s3://{bucket}/{order[1][0]}" in str(outcome["error"])
    assert not impatient.present(order[1][0]) and impatient._reserved == 0
    proxy.set("pass")
    with pytest.raises(DataError, match="is gone from the store since it was listed"):
        impatient.open("set/deleted.tar", SHARD)

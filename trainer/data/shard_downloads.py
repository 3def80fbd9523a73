"""How shards in S3 reach this process: one bounded cache (trainer.data.shard_cache) per cache
folder, downloading from its bucket with the artifact store's client settings, retries and
fault mapping; and what the caches streamed, for the epoch's log line.

    reader = cache_for(remote, bucket).reader([(key, size), ...])
    stream_stats()   # {"shards_streamed": ..., "data_cache_peak_bytes": ...}

No TensorFlow here.
"""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

from boto3.s3.transfer import TransferConfig, create_transfer_manager

from trainer.data.shard_cache import Fetch, ShardCache
from trainer.data.tfrecords import Remote
from trainer.store.faults import is_missing, storage_error
from trainer.store.mirror import KnownSize
from trainer.store.s3 import S3Store

_caches: dict[str, ShardCache] = {}
_caches_lock = threading.Lock()


def cache_for(remote: Remote, bucket: str) -> ShardCache:
    """This process's cache of the shards of `bucket` (one per cache folder)."""
    folder = str(Path(remote.cache_dir) / bucket)
    with _caches_lock:
        if folder not in _caches:
            store = S3Store(f"s3://{bucket}", remote.endpoint_url, remote.addressing_style)
            _caches[folder] = ShardCache(Path(folder), remote.cache_bytes, fetcher(store),
                                         remote.wait_seconds, where=f"s3://{bucket}/")
        return _caches[folder]


def fetcher(store: S3Store) -> Fetch:
    """Downloads from `store`: a shard under s3transfer's multipart threshold by one GET into a
    temporary file renamed when whole (an s3transfer download costs some 10 ms of CPU per
    object in its machinery), a larger one by one s3transfer manager kept for them all (ranged
    parts in parallel; the size from the listing, so no HEAD first); failures mapped as the
    store maps them (trainer.store.faults)."""
    config = TransferConfig()
    manager = create_transfer_manager(store.client, config)

    def fetch(key: str, path: Path, size: int) -> bool:
        try:
            if size >= config.multipart_threshold:
                manager.download(store.bucket, key, str(path),
                                 subscribers=[KnownSize(size)]).result()
                return True
            partial = path.with_name(path.name + ".part")
            try:
                body = store.client.get_object(Bucket=store.bucket, Key=key)["Body"]
                with body, open(partial, "wb") as out:
                    shutil.copyfileobj(body, out, 1 << 20)
                partial.replace(path)
            finally:
                partial.unlink(missing_ok=True)
        except Exception as error:
            if is_missing(error):
                return False
            mapped = storage_error(error, f"s3://{store.bucket}/{key}", store.endpoint)
            if mapped is error:
                raise
            raise mapped from None
        return True

    return fetch


def stream_stats() -> dict[str, int]:
    """For the epoch's log line: shards downloaded so far and the cache's high-water mark."""
    with _caches_lock:
        caches = list(_caches.values())
    if not caches:
        return {}
    return {"shards_streamed": sum(len(c.fetched) for c in caches),
            "bytes_streamed": sum(c.fetched_bytes for c in caches),
            "data_cache_peak_bytes": max(c.peak for c in caches),
            "data_cache_bytes": max(c.limit for c in caches)}

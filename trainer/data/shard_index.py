"""What counting one shard finds, and the index file that keeps it beside the shard, so that a
shard in S3 is read whole for its count only once (a restart on a fresh disk reads the index).

    scan = ShardScan(count=1000, low=0, high=9, image_bytes=31_000_000)
    body = index_body(scan, etag, size)                 # JSON for `<shard>.index.json`
    scan = read_index(body, etag, size)                  # None when stale or unreadable

No TensorFlow here.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

INDEX_SUFFIX = ".index.json"
INDEX_KIND = "trainer-shard-index-v1"


@dataclass(frozen=True)
class ShardScan:
    """A shard's examples: how many, the range of their labels (None when no label is known) and
    the bytes of their encoded images."""

    count: int
    low: int | None = None
    high: int | None = None
    image_bytes: int = 0


def index_key(shard_key: str) -> str:
    """`train-000.tar` -> `train-000.tar.index.json`, beside it."""
    return shard_key + INDEX_SUFFIX


def index_body(scan: ShardScan, etag: str, size: int) -> bytes:
    return json.dumps({"kind": INDEX_KIND, "etag": etag, "size": size, **asdict(scan)},
                      indent=1).encode()


def read_index(body: bytes | None, etag: str, size: int) -> ShardScan | None:
    """The scan an index holds, when it was made of this version of the shard (its ETag and
    size); None when there is no index, it is stale, or it is not one of ours."""
    if body is None:
        return None
    try:
        data = json.loads(body)
        if (data.get("kind") != INDEX_KIND or data.get("etag") != etag
                or data.get("size") != size):
            return None
        low, high = data["low"], data["high"]
        return ShardScan(int(data["count"]), None if low is None else int(low),
                         None if high is None else int(high), int(data["image_bytes"]))
    except (ValueError, TypeError, KeyError, AttributeError):
        return None

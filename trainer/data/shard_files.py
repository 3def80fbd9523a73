"""One shard file, whatever its format: its examples at given positions, and its count.

    for position, payload, label, name in read_shard(path, "webdataset", wanted):
        ...   # payload: encoded image bytes (a serialized tf.train.Example for TFRecords, label -1)
    scan = scan_stream(body, "tfrecord", label_of)      # a stream read once, front to back

A position is an example's index in its shard (a WebDataset sample, a Parquet row, a TFRecord
record); the held-out split and the sharding by record choose positions, and a resumed epoch
starts at one, so a reader skips what comes before it without decoding it. Names are
`FILE#KEY` (WebDataset) or `FILE#POSITION`, as broken images are named. No TensorFlow here:
TFRecord labels are parsed by the caller (`label_of`).
"""

from __future__ import annotations

import struct
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from trainer.data.shard_index import ShardScan
from trainer.data.webdataset import samples, scan_tar
from trainer.errors import DataError

Example = tuple[int, bytes, int, str]  # position, payload, label (-1: in the payload), name
_HEADER = 12  # a TFRecord's length (uint64) and its CRC (uint32); the data's CRC follows it


def read_shard(path: Path, fmt: str, wanted: Sequence[int], columns: tuple[str, str] = (
        "image", "label"), name: str | None = None) -> Iterator[Example]:
    """The examples of the local shard file `path` at the sorted positions `wanted`."""
    name = name or path.name
    if not wanted:
        return
    try:
        if fmt == "webdataset":
            yield from _tar_examples(path, wanted, name)
        elif fmt == "parquet":
            import pyarrow.parquet as pq

            from trainer.data.parquet import rows

            for position, data, label in rows(pq.ParquetFile(path), columns, wanted):
                yield position, data, label, f"{name}#{position}"
        else:
            with open(path, "rb") as handle:
                for position, record in _records(handle, wanted[-1] + 1, set(wanted)):
                    yield position, record, -1, f"{name}#{position}"
    except (OSError, tarfile.TarError, EOFError, ValueError) as error:
        raise DataError(f"DATASET: {name} is not a readable {fmt} shard "
                        f"({' '.join(str(error).split())[:200]})") from None


def _tar_examples(path: Path, wanted: Sequence[int], name: str) -> Iterator[Example]:
    chosen, last = set(wanted), wanted[-1]
    with tarfile.open(path, mode="r:") as tar:
        for position, sample in enumerate(samples(tar, chosen.__contains__)):
            if position in chosen:  # without a label, its image is left out as broken
                if sample.image is None or sample.label is None:
                    yield position, b"", -1, f"{name}#{sample.key}"
                else:
                    yield position, sample.image, sample.label, f"{name}#{sample.key}"
            if position >= last:
                return


def _records(handle: IO[bytes], stop: int | None, chosen: set[int] | None
             ) -> Iterator[tuple[int, bytes]]:
    """(position, serialized record) of a TFRecord file, up to `stop`; the records not in
    `chosen` are skipped (seeked over where the file allows)."""
    position = 0
    seekable = handle.seekable()
    while stop is None or position < stop:
        header = handle.read(_HEADER)
        if not header:
            return
        if len(header) < _HEADER:
            raise ValueError(f"record {position} is cut short")
        (length,) = struct.unpack("<Q", header[:8])
        if chosen is None or position in chosen:
            data = handle.read(length)
            if len(data) < length or len(handle.read(4)) < 4:
                raise ValueError(f"record {position} is cut short")
            yield position, data
        elif seekable:
            handle.seek(length + 4, 1)
        else:
            handle.read(length + 4)
        position += 1


def scan_stream(stream: IO[bytes], fmt: str, label_of: Callable[[bytes], tuple[int, int]],
                name: str) -> ShardScan:
    """Count a WebDataset or TFRecord shard read front to back from `stream` (an S3 object's body
    or a local file); `label_of(record)` gives a TFRecord's (label, image bytes)."""
    try:
        if fmt == "webdataset":
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                return scan_tar(tar)
        count, labels, image_bytes = 0, [], 0
        for _, record in _records(stream, None, None):
            label, size = label_of(record)
            count, image_bytes = count + 1, image_bytes + size
            labels.append(label)
    except (tarfile.TarError, EOFError, ValueError) as error:
        raise DataError(f"DATASET: {name} is not a readable {fmt} shard "
                        f"({' '.join(str(error).split())[:200]})") from None
    return ShardScan(count, min(labels, default=None), max(labels, default=None), image_bytes)


def first_payloads(stream: Any, fmt: str, count: int) -> list[bytes]:
    """The encoded images (TFRecords: serialized records) of a shard's first `count` examples,
    read from the front of `stream` (a WebDataset or TFRecord shard)."""
    found: list[bytes] = []
    try:
        if fmt == "webdataset":
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for sample in samples(tar):
                    found += [sample.image] if sample.image else []
                    if len(found) >= count:
                        break
        else:
            found = [record for _, record in _records(stream, count, None)]
    except (tarfile.TarError, EOFError, ValueError, OSError):
        pass  # the count names an unreadable shard
    return found


def shard_name(location: str) -> str:
    """A shard's file name, from a path or an s3:// URI."""
    return PurePosixPath(location).name

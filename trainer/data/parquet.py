"""Parquet shards in the Hugging Face image layout: an `image` column of structs whose `bytes`
hold the encoded image (or a binary column), an integer `label` column, and the class names in
the file's `huggingface` metadata (a `ClassLabel` feature's `names`).

    image, label, names = columns_of(pf.schema_arrow, "train-0.parquet")
    scan = scan_parquet(pf, (image, label))     # from the footer: rows, label statistics
    for position, encoded, label in rows(pf, (image, label), wanted):
        ...
    pq.ParquetFile(ObjectFile(store, key, size))      # a file in S3 read by ranges (its footer)

Counting reads the footer only (row counts, the label column's statistics); the images are read
when training reads the shard. pyarrow is imported inside the functions that use it (listing a
dataset must not wait for it). No TensorFlow here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

from trainer.data.shard_index import ShardScan
from trainer.errors import DataError

IMAGE_NAMES = ("image", "img", "jpg", "png")
LABEL_NAMES = ("label", "labels", "cls", "class")


def _features(schema: Any) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(b"huggingface")
    try:
        features = json.loads(raw).get("info", {}).get("features", {}) if raw else {}
    except (ValueError, AttributeError):
        return {}
    return features if isinstance(features, dict) else {}


def _holds_bytes(field: Any) -> bool:
    import pyarrow as pa

    kind = field.type
    if pa.types.is_struct(kind):
        return any(kind.field(i).name == "bytes" and _is_binary(kind.field(i).type)
                   for i in range(kind.num_fields))
    return _is_binary(kind)


def _is_binary(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(kind) or pa.types.is_large_binary(kind)


def columns_of(schema: Any, source: str) -> tuple[str, str, tuple[str, ...]]:
    """The image column, the label column and the class names (empty when the file has none)
    of a Parquet file's schema; a DataError naming `source` when it has no such columns."""
    import pyarrow as pa

    features = _features(schema)
    names = set(schema.names)
    typed = [n for n, f in features.items() if isinstance(f, dict) and n in names]
    images = [n for n in typed if features[n].get("_type") == "Image"]
    labels = [n for n in typed if features[n].get("_type") == "ClassLabel"]
    images += [n for n in IMAGE_NAMES if n in names and n not in images]
    labels += [n for n in LABEL_NAMES if n in names and n not in labels]
    image = next((n for n in images if _holds_bytes(schema.field(n))), None)
    label = next((n for n in labels if pa.types.is_integer(schema.field(n).type)), None)
    if image is None or label is None:
        raise DataError(f"DATASET: {source} has no image and label columns ({', '.join(names)}); "
                        "give Parquet files with an `image` column (struct with `bytes`, or "
                        "binary) and an integer `label` column, the Hugging Face image layout")
    class_names = features.get(label, {}).get("names") or ()
    return image, label, tuple(str(n) for n in class_names)


def scan_parquet(pf: Any, columns: tuple[str, str]) -> ShardScan:
    """Rows, label range and image bytes from the footer; the label column itself is read only
    when a row group carries no statistics for it."""
    image, label = columns
    meta = pf.metadata
    lows, highs, image_bytes = [], [], 0
    for group in range(meta.num_row_groups):
        chunks = meta.row_group(group)
        for column in range(chunks.num_columns):
            chunk = chunks.column(column)
            if chunk.path_in_schema == label:
                stats = chunk.statistics
                if stats is None or not stats.has_min_max:
                    values = pf.read_row_group(group, columns=[label]).column(0).drop_null()
                    if len(values):
                        lows.append(int(values.to_numpy().min()))
                        highs.append(int(values.to_numpy().max()))
                elif stats.num_values:
                    lows.append(int(stats.min))
                    highs.append(int(stats.max))
            elif chunk.path_in_schema.split(".")[0] == image:
                image_bytes += chunk.total_compressed_size
    return ShardScan(meta.num_rows, min(lows, default=None), max(highs, default=None),
                     image_bytes)


def rows(pf: Any, columns: tuple[str, str], wanted: Sequence[int]
         ) -> Iterator[tuple[int, bytes, int]]:
    """(position, encoded image, label) of the rows at the sorted positions `wanted`, reading only
    the row groups that hold them. A row without image bytes or label reads as b"", -1 (left out
    as a broken image)."""
    import pyarrow as pa

    image, label = columns
    meta = pf.metadata
    start = 0
    cursor = 0  # into wanted
    for group in range(meta.num_row_groups):
        stop = start + meta.row_group(group).num_rows
        if cursor >= len(wanted):
            return
        if wanted[cursor] >= stop:
            start = stop
            continue
        table = pf.read_row_group(group, columns=[image, label])
        pixels = table.column(image).combine_chunks()
        if pa.types.is_struct(pixels.type):
            pixels = pixels.field("bytes")
        encoded, labels = pixels.to_pylist(), table.column(label).to_pylist()
        while cursor < len(wanted) and wanted[cursor] < stop:
            row = wanted[cursor] - start
            data, value = encoded[row], labels[row]
            yield (wanted[cursor], b"", -1) if data is None or value is None else (
                wanted[cursor], data, int(value))
            cursor += 1
        start = stop


class ObjectFile(io.RawIOBase):
    """An object in S3 as a seekable read-only file, each read one ranged GET: what pyarrow
    needs to read a Parquet footer without the rest of the file."""

    def __init__(self, read_range: Any, key: str, size: int) -> None:
        super().__init__()
        self._read_range, self.key, self.size, self._position = read_range, key, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        length = min(len(buffer), self.size - self._position)
        if length <= 0:
            return 0
        data = self._read_range(self.key, self._position, length)
        buffer[:len(data)] = data
        self._position += len(data)
        return len(data)

"""Parquet shards in the Hugging Face image layout: columns and class names from the metadata,
counts from the footer (read by ranges, the images never), rows by position. No TensorFlow."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import write_hf_parquet

from trainer.data.parquet import ObjectFile, columns_of, rows, scan_parquet
from trainer.errors import DataError


def test_columns_and_class_names_come_from_the_hugging_face_metadata(tmp_path: Path) -> None:
    (path,) = write_hf_parquet(tmp_path, [0, 1, 2], shards=1, names=["cat", "dog", "eel"])
    assert columns_of(pq.read_schema(path), str(path)) == ("image", "label",
                                                           ("cat", "dog", "eel"))
    plain = pa.schema([("img", pa.binary()), ("fine", pa.int8()), ("label", pa.int32())])
    assert columns_of(plain, "cifar.parquet") == ("img", "label", ())
    with pytest.raises(DataError, match=r"no\.parquet has no image and label columns .*"
                                        r"Hugging Face image layout"):
        columns_of(pa.schema([("image", pa.string()), ("label", pa.int64())]), "no.parquet")


def test_a_file_in_storage_is_counted_from_its_footer_alone(tmp_path: Path) -> None:
    (path,) = write_hf_parquet(tmp_path, [3, 1, 4, 1, 5] * 8, shards=1, names=[], side=96,
                               row_group=20)
    data = path.read_bytes()
    asked: list[int] = []

    def read_range(key: str, start: int, length: int) -> bytes:  # what S3Store.read_range does
        asked.append(length)
        return data[start:start + length]

    scan = scan_parquet(pq.ParquetFile(ObjectFile(read_range, "k", len(data))),
                        ("image", "label"))
    assert (scan.count, scan.low, scan.high) == (40, 1, 5)
    assert scan.image_bytes > len(data) // 2
    assert sum(asked) < scan.image_bytes // 4  # the footer's ranges, not the images


def test_rows_are_read_by_position_across_row_groups(tmp_path: Path) -> None:
    (path,) = write_hf_parquet(tmp_path, list(range(10)) * 2, shards=1, names=[], row_group=6)
    table = pq.read_table(path)
    images = [row["bytes"] for row in table.column("image").to_pylist()]
    wanted = [1, 5, 6, 17, 19]
    found = list(rows(pq.ParquetFile(path), ("image", "label"), wanted))
    assert found == [(p, images[p], p % 10) for p in wanted]
    nulls = pa.table({"image": pa.array([b"x", None], pa.binary()), "label": [0, None]})
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    assert list(rows(pq.ParquetFile(tmp_path / "nulls.parquet"), ("image", "label"),
                     [0, 1])) == [(0, b"x", 0), (1, b"", -1)]

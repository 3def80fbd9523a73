"""WebDataset tars: samples grouped by key, labels from .cls or .json, counted without reading
the images. No TensorFlow."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from conftest import write_webdataset

from trainer.data.webdataset import samples, scan_tar


class CountingFile(io.RawIOBase):
    """A file that counts the bytes read from it (a seek reads nothing)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.handle = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.read_bytes = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.handle.seek(offset, whence)

    def tell(self) -> int:
        return self.handle.tell()

    def readinto(self, buffer) -> int:  # noqa: ANN001
        data = self.handle.read(len(buffer))
        buffer[:len(data)] = data
        self.read_bytes += len(data)
        return len(data)

    def close(self) -> None:
        self.handle.close()
        super().close()


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_samples_are_grouped_by_key_with_labels_from_cls_or_json(tmp_path: Path) -> None:
    path = _tar(tmp_path / "mixed.tar", [
        ("n01/0001.jpg", b"jpeg-1"), ("n01/0001.cls", b" 3\n"),
        ("n01/0002.png", b"png-2"), ("n01/0002.json", json.dumps({"label": 7}).encode()),
        ("._0003.png", b"AppleDouble"),  # macOS metadata, no sample
        ("0003.seg.png", b"a mask"), ("0003.png", b"png-3"),  # a field of its own
        ("0003.cls", b"not a number"),  # unreadable label
        ("0004.cls", b"1"),  # no image
        ("0005.png", b"png-5"), ("0005.json", b'{"label": true}'),  # a bool is no label
    ])
    with tarfile.open(path) as tar:
        found = list(samples(tar))
    assert [(s.key, s.image, s.label) for s in found] == [
        ("n01/0001", b"jpeg-1", 3), ("n01/0002", b"png-2", 7), ("0003", b"png-3", None),
        ("0004", None, 1), ("0005", b"png-5", None)]


def test_a_tar_is_counted_from_its_headers_and_labels_alone(tmp_path: Path) -> None:
    (path,) = write_webdataset(tmp_path, [0, 1, 2, 5] * 10, shards=1, side=48,
                               label_as="json")
    counting = CountingFile(path)
    with tarfile.open(fileobj=counting, mode="r:") as tar:
        scan = scan_tar(tar)
    assert (scan.count, scan.low, scan.high) == (40, 0, 5)
    assert scan.image_bytes > path.stat().st_size // 2  # the images are most of the file...
    assert counting.read_bytes < scan.image_bytes // 4  # ...and were not read
    with tarfile.open(path) as tar:  # wanted images only
        chosen = [s.image is not None for s in samples(tar, want_image=lambda p: p % 2 == 0)]
    assert chosen == [True, False] * 20

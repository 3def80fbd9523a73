"""WebDataset shards: `.tar` files whose members are grouped into samples by key, the member's
path up to the first dot of its file name (`n01440764/0001.jpg` and `n01440764/0001.cls` are one
sample), the members of a sample next to each other in the tar.

    for sample in samples(tar):        # tar: tarfile.open(path), or (fileobj=stream, mode="r|")
        sample.key, sample.image, sample.label
    scan = scan_tar(tar)                         # count and labels; image bytes skipped

A sample's image is its `.jpg`/`.jpeg`/`.png`/`.bmp`/`.gif` member; its label the integer in its
`.cls` member, or the `label` of its `.json` member. A sample without a readable image or label
is still a sample (a position in the shard), so that the count and the reader agree; it is read
as an empty image, which fails to decode and is left out and named like any broken image
(BAD_IMAGES). No TensorFlow here.
"""

from __future__ import annotations

import json
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from typing import NamedTuple

from trainer.data.shard_index import ShardScan

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "bmp", "gif")
LABEL_EXTENSIONS = ("cls", "json")


class Sample(NamedTuple):
    key: str
    image: bytes | None  # None when the sample has none, or it was not asked for
    label: int | None  # None when missing or unreadable
    image_bytes: int  # the image member's size, read or not


def _split(name: str) -> tuple[str, str]:
    """A member's (sample key, extension): `a/b.c.jpg` -> (`a/b`, `c.jpg`)."""
    folder, base = posixpath.split(name)
    stem, _, extension = base.partition(".")
    return posixpath.join(folder, stem), extension.lower()


def _label(extension: str, data: bytes) -> int | None:
    try:
        value = json.loads(data) if extension == "json" else int(data.decode().strip())
        if isinstance(value, dict):
            value = value.get("label")
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def samples(tar: tarfile.TarFile, want_image: Callable[[int], bool] = lambda position: True
            ) -> Iterator[Sample]:
    """The samples of `tar` in order (position 0, 1, ...). The image bytes are read only for the
    positions `want_image` accepts (a seekable tar skips the others without reading them)."""
    key: str | None = None
    image: bytes | None = None
    label: int | None = None
    size = 0
    position = 0
    for member in tar:
        base = posixpath.basename(member.name)
        if not member.isfile() or base.startswith("."):  # folders; AppleDouble `._x` files
            continue
        member_key, extension = _split(member.name)
        if member_key != key:
            if key is not None:
                yield Sample(key, image, label, size)
                position += 1
            key, image, label, size = member_key, None, None, 0
        if extension in IMAGE_EXTENSIONS and not size:
            size = member.size
            if want_image(position):
                image = _read(tar, member)
        elif extension in LABEL_EXTENSIONS and label is None:
            label = _label(extension, _read(tar, member))
    if key is not None:
        yield Sample(key, image, label, size)


def _read(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(member)
    return handle.read() if handle is not None else b""


def scan_tar(tar: tarfile.TarFile) -> ShardScan:
    """The shard's samples counted, with the range of their labels and their images' bytes,
    without reading the images."""
    count = image_bytes = 0
    labels: list[int] = []
    for sample in samples(tar, want_image=lambda position: False):
        count += 1
        image_bytes += sample.image_bytes
        if sample.label is not None:
            labels.append(sample.label)
    return ShardScan(count, min(labels, default=None), max(labels, default=None), image_bytes)

"""Image folders: one sub-folder of images per class, listed and checked fast at the start.

    found = scan_images(Path("/data/flowers/train"), ["daisy", "rose"])
    found.paths, found.labels, found.bad      # the good files, their labels, the broken ones

The listing leaves out hidden files and folders (names starting with "."), which includes the
AppleDouble `._photo.jpg` files macOS writes beside each file on foreign disks, `__MACOSX`
folders, and files without an image suffix. Each image is checked by its first and last bytes
only: an empty file, a file that is no PNG, JPEG, GIF or BMP (a text file named .jpg), and a file
that does not end as its format ends (a truncated download) are found without decoding. A file
whose end looks wrong is decoded once with Pillow to decide, as some cameras append data after a
JPEG's end marker. What this check misses is caught when TensorFlow decodes the file (see
trainer.data.decode_failures): left out the same way, never an internal error.

No TensorFlow here: the scan runs before the strategy is made.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from trainer.errors import first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
IGNORED_FOLDERS = ("__MACOSX",)
# Threads for the checks: they wait on the file system (a network volume), not on the CPU.
CHECK_THREADS = 16
# Images whose header gives the dataset's own side (spread over the sorted list).
SIDE_SAMPLE = 64

_PNG = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


@dataclass(frozen=True)
class BadImage:
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path} ({self.reason})"


@dataclass(frozen=True)
class FolderScan:
    paths: list[str]
    labels: np.ndarray
    bad: list[BadImage] = field(default_factory=list)
    ignored: int = 0  # hidden, AppleDouble and non-image files


def listed(relative: Path) -> bool:
    """Whether a file (its path below a class folder) is an image the dataset holds."""
    parts = relative.parts
    if any(part.startswith(".") or part in IGNORED_FOLDERS for part in parts):
        return False
    return relative.suffix.lower() in IMAGE_SUFFIXES


def _walk(folder: Path) -> tuple[list[Path], int]:
    """Image files below `folder`, sorted, and how many other files were left out."""
    found, ignored = [], 0
    for top, folders, files in os.walk(folder):
        folders[:] = [f for f in folders if not f.startswith(".") and f not in IGNORED_FOLDERS]
        for name in files:
            path = Path(top) / name
            if listed(path.relative_to(folder)):
                found.append(path)
            else:
                ignored += 1
    return sorted(found), ignored


def scan_images(folder: Path, class_names: list[str]) -> FolderScan:
    """The images of each class folder of `folder` (class i is `class_names[i]`), checked."""
    paths: list[Path] = []
    labels: list[int] = []
    ignored = 0
    for label, name in enumerate(class_names):
        if (folder / name).is_dir():
            files, skipped = _walk(folder / name)
            paths += files
            labels += [label] * len(files)
            ignored += skipped
    with ThreadPoolExecutor(CHECK_THREADS) as pool:
        reasons = list(pool.map(check_image, paths))
    good = [i for i, reason in enumerate(reasons) if reason is None]
    bad = [BadImage(str(paths[i]), reason) for i, reason in enumerate(reasons) if reason]
    return FolderScan([str(paths[i]) for i in good], np.asarray(labels, np.int64)[good],
                      bad, ignored)


def check_image(path: Path) -> str | None:
    """Why `path` is no usable image, or None: by its first and last bytes, and a full decode
    only when its end looks wrong."""
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - 32))
            tail = f.read(32)
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    kind = image_kind(head)
    if kind is None:
        return "not a PNG, JPEG, GIF or BMP image"
    if _ends_well(kind, head, tail, size):
        return None
    return _decodes(path)


def image_kind(head: bytes) -> str | None:
    """The format whose signature `head` starts with."""
    if head.startswith(_PNG):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM") and len(head) >= 6:
        return "bmp"
    return None


def _ends_well(kind: str, head: bytes, tail: bytes, size: int) -> bool:
    if kind == "png":
        return tail.endswith(_PNG_END)
    if kind == "jpeg":
        # Some writers pad after the end marker (EOI) with zeros or a newline.
        return tail.rstrip(b"\x00\r\n").endswith(b"\xff\xd9")
    if kind == "gif":
        return tail.rstrip(b"\x00").endswith(b";")
    return int.from_bytes(head[2:6], "little") <= size  # BMP: its header gives its size


def _decodes(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as error:
        detail = first_line(error)
        return f"truncated or corrupt: {detail}"
    return None


def typical_side(paths: Iterable[str], sample: int = SIDE_SAMPLE) -> int:
    """The dataset's own side: the median of the larger side of up to `sample` images spread
    evenly over the sorted list (Pillow reads only their headers), so it does not depend on
    which image a shuffle puts first."""
    paths = sorted(paths)
    if not paths:
        return 0
    chosen = sorted({int(i) for i in np.linspace(0, len(paths) - 1, min(sample, len(paths)))})
    sides = []
    for index in chosen:
        try:
            with Image.open(paths[index]) as image:
                sides.append(max(image.size))
        except (OSError, UnidentifiedImageError, ValueError):
            continue
    return int(np.median(sides)) if sides else 0

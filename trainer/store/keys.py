"""Object keys as local paths, never outside their folder.

A key comes from storage (a bucket listing, a manifest, a state pointer), so it is input: `/x`,
`a/../../x` or `..` joined to a folder naively would write anywhere the job can. Everything that
turns a key into a local path goes through `local_path`.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from trainer.errors import DataError


def local_path(base: Path, key: str) -> Path:
    """`base/key`, refusing keys that name somewhere else: absolute (`/x`), parent steps
    (`a/../../x`, `..`), or nothing at all (`.`)."""
    parts = [p for p in key.split("/") if p not in ("", ".")]
    if key.startswith("/") or ".." in parts or "\0" in key or not parts:
        raise DataError(f"the object key {key!r} would be stored outside {base}; the trainer "
                        "reads keys without a leading '/' and without '..' parts: rename it")
    return base.joinpath(*parts)


def check_layout(keys: list[str]) -> None:
    """Each key must map to its own file: S3 can hold `a` and `a/b`, a folder cannot."""
    files = ["/".join(p for p in key.split("/") if p not in ("", ".")) for key in keys]
    folders = {name.rsplit("/", depth)[0] for name in files
               for depth in range(1, name.count("/") + 1)}
    twice = {name for name, count in Counter(files).items() if count > 1}
    clashes = sorted((set(files) & folders) | twice)
    if clashes:
        raise DataError(f"the objects {clashes[:5]} cannot be stored as local files: a key is "
                        "both an object and a folder, or two keys differ only by '/' or '.'")

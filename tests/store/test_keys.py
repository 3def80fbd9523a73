"""Object keys become local paths only inside their folder (trainer.store.keys)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from trainer.errors import DataError
from trainer.store.keys import check_layout, local_path


@pytest.mark.parametrize("key", ["/x", "a/../../x", "..", "a/b/../../../etc/x", ".", ""])
def test_keys_that_would_leave_the_folder_are_refused_by_name(key: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(repr(key))) as caught:
        local_path(tmp_path / "cache", key)
    assert caught.value.exit_code == 3


def test_plain_keys_map_below_the_folder(tmp_path: Path) -> None:
    assert local_path(tmp_path, "train/cat/1.png") == tmp_path / "train" / "cat" / "1.png"
    assert local_path(tmp_path, "a/./b//c") == tmp_path / "a" / "b" / "c"
    assert local_path(tmp_path, "..x/y..") == tmp_path / "..x" / "y.."  # dots in a name: fine


def test_keys_that_cannot_all_be_files_are_refused() -> None:
    check_layout(["a/b", "a/c", "ab"])
    with pytest.raises(DataError, match=r"\['a'\]"):
        check_layout(["a", "a/b"])  # S3 holds both; a folder cannot
    with pytest.raises(DataError, match=r"\['a/b'\]"):
        check_layout(["a//b", "a/b"])

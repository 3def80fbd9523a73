"""The background uploader: files land in order, and nothing makes the end of a run hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from trainer.storage import LocalStore
from trainer.uploader import Uploader


def test_a_file_removed_after_it_was_queued_is_skipped(tmp_path: Path) -> None:
    store = LocalStore(str(tmp_path / "bucket"))
    uploader = Uploader(store)
    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    # A pruned state file: queued, then removed before the uploader reached it.
    uploader.submit("run/state/old.index", tmp_path / "gone.index")
    uploader.submit("run/kept.json", kept)
    started = time.monotonic()
    uploader.flush(timeout=60)
    assert time.monotonic() - started < 30
    assert (tmp_path / "bucket" / "run" / "kept.json").read_text() == "{}"
    assert not (tmp_path / "bucket" / "run" / "state" / "old.index").exists()


def test_an_unexpected_upload_error_ends_the_wait_with_that_error(tmp_path: Path) -> None:
    uploader = Uploader(LocalStore(str(tmp_path / "bucket")))
    uploader.submit("run/best.h5", tmp_path)  # a folder where a file belongs
    with pytest.raises(IsADirectoryError):
        uploader.flush(timeout=60)

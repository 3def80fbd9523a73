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


def test_sigterm_cuts_the_final_wait_short_with_exit_143(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from trainer.errors import Terminated
    from trainer.s3 import S3Store

    for name, value in (("AWS_ACCESS_KEY_ID", "key"), ("AWS_SECRET_ACCESS_KEY", "secret"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    # Nothing listens on port 9 of loopback: every attempt fails as unreachable.
    store = S3Store("s3://bucket/runs", endpoint_url="http://127.0.0.1:9")
    uploader = Uploader(store)
    best = tmp_path / "best.h5"
    best.write_bytes(b"model")
    uploader.submit("run/best.h5", best)
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    with pytest.raises(Terminated, match="best.h5") as caught:
        uploader.flush(timeout=600, stop=stop, stop_grace=1.0)
    assert caught.value.exit_code == 143 and time.monotonic() - started < 60
    assert best.read_bytes() == b"model"

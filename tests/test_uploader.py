"""The background uploader: files land in order, as they were when handed over, deletes wait for
every upload, and nothing makes the end of a run hang."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from trainer.errors import Terminated
from trainer.s3 import S3Store
from trainer.storage import LocalStore
from trainer.uploader import Uploader


class RecordingStore(LocalStore):
    """A local store that also records the order of what reached it."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.log: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def put_file(self, key: str, path: Path) -> None:
        self.gate.wait(timeout=30)
        super().put_file(key, path)
        self.log.append(f"put {key} {path.read_text()}")

    def delete(self, key: str) -> None:
        super().delete(key)
        self.log.append(f"delete {key}")


def test_what_is_uploaded_is_the_file_as_it_was_handed_over(tmp_path: Path) -> None:
    store = RecordingStore(str(tmp_path / "bucket"))
    store.gate.clear()  # storage slow: nothing goes out yet
    uploader = Uploader(store, staging=tmp_path / "staging")
    best = tmp_path / "best.h5"
    best.write_text("epoch 1")
    uploader.submit("run/best.h5", best)
    best.unlink()  # replaced (a newer best) or pruned while the upload waits
    best.write_text("epoch 2, being written")
    other = tmp_path / "history.json"
    other.write_text("[1]")
    uploader.submit("run/history.json", other)
    store.gate.set()
    uploader.flush(timeout=60)
    assert store.log == ["put run/best.h5 epoch 1", "put run/history.json [1]"]
    assert not list((tmp_path / "staging").iterdir())  # no snapshot left behind


def test_deletes_wait_until_no_upload_is_pending(tmp_path: Path) -> None:
    """The resume state's invariant: old states go only after the newest pointer is stored."""
    store = RecordingStore(str(tmp_path / "bucket"))
    store.gate.clear()
    uploader = Uploader(store, staging=tmp_path / "staging")
    files = {}
    for name in ("ckpt-2", "pointer-2", "ckpt-3", "pointer-3"):
        files[name] = tmp_path / name
        files[name].write_text(name)
    uploader.submit("run/state/ckpt-2", files["ckpt-2"])
    uploader.submit("run/state/LATEST.json", files["pointer-2"])
    uploader.submit_delete("run/state/ckpt-0")
    uploader.submit("run/state/ckpt-3", files["ckpt-3"])
    uploader.submit("run/state/LATEST.json", files["pointer-3"])  # moves behind ckpt-3
    uploader.submit_delete("run/state/ckpt-1")
    store.gate.set()
    uploader.flush(timeout=60)
    assert store.log == ["put run/state/ckpt-2 ckpt-2", "put run/state/ckpt-3 ckpt-3",
                         "put run/state/LATEST.json pointer-3", "delete run/state/ckpt-0",
                         "delete run/state/ckpt-1"]


def test_a_delete_drops_a_pending_upload_of_the_same_key(tmp_path: Path) -> None:
    store = RecordingStore(str(tmp_path / "bucket"))
    store.gate.clear()
    uploader = Uploader(store, staging=tmp_path / "staging")
    old = tmp_path / "old"
    old.write_text("old state")
    uploader.submit("run/state/ckpt-1", old)
    uploader.submit_delete("run/state/ckpt-1")
    store.gate.set()
    uploader.flush(timeout=60)
    assert store.log == ["delete run/state/ckpt-1"]


def test_an_unexpected_upload_error_ends_the_wait_with_that_error(tmp_path: Path) -> None:
    class Broken(LocalStore):
        def put_file(self, key: str, path: Path) -> None:
            raise IsADirectoryError(key)

    uploader = Uploader(Broken(str(tmp_path / "bucket")), staging=tmp_path / "staging")
    (tmp_path / "best.h5").write_bytes(b"model")
    uploader.submit("run/best.h5", tmp_path / "best.h5")
    with pytest.raises(IsADirectoryError):
        uploader.flush(timeout=60)


def test_sigterm_cuts_the_final_wait_short_with_exit_143(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "key"), ("AWS_SECRET_ACCESS_KEY", "secret"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    # Nothing listens on port 9 of loopback: every attempt fails as unreachable.
    store = S3Store("s3://bucket/runs", endpoint_url="http://127.0.0.1:9")
    uploader = Uploader(store, staging=tmp_path / "staging")
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

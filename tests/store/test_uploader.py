"""The background uploader: files land in order, as they were when handed over, deletes wait for
every upload, and nothing makes the end of a run hang."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import TINY_JOB, Job, S3Server, clean_environ, trainer_log

import trainer.ticker
from trainer.errors import Terminated, TransientError
from trainer.store.s3 import S3Store
from trainer.store.stores import LocalStore, Progress
from trainer.store.uploader import Uploader

if TYPE_CHECKING:
    from collections.abc import Callable

    from faults import FaultProxy


class RecordingStore(LocalStore):
    """A local store that also records the order of what reached it."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.log: list[str] = []
        self.gate = threading.Event()
        self.gate.set()

    def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
        self.gate.wait(timeout=30)
        super().put_file(key, path, progress)
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


def test_an_upload_drops_a_pending_delete_of_the_same_key(tmp_path: Path) -> None:
    """A key deleted (a pruned best) then written again: the delete must not run after the new
    upload and remove it (make mutate found this untested)."""
    store = RecordingStore(str(tmp_path / "bucket"))
    store.gate.clear()
    uploader = Uploader(store, staging=tmp_path / "staging")
    busy = tmp_path / "busy"
    busy.write_text("busy")
    uploader.submit("run/busy", busy)  # the worker waits in this upload until the gate opens
    uploader.submit_delete("run/best.h5")
    best = tmp_path / "best.h5"
    best.write_text("new best")
    uploader.submit("run/best.h5", best)
    store.gate.set()
    uploader.flush(timeout=60)
    assert store.log == ["put run/busy busy", "put run/best.h5 new best"]


def test_an_unexpected_upload_error_ends_the_wait_with_that_error(tmp_path: Path) -> None:
    class Broken(LocalStore):
        def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
            raise IsADirectoryError(key)

    uploader = Uploader(Broken(str(tmp_path / "bucket")), staging=tmp_path / "staging")
    (tmp_path / "best.h5").write_bytes(b"model")
    uploader.submit("run/best.h5", tmp_path / "best.h5")
    with pytest.raises(IsADirectoryError):
        uploader.flush(timeout=60)


def test_files_handed_over_during_an_outage_do_not_cut_the_backoff_short(
        tmp_path: Path, warnings_logged: list[logging.LogRecord]) -> None:
    """One failed upload, one retry after the backoff: every file an epoch hands over while
    storage is down wakes the uploader, and must not make it try (and log "retrying in N s")
    again at once."""
    attempts: list[str] = []
    failed = threading.Event()

    class Down(LocalStore):
        def put_file(self, key: str, path: Path, progress: Progress | None = None) -> None:
            attempts.append(key)
            failed.set()
            raise TransientError("connection refused")

    uploader = Uploader(Down(str(tmp_path / "bucket")), staging=tmp_path / "staging",
                        first_backoff=600)
    for name in ("best.h5", "history.json", "history.csv", "curves.png", "LATEST.json"):
        (tmp_path / name).write_text(name)
        uploader.submit(f"run/{name}", tmp_path / name)
        assert failed.wait(timeout=60)
    deadline = time.monotonic() + 3  # long enough for a woken worker to try again
    while len(attempts) == 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    uploader.close()
    assert attempts == ["run/best.h5"]
    retrying = [r.getMessage() for r in warnings_logged if "retrying in" in r.getMessage()]
    assert retrying == ["upload of run/best.h5 failed, retrying in 600 s: connection refused"]


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
    # What is true: a rerun does not read the local copies; where each belongs is named.
    message = str(caught.value)
    assert "(for s3://bucket/runs/run/best.h5)" in message, message
    assert message.endswith("a rerun with the same RUN_ID resumes from the newest state that "
                            "reached storage without reading them: to keep them, copy each to "
                            "its place in storage before the rerun")


def test_the_final_drain_logs_files_and_bytes_as_they_are_stored(
        s3_server: S3Server, fault_proxy: FaultProxy, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The uploads still pending when training ends: a line at least every PROGRESS_SECONDS
    (shortened here) with the files and bytes stored, s3transfer's own count of the bytes."""
    for name, value in s3_server.env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(trainer.ticker, "PROGRESS_SECONDS", 0.1)
    store = S3Store(f"s3://{s3_server.new_bucket()}/runs", fault_proxy.endpoint, "path")
    fault_proxy.set("throttle", rate=1_000_000, direction="up")  # 1.2 MB: about 1.2 s
    uploader = Uploader(store, staging=tmp_path / "staging")
    for number in range(3):
        (tmp_path / f"part-{number}").write_bytes(os.urandom(400_000))
        uploader.submit(f"run/part-{number}", tmp_path / f"part-{number}")
    uploader.submit_delete("run/old")
    with trainer_log(logging.INFO) as records:
        uploader.flush(timeout=60)
    lines = [vars(r) for r in records if getattr(r, "step", None) == "upload"]
    assert len(lines) >= 3
    assert [lines[-1][k] for k in ("done", "total", "bytes_done", "bytes_total")] == [
        4, 4, 1_200_000, 1_200_000]
    assert lines[-1]["msg"].startswith(f"upload {store.uri} finished: 4/4, 1.2 of 1.2 MB")
    assert any(line["bytes_done"] % 400_000 for line in lines)  # counted within a file
    for field in ("done", "bytes_done"):
        counts = [line[field] for line in lines]
        assert counts == sorted(counts), counts


def test_an_outage_then_its_drain_never_leave_the_store_without_a_state(
        s3_server: S3Server, fault_proxy: FaultProxy, tiny_npz: Path, tmp_path: Path) -> None:
    """Storage down (refused, then resets in the middle of uploads) for epochs 2-4, back, and
    the pod killed while the backlog drains: at every moment the store holds a complete state
    that its stored pointer lists, and a new pod resumes from at least the epoch the store had
    before the outage. The job talks to the server through a proxy that makes the faults."""
    bucket = s3_server.new_bucket()
    # MobileNet: checkpoints a fifth of VGG16's, so the drain takes seconds, not a minute.
    env = clean_environ(TINY_JOB, s3_server.env(), DATASET=str(tiny_npz), EPOCHS="4",
                        BACKBONE="MobileNet",
                        VALIDATION_SPLIT="0.25", LEARNING_RATE="1e-4", RUN_ID="drained",
                        ARTIFACT_URI=f"s3://{bucket}/runs", S3_ENDPOINT_URL=fault_proxy.endpoint)
    watcher = StoreWatcher(s3_server.client(), bucket, "runs/drained/")
    watcher.start()
    try:
        job = Job({**env, "WORK_DIR": str(tmp_path / "work-1")})
        deadline = time.monotonic() + 300
        while watcher.newest_epoch < 1:
            assert job.process.poll() is None and time.monotonic() < deadline, job.lines[-3:]
            time.sleep(0.02)
        before_outage = watcher.newest_epoch
        fault_proxy.set("refuse")
        job.wait_for("epoch 4/4")  # trained on, everything since epoch 1 waiting locally
        assert watcher.newest_epoch == before_outage
        # Back, but flaky: the first uploads are cut off in the middle (multipart state data
        # and best.h5 too). The uploader tries again when its backoff (up to 30 s) is over.
        fault_proxy.set("reset", after=2_000_000, direction="up", times=3)
        _wait(lambda: fault_proxy.resets == 3, job, "the drain's first uploads cut off")
        assert watcher.newest_epoch == before_outage  # a state's data is more than 2 MB
        # Then slow to answer: the drain goes on, and the files after the state (evaluation,
        # report, then the manifest) take seconds, so that the pod is lost in the middle of
        # the drain, with a state stored during it.
        fault_proxy.set("delay", seconds=0.1)
        _wait(lambda: watcher.newest_epoch > before_outage, job, "a state stored in the drain")
        job.process.kill()
        code, _ = job.finish(timeout=30)
        stored = watcher.newest_epoch
        assert code == -9 and not watcher.has("manifest.json")  # killed before it finished
        fault_proxy.set("pass")

        again = Job({**env, "WORK_DIR": str(tmp_path / "work-2")})  # a new pod
        code, stderr = again.finish()
        assert code == 0, stderr[-2000:]
        # It resumes from the state stored in the drain (or one stored after the last look).
        assert again.resumed()[0] >= stored + 1 > before_outage + 1
    finally:
        watcher.stop()
    assert watcher.checks > 20 and not watcher.violations, watcher.violations[:3]
    objects = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="runs/drained/")
    names = {o["Key"].split("/", 2)[2] for o in objects.get("Contents", [])}
    manifest = json.loads(s3_server.client().get_object(
        Bucket=bucket, Key="runs/drained/manifest.json")["Body"].read())
    # Every artifact in the manifest (the state files too, but for earlier states that the last
    # pod did not need to download).
    assert manifest["epochs_done"] == 4
    assert {n for n in manifest["artifacts"] if not n.startswith("state/")} == {
        n for n in names if not n.startswith("state/")} - {"manifest.json"}
    best = s3_server.client().get_object(Bucket=bucket, Key="runs/drained/best.h5")
    assert hashlib.sha256(best["Body"].read()).hexdigest() == manifest["artifacts"]["best.h5"][
        "sha256"]


def _wait(happened: Callable[[], bool], job: Job, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not happened():
        assert job.process.poll() is None, f"the job ended before {what}: {job.lines[-3:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s: {job.lines[-3:]}"
        time.sleep(0.02)


class StoreWatcher(threading.Thread):
    """Reads the store as often as it can: the pointer, and whether every file of at least one
    state it lists is there. An S3 object is there whole or not at all, so present is complete."""

    def __init__(self, client: object, bucket: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.client, self.bucket, self.prefix = client, bucket, prefix
        self.newest_epoch = 0
        self.checks = 0
        self.violations: list[str] = []
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            time.sleep(0.01)
            pointer = self._pointer()
            if pointer is None:
                continue
            listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix)
            keys = {o["Key"][len(self.prefix):] for o in listing.get("Contents", [])}
            if self._pointer() != pointer:
                continue  # replaced meanwhile: what it listed may rightly be gone
            self.checks += 1
            if any(set(state["files"]) <= keys for state in pointer["states"]):
                self.newest_epoch = max(self.newest_epoch, pointer["states"][0]["epoch"])
            else:
                self.violations.append(f"no complete state: {pointer} with {sorted(keys)}")

    def _pointer(self) -> dict | None:
        try:
            raw = self.client.get_object(Bucket=self.bucket,
                                         Key=f"{self.prefix}state/LATEST.json")["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None
        return json.loads(raw)

    def has(self, name: str) -> bool:
        listing = self.client.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + name)
        return any(o["Key"] == self.prefix + name for o in listing.get("Contents", []))

    def stop(self) -> None:
        self._done.set()
        self.join(timeout=30)

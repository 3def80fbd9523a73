"""S3 storage against real servers on loopback (rclone serve s3 and moto_server)."""

from __future__ import annotations

import hashlib
import json
import logging
import logging.handlers
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from boto3.s3.transfer import TransferConfig
from conftest import (
    S3_SECRET,
    TINY_JOB,
    Job,
    S3Server,
    clean_environ,
    json_lines,
    run_entrypoint,
)
from faults import FaultProxy

from trainer.errors import ConfigError, DataError, StorageError, TransientError
from trainer.logs import get_logger
from trainer.store.s3 import ClientLimits, S3Store, client_config, download_uri, list_uri


def _store(server: S3Server, bucket: str, prefix: str = "") -> S3Store:
    return S3Store(f"s3://{bucket}/{prefix}".rstrip("/"), server.endpoint, "path")


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """The session server's credentials, for the tests that talk to one."""
    if "s3_server" in request.fixturenames:
        for name, value in request.getfixturevalue("s3_server").env().items():
            monkeypatch.setenv(name, value)


def test_custom_endpoints_send_checksums_only_when_required(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(s3_server, "any")
    assert store.client.meta.config.request_checksum_calculation == "when_required"
    assert store.client.meta.config.response_checksum_validation == "when_required"
    assert store.client.meta.config.s3["addressing_style"] == "path"
    assert store.client.meta.config.retries["mode"] == "standard"
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    aws = client_config(None, "auto")
    assert aws.request_checksum_calculation == "when_supported"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server.endpoint)
    assert client_config(None, "auto").request_checksum_calculation == "when_required"
    assert S3Store("s3://any").client.meta.endpoint_url == s3_server.endpoint


def test_put_read_get_and_list(s3_server: S3Server, tmp_path: Path) -> None:
    store = _store(s3_server, s3_server.new_bucket(), "team/runs")
    store.check_writable()
    source = tmp_path / "file.bin"
    source.write_bytes(b"x" * 70_000)
    store.put_file("run-a/best.h5", source)
    store.put_file("run-b/config.json", source)
    assert store.read_bytes("run-a/best.h5") == source.read_bytes()
    assert store.read_bytes("run-a/missing.json") is None
    assert store.get_file("run-a/best.h5", tmp_path / "out" / "best.h5")
    assert (tmp_path / "out" / "best.h5").read_bytes() == source.read_bytes()
    assert not store.get_file("run-a/nope", tmp_path / "nope")
    assert store.list_runs() == ["run-a", "run-b"]


def test_a_missing_bucket_is_refused_with_its_name(s3_server: S3Server) -> None:
    with pytest.raises(StorageError, match=r"s3://no-such-bucket-x .*does not exist"):
        _store(s3_server, "no-such-bucket-x").check_writable()


def test_an_unreachable_endpoint_is_transient_and_quick(s3_server: S3Server) -> None:
    store = S3Store("s3://bucket", "http://127.0.0.1:9", "path")
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"127.0.0.1:9"):
        store.check_writable()
    assert time.monotonic() - started < 30


def test_credentials_in_the_endpoint_never_reach_a_message(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (("AWS_ACCESS_KEY_ID", "key"), ("AWS_SECRET_ACCESS_KEY", "secret"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    store = S3Store("s3://bucket", "http://user:tok3n-Zq@127.0.0.1:9", "path",
                    limits=ClientLimits(1, 1, 0))
    with pytest.raises(TransientError) as caught:
        store.read_bytes("x")
    assert "***@127.0.0.1:9" in str(caught.value) and "tok3n" not in str(caught.value)
    with pytest.raises(ConfigError, match="S3_ENDPOINT_URL"):
        S3Store("s3://bucket", "not a url")


def test_a_malformed_location_is_a_config_error_naming_it(s3_server: S3Server,
                                                          tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"s3://bad!bucket .*Invalid bucket name") as caught:
        _store(s3_server, "bad!bucket").check_writable()
    assert caught.value.exit_code == 2
    with pytest.raises(ConfigError, match=r"s3://bad!bucket/data"):
        download_uri("s3://bad!bucket/data", tmp_path, s3_server.endpoint, "path")


# --- download_uri: a prefix mirrored into the cache ---


def _put(server: S3Server, bucket: str, objects: dict[str, bytes]) -> None:
    client = server.client()
    for key, body in objects.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_prefix_is_mirrored_and_unchanged_objects_are_kept(s3_server: S3Server,
                                                             tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    _put(s3_server, bucket, {"sets/a/train/cat/1.png": b"one", "sets/a/train/dog/1.png": b"two",
                             "sets/a/train/dog/2.png": b"three", "sets/ab/other.png": b"no"})
    uri = f"s3://{bucket}/sets/a"
    folder = download_uri(uri, tmp_path, s3_server.endpoint, "path")
    assert folder == tmp_path / bucket / "sets" / "a"
    assert _files(folder) == {"train/cat/1.png": b"one", "train/dog/1.png": b"two",
                              "train/dog/2.png": b"three"}  # only data: no markers, no temps
    cat, dog = folder / "train" / "cat" / "1.png", folder / "train" / "dog" / "1.png"
    before = cat.stat().st_mtime_ns
    time.sleep(0.01)

    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="sets/a/train/dog/1.png", Body=b"changed")
    client.delete_object(Bucket=bucket, Key="sets/a/train/dog/2.png")
    (folder / "train" / "cat" / "stray.png").write_bytes(b"left by a killed download")
    download_uri(uri + "/", tmp_path, s3_server.endpoint, "path")
    assert cat.stat().st_mtime_ns == before  # unchanged: not fetched again
    assert _files(folder) == {"train/cat/1.png": b"one", "train/dog/1.png": b"changed"}

    dog.write_bytes(b"edited here")  # a local change is undone too
    download_uri(uri, tmp_path, s3_server.endpoint, "path")
    assert dog.read_bytes() == b"changed"

    client.delete_object(Bucket=bucket, Key="sets/a/train/dog/1.png")
    download_uri(uri, tmp_path, s3_server.endpoint, "path")
    assert sorted(p.name for p in (folder / "train").iterdir()) == ["cat"]  # empty folder gone


def test_one_object_is_fetched_beside_its_siblings_untouched(s3_server: S3Server,
                                                           tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    _put(s3_server, bucket, {"w/start.weights.h5": b"w1", "w/start.weights.h5.bak": b"w0"})
    path = download_uri(f"s3://{bucket}/w/start.weights.h5", tmp_path, s3_server.endpoint, "path")
    assert path == tmp_path / bucket / "w" / "start.weights.h5" and path.read_bytes() == b"w1"
    (path.parent / "mine.txt").write_bytes(b"kept")
    download_uri(f"s3://{bucket}/w/start.weights.h5", tmp_path, s3_server.endpoint, "path")
    assert _files(path.parent) == {"start.weights.h5": b"w1", "mine.txt": b"kept"}
    with pytest.raises(DataError, match=f"s3://{bucket}/nothing holds no objects"):
        download_uri(f"s3://{bucket}/nothing", tmp_path, s3_server.endpoint, "path")


def test_a_worker_fetches_only_the_objects_it_selects(s3_server: S3Server,
                                                      tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    parts = {f"records/part-{i}.tfrecord": bytes([i]) * 10 for i in range(5)}
    _put(s3_server, bucket, parts)
    uri = f"s3://{bucket}/records"
    names = list_uri(uri, s3_server.endpoint, "path")
    assert names == [f"part-{i}.tfrecord" for i in range(5)]
    mine = set(names[1::2])  # worker 1 of 2
    folder = download_uri(uri, tmp_path, s3_server.endpoint, "path", select=mine.__contains__)
    assert _files(folder) == {"part-1.tfrecord": b"\1" * 10, "part-3.tfrecord": b"\3" * 10}
    theirs = set(names[0::2])
    download_uri(uri, tmp_path, s3_server.endpoint, "path", select=theirs.__contains__)
    assert len(_files(folder)) == 5  # a selection leaves the others' files alone


def test_a_bucket_with_escaping_keys_is_refused_before_any_download(
        s3_server: S3Server, tmp_path: Path) -> None:
    if s3_server.kind == "rclone":
        pytest.skip("rclone refuses such keys itself (InvalidArgument); moto stores them")
    bucket = s3_server.new_bucket()
    _put(s3_server, bucket, {"sets/a/good.png": b"ok", "sets/a/../../escaped": b"evil",
                             "sets/a//abs": b"evil"})
    with pytest.raises(DataError, match=r"'\.\./\.\./escaped'|'/abs'"):
        download_uri(f"s3://{bucket}/sets/a", tmp_path / "cache", s3_server.endpoint, "path")
    assert not [p for p in tmp_path.rglob("*") if p.is_file() and p.name != ".lock"]
    with pytest.raises(DataError, match="sets/a/../../escaped"):
        download_uri(f"s3://{bucket}/sets/a/../../escaped", tmp_path / "cache",
                     s3_server.endpoint, "path")


def test_long_downloads_log_their_progress(s3_server: S3Server, fault_proxy: FaultProxy,
                                           tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    _put(s3_server, bucket, {f"many/{i:03}.bin": b"x" * 20_000 for i in range(30)})
    records = logging.handlers.BufferingHandler(capacity=10_000)
    get_logger().addHandler(records)
    level = get_logger().level
    get_logger().setLevel("INFO")
    fault_proxy.set("throttle", rate=400_000)  # 600 kB over 4 connections: about 0.4 s
    try:
        download_uri(f"s3://{bucket}/many", tmp_path, fault_proxy.endpoint, "path",
                     concurrency=4, progress_seconds=0.1)
    finally:
        get_logger().removeHandler(records)
        get_logger().setLevel(level)
    lines = [vars(r) for r in records.buffer if "s3://" in r.getMessage()]
    assert len(lines) >= 2
    assert lines[-1]["msg"].startswith(f"download s3://{bucket}/many/ finished: 30/30")
    assert [lines[-1][k] for k in ("step", "done", "total", "bytes_done", "bytes_total")] == [
        "download", 30, 30, 600_000, 600_000]
    assert lines[0]["msg"].startswith("download s3://") and lines[0]["done"] < 30
    done = [line["bytes_done"] for line in lines]
    assert done == sorted(done)


# --- Real network faults through tests/faults.py's proxy (both servers) ---

FAST = ClientLimits(connect_timeout=1, read_timeout=1, max_attempts=1)  # two tries of 1 s


def test_the_proxy_resets_with_a_real_rst(s3_server: S3Server, fault_proxy: FaultProxy) -> None:
    fault_proxy.set("reset", after=10, direction="up")
    with socket.create_connection(("127.0.0.1", fault_proxy.port), timeout=5) as client:
        client.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        with pytest.raises(ConnectionResetError):  # a FIN would read as b"" instead
            client.recv(100)
    assert fault_proxy.resets == 1


def test_a_reset_mid_multipart_upload_leaves_the_old_object_or_the_new_never_a_mix(
        s3_server: S3Server, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    store = S3Store(f"s3://{s3_server.new_bucket()}/runs", fault_proxy.endpoint, "path",
                    limits=FAST)
    old, new = tmp_path / "old.h5", tmp_path / "new.h5"
    old.write_bytes(os.urandom(300_000))
    new.write_bytes(os.urandom(20_000_000))
    assert new.stat().st_size > 2 * TransferConfig().multipart_threshold  # three parts
    store.put_file("run/best.h5", old)

    def stored() -> str:
        return hashlib.sha256(store.read_bytes("run/best.h5") or b"").hexdigest()

    # Every connection is cut after 3 MB of upload, mid-part, retries included.
    fault_proxy.set("reset", after=3_000_000, direction="up")
    with pytest.raises(TransientError, match="run/best.h5"):
        store.put_file("run/best.h5", new)
    assert fault_proxy.resets >= 2
    fault_proxy.set("pass")
    assert stored() == hashlib.sha256(old.read_bytes()).hexdigest()

    # One connection cut: botocore's retry of that part completes the upload in the same call.
    fault_proxy.set("reset", after=3_000_000, direction="up", times=1)
    resets = fault_proxy.resets
    store.put_file("run/best.h5", new)
    assert fault_proxy.resets == resets + 1
    assert stored() == hashlib.sha256(new.read_bytes()).hexdigest()
    if s3_server.kind == "moto":  # moto's ETag shows the parts; rclone's is the whole MD5
        head = s3_server.client().head_object(Bucket=store.bucket, Key="runs/run/best.h5")
        assert head["ETag"].endswith('-3"')


def test_a_stall_becomes_a_transient_read_timeout(s3_server: S3Server, fault_proxy: FaultProxy,
                                                  tmp_path: Path) -> None:
    store = S3Store(f"s3://{s3_server.new_bucket()}", fault_proxy.endpoint, "path",
                    limits=FAST._replace(read_timeout=0.5))
    source = tmp_path / "state.bin"
    source.write_bytes(b"s" * 1000)
    store.put_file("state.bin", source)
    fault_proxy.set("stall")
    started = time.monotonic()
    with pytest.raises(TransientError, match=r"state.bin .*ReadTimeoutError") as caught:
        store.read_bytes("state.bin")
    assert caught.value.exit_code == 75 and time.monotonic() - started < 15
    with pytest.raises(TransientError, match="ReadTimeoutError"):
        store.put_file("state.bin", source)
    fault_proxy.set("pass")
    assert store.read_bytes("state.bin") == source.read_bytes()


def test_a_refused_connection_is_transient(s3_server: S3Server, fault_proxy: FaultProxy,
                                           tmp_path: Path) -> None:
    store = S3Store(f"s3://{s3_server.new_bucket()}", fault_proxy.endpoint, "path", limits=FAST)
    store.check_writable()  # a pooled connection is open: refusing must close it too
    fault_proxy.set("refuse")
    for call in (store.check_writable, lambda: store.read_bytes("x"),
                 lambda: download_uri(f"s3://{store.bucket}/x", tmp_path,
                                      fault_proxy.endpoint, "path", limits=FAST)):
        with pytest.raises(TransientError, match="EndpointConnectionError") as caught:
            call()
        assert caught.value.exit_code == 75
    fault_proxy.set("pass")
    store.check_writable()


def test_a_throttled_link_is_slow_but_completes(s3_server: S3Server, fault_proxy: FaultProxy,
                                                tmp_path: Path) -> None:
    store = S3Store(f"s3://{s3_server.new_bucket()}", fault_proxy.endpoint, "path",
                    limits=ClientLimits(connect_timeout=2, read_timeout=10, max_attempts=2))
    source = tmp_path / "model.h5"
    source.write_bytes(os.urandom(1_000_000))
    fault_proxy.set("throttle", rate=1_000_000)
    started = time.monotonic()
    store.put_file("model.h5", source)
    assert store.read_bytes("model.h5") == source.read_bytes()
    assert time.monotonic() - started >= 1.5  # 2 MB through a 1 MB/s link: the proxy throttled


def test_a_download_cut_mid_response_is_retried_and_never_cached_half(
        s3_server: S3Server, fault_proxy: FaultProxy, tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    body = os.urandom(2_000_000)
    _put(s3_server, bucket, {"data/big.npz": body, "data/small.npz": b"small"})
    uri = f"s3://{bucket}/data"
    fault_proxy.set("reset", after=500_000, direction="down")  # every response cut short
    with pytest.raises(TransientError, match="big.npz"):
        download_uri(uri, tmp_path, fault_proxy.endpoint, "path", limits=FAST)
    assert not (tmp_path / bucket / "data" / "big.npz").exists()
    assert all(p.name in ("small.npz", ".lock") or p.is_dir() for p in tmp_path.rglob("*")
               if ".etags" not in p.parts)
    fault_proxy.set("reset", after=500_000, direction="down", times=1)  # s3transfer retries
    folder = download_uri(uri, tmp_path, fault_proxy.endpoint, "path", limits=FAST)
    assert _files(folder) == {"big.npz": body, "small.npz": b"small"}


def _objects(server: S3Server, bucket: str, prefix: str) -> dict[str, bytes]:
    client = server.client()
    listing = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"][len(prefix):]: client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
            for o in listing}


def _assert_manifest_matches(objects: dict[str, bytes]) -> dict:
    manifest = json.loads(objects["manifest.json"])
    assert manifest["status"] == "finished"
    for name, entry in manifest["artifacts"].items():
        assert entry == {"size": len(objects[name]),
                         "sha256": hashlib.sha256(objects[name]).hexdigest()}, name
    return manifest


def test_a_run_into_s3_then_fetch_and_predict(moto_s3: S3Server, tiny_npz: Path,
                                              tmp_path: Path) -> None:
    """Everything through S3 once (moto: its wide S3; the resume and multi-worker scenarios
    run on rclone's): dataset and weights fetched from a bucket, transfer learning in two
    phases from those weights, the run uploaded, fetched, predicted with, listed, and a
    retried pod that finds it finished."""
    from trainer.models.classifier import build_model

    bucket = moto_s3.new_bucket()
    moto_s3.client().upload_file(str(tiny_npz), bucket, "data/tiny.npz")
    build_model("VGG16", "avg", 32, 4, None).save_weights(tmp_path / "start.weights.h5")
    moto_s3.client().upload_file(str(tmp_path / "start.weights.h5"), bucket,
                                   "weights/start.weights.h5")
    env = clean_environ(TINY_JOB, moto_s3.env(), DATASET=f"s3://{bucket}/data/tiny.npz",
                        WEIGHTS=f"s3://{bucket}/weights/start.weights.h5",
                        ARTIFACT_URI=f"s3://{bucket}/runs", RUN_ID="s3run", EPOCHS="1",
                        FINE_TUNE_EPOCHS="1", LEARNING_RATE="1e-2",
                        FINE_TUNE_LEARNING_RATE="1e-4", WORK_DIR=str(tmp_path / "work"))
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    phases = [r for r in json_lines(result.stdout) if r["message"].startswith("phase ")]
    assert [p["message"].split(":")[0] for p in phases] == ["phase head", "phase fine-tune"]
    assert phases[0]["trained_backbone_layers"] == 0
    assert phases[1]["trained_backbone_layers"] == 13  # VGG16's convolutions
    fetched_weights = tmp_path / "work" / "weights" / bucket / "weights" / "start.weights.h5"
    assert fetched_weights.read_bytes() == (tmp_path / "start.weights.h5").read_bytes()
    objects = _objects(moto_s3, bucket, "runs/s3run/")
    assert {"config.json", "best.h5", "history.json", "history.csv", "manifest.json",
            "samples.png", "curves.png", "metrics.json", "confusion.png", "errors.png",
            "report.html"} <= set(objects)
    assert {name.split("/")[1] for name in objects if name.startswith("tensorboard/")} == {
        "train", "validation"}
    manifest = _assert_manifest_matches(objects)
    assert set(manifest["artifacts"]) == set(objects) - {"manifest.json"}

    fetched = subprocess.run(
        [str(Path(sys.executable).parent / "trainer"), "fetch", "s3run", "--to",
         str(tmp_path / "models"), "--artifact-uri", f"s3://{bucket}/runs"],
        env=env, capture_output=True, text=True, timeout=120)
    assert fetched.returncode == 0, fetched.stderr
    model = tmp_path / "models" / "s3run" / "best.h5"
    assert model.read_bytes() == objects["best.h5"]
    assert (tmp_path / "models" / "s3run" / "report.html").read_bytes() == objects["report.html"]
    assert list((tmp_path / "models" / "s3run" / "tensorboard" / "validation").iterdir())
    from PIL import Image

    Image.new("L", (8, 8), 255).save(tmp_path / "white.png")
    predicted = subprocess.run(
        [str(Path(sys.executable).parent / "trainer"), "predict", str(model),
         str(tmp_path / "white.png")], env=env, capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.split(": ")[1].split()[0] in {"0", "1", "2", "3"}
    listed = subprocess.run([str(Path(sys.executable).parent / "trainer"), "runs",
                             "--artifact-uri", f"s3://{bucket}/runs"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert "s3run" in listed.stdout and "finished" in listed.stdout
    everything = result.stdout + result.stderr + fetched.stdout + fetched.stderr
    assert S3_SECRET not in everything
    assert not any(S3_SECRET.encode() in data for data in objects.values())

    # The Job started again (a retried pod) finds the run finished: nothing trained or rewritten.
    before = _versions(moto_s3, bucket, "runs/")
    again = run_entrypoint({**env, "WORK_DIR": str(tmp_path / "work-again")}, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout and '"epoch"' not in again.stdout
    assert _versions(moto_s3, bucket, "runs/") == before


def _versions(server: S3Server, bucket: str, prefix: str) -> dict[str, tuple]:
    listing = server.client().list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"]: (o["ETag"], o["LastModified"]) for o in listing}


@pytest.mark.parametrize("fault", ["wrong-secret", "missing-bucket", "unreachable"])
def test_storage_faults_fail_fast_with_their_exit_code(
        s3_server: S3Server, tiny_npz: Path, tmp_path: Path, fault: str) -> None:
    if fault == "wrong-secret" and s3_server.kind == "moto":
        pytest.skip("moto_server accepts any credentials; rclone checks them")
    bucket = s3_server.new_bucket()
    env = clean_environ(TINY_JOB, s3_server.env(), DATASET=str(tiny_npz),
                        ARTIFACT_URI=f"s3://{bucket}/runs", WORK_DIR=str(tmp_path))
    expected_code, named = 4, f"s3://{bucket}"
    if fault == "wrong-secret":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-" + S3_SECRET
    elif fault == "missing-bucket":
        env["ARTIFACT_URI"], named = "s3://absent-bucket/runs", "s3://absent-bucket"
    else:
        env["S3_ENDPOINT_URL"], expected_code, named = "http://127.0.0.1:9", 75, "127.0.0.1:9"
    started = time.monotonic()
    result = run_entrypoint(env, timeout=120)
    assert result.returncode == expected_code, result.stderr
    assert time.monotonic() - started < 45
    assert named in result.stderr and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert S3_SECRET not in result.stdout + result.stderr


def test_storage_gone_for_good_keeps_the_run_locally_and_exits_75(
        rclone_server: S3Server, tiny_npz: Path, tmp_path: Path) -> None:
    """Training goes on while storage is down; past UPLOAD_TIMEOUT at the end the run exits 75
    naming what stays local (an outage that ends is tests/store/test_uploader.py's)."""
    bucket = rclone_server.new_bucket()
    env = clean_environ(TINY_JOB, rclone_server.env(), DATASET=str(tiny_npz), EPOCHS="3",
                        ARTIFACT_URI=f"s3://{bucket}/runs", RUN_ID="outage",
                        WORK_DIR=str(tmp_path / "work"), UPLOAD_TIMEOUT="3")
    job = Job(env)
    # Down once training runs (at start the job needs the store: it looks for resume state).
    job.wait_for("epoch 1/3")
    rclone_server.stop()
    code, stderr = job.finish(timeout=600)
    local = tmp_path / "work" / "runs" / "outage"
    assert code == 75, stderr
    assert "UPLOAD_TIMEOUT=3" in stderr and str(local / "best.h5") in stderr
    assert (local / "best.h5").is_file() and (local / "history.json").is_file()
    assert len(json.loads((local / "history.json").read_text())) == 3

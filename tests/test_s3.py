"""S3 storage against real servers on loopback (rclone serve s3 and moto_server)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import S3_SECRET, TINY_JOB, S3Server, clean_environ, run_entrypoint

from trainer.errors import StorageError, TransientError
from trainer.s3 import S3Store, client_config, download_uri


def _store(server: S3Server, bucket: str, prefix: str = "") -> S3Store:
    return S3Store(f"s3://{bucket}/{prefix}".rstrip("/"), server.endpoint, "path")


@pytest.fixture(autouse=True)
def _credentials(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> None:
    for name, value in s3_server.env().items():
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


def test_s3_objects_and_prefixes_are_cached_until_they_change(s3_server: S3Server,
                                                              tmp_path: Path) -> None:
    bucket = s3_server.new_bucket()
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="sets/a/train/cat/1.png", Body=b"one")
    client.put_object(Bucket=bucket, Key="sets/a/train/dog/1.png", Body=b"two")
    folder = download_uri(f"s3://{bucket}/sets/a", tmp_path, s3_server.endpoint, "path")
    assert sorted(p.name for p in (folder / "train").iterdir()) == ["cat", "dog"]
    cat = folder / "train" / "cat" / "1.png"
    first = cat.stat().st_mtime_ns
    time.sleep(0.01)
    download_uri(f"s3://{bucket}/sets/a", tmp_path, s3_server.endpoint, "path")
    assert cat.stat().st_mtime_ns == first
    client.put_object(Bucket=bucket, Key="sets/a/train/cat/1.png", Body=b"changed")
    download_uri(f"s3://{bucket}/sets/a/", tmp_path, s3_server.endpoint, "path")
    assert cat.read_bytes() == b"changed"


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


def test_a_run_into_s3_then_fetch_and_predict(s3_server: S3Server, tiny_npz: Path,
                                              tmp_path: Path) -> None:
    from trainer.model import build_model

    bucket = s3_server.new_bucket()
    s3_server.client().upload_file(str(tiny_npz), bucket, "data/tiny.npz")
    build_model("VGG16", "avg", 32, 4, None).save_weights(tmp_path / "start.weights.h5")
    s3_server.client().upload_file(str(tmp_path / "start.weights.h5"), bucket,
                                   "weights/start.weights.h5")
    env = clean_environ(TINY_JOB, s3_server.env(), DATASET=f"s3://{bucket}/data/tiny.npz",
                        WEIGHTS=f"s3://{bucket}/weights/start.weights.h5",
                        ARTIFACT_URI=f"s3://{bucket}/runs", RUN_ID="s3run",
                        WORK_DIR=str(tmp_path / "work"))
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    fetched_weights = tmp_path / "work" / "weights" / bucket / "weights" / "start.weights.h5"
    assert fetched_weights.read_bytes() == (tmp_path / "start.weights.h5").read_bytes()
    objects = _objects(s3_server, bucket, "runs/s3run/")
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
    before = _versions(s3_server, bucket, "runs/")
    again = run_entrypoint({**env, "WORK_DIR": str(tmp_path / "work-again")}, timeout=120)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout and '"epoch"' not in again.stdout
    assert _versions(s3_server, bucket, "runs/") == before


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


def _watch(process: subprocess.Popen, lines: list[str]) -> threading.Thread:
    def read() -> None:
        for line in process.stdout:
            lines.append(line)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def _wait_for(process: subprocess.Popen, lines: list[str], text: str,
              timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not any(text in line for line in lines):
        assert time.monotonic() < deadline, f"no {text!r} in {lines}"
        assert process.poll() is None, f"exited {process.returncode} before {text!r}: {lines}"
        time.sleep(0.2)


@pytest.mark.parametrize("outage", ["brief", "for-good"])
def test_training_goes_on_through_a_storage_outage(
        s3_server: S3Server, rclone_server: S3Server, tiny_npz: Path, tmp_path: Path,
        outage: str) -> None:
    if s3_server.kind != "rclone":
        pytest.skip("the outage server is an rclone of its own; once is enough")
    bucket = rclone_server.new_bucket()
    env = clean_environ(TINY_JOB, rclone_server.env(), DATASET=str(tiny_npz), EPOCHS="4",
                        ARTIFACT_URI=f"s3://{bucket}/runs", RUN_ID="outage",
                        WORK_DIR=str(tmp_path / "work"), UPLOAD_TIMEOUT="600")
    if outage == "for-good":
        env["UPLOAD_TIMEOUT"] = "3"
    process = subprocess.Popen([sys.executable, "entrypoint.py"], env=env, text=True,
                               cwd=Path(__file__).resolve().parents[1],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list[str] = []
    reader = _watch(process, lines)
    # Down once training runs (at start the job needs the store: it looks for resume state).
    _wait_for(process, lines, '"epoch 1/4"')
    rclone_server.stop()
    if outage == "brief":
        _wait_for(process, lines, '"epoch 3/4"')
        rclone_server.start()
    code = process.wait(timeout=600)
    reader.join(timeout=10)
    stderr = process.stderr.read()
    local = tmp_path / "work" / "runs" / "outage"
    if outage == "brief":
        assert code == 0, stderr
        assert any("retrying" in line for line in lines)
        objects = _objects(rclone_server, bucket, "runs/outage/")
        manifest = _assert_manifest_matches(objects)
        assert manifest["epochs_done"] == 4
    else:
        assert code == 75, stderr
        assert "UPLOAD_TIMEOUT=3" in stderr and str(local / "best.h5") in stderr
        assert (local / "best.h5").is_file() and (local / "history.json").is_file()
        assert len(json.loads((local / "history.json").read_text())) == 4

"""An S3 prefix of 2,000 small objects downloaded concurrently against one at a time.

    .venv/bin/python bench/s3_prefix.py            # both servers, about 3 minutes on 2 cores
    .venv/bin/python bench/s3_prefix.py rclone     # or moto

Starts a real S3 server on loopback (`rclone serve s3` or `moto_server`), uploads the objects,
then times `trainer.store.s3.download_uri` into empty caches: with `concurrency=1` (one at a
time), with the default concurrency, and a second call that finds everything cached (listing and
stat only).
On loopback a request costs CPU, not waiting, and client and server share the 2 cores; so the
same is measured again through tests/faults.py's proxy (a process of its own) adding `latency`
seconds before each response, as a distant object store does. `bench/bench.py` can call
`measure()` for BENCHMARKS.md.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from trainer.store.mirror import MIRROR_CONCURRENCY  # noqa: E402
from trainer.store.s3 import client_config, download_uri  # noqa: E402 - after the path above

KEY, SECRET = "bench-key", "bench-secret"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(kind: str, root: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    bin_dir = Path(sys.executable).parent
    if kind == "rclone":
        command = [str(bin_dir / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                   "--auth-key", f"{KEY},{SECRET}", str(root)]
    else:
        command = [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "RCLONE_CONFIG": "/nonexistent"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError(f"{kind} did not start")


def _timed(call: object) -> float:
    started = time.perf_counter()
    call()  # type: ignore[operator]
    return time.perf_counter() - started


def measure(kind: str = "rclone", objects: int = 2000, size: int = 2048,
            concurrency: int = MIRROR_CONCURRENCY, latency: float = 0.02) -> dict:
    """Seconds to mirror `objects` objects of `size` bytes one at a time and concurrently, on a
    `kind` server of its own, directly and with `latency`; `ratio` is one-at-a-time seconds over
    concurrent seconds."""
    import boto3

    env = {"AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent",
           "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    with tempfile.TemporaryDirectory() as work:
        server, endpoint = _start(kind, Path(work) / "s3")
        try:
            client = boto3.client("s3", endpoint_url=endpoint,
                                  config=client_config(endpoint, "path"))
            client.create_bucket(Bucket="bench")
            body = os.urandom(size)
            with ThreadPoolExecutor(16) as pool:
                list(pool.map(lambda i: client.put_object(
                    Bucket="bench", Key=f"set/train/c{i % 10}/{i:05}.png", Body=body),
                    range(objects)))
            uri = "s3://bench/set"

            def fetch(cache: str, threads: int, via: str = endpoint) -> None:
                folder = download_uri(uri, Path(work) / cache, via, "path",
                                      concurrency=threads)
                assert sum(1 for p in folder.rglob("*") if p.is_file()) == objects

            one = _timed(lambda: fetch("one", 1))
            many = _timed(lambda: fetch("many", concurrency))
            cached = _timed(lambda: fetch("many", concurrency))
            proxy = subprocess.Popen(
                [sys.executable, str(REPO / "tests" / "faults.py"), endpoint, "delay",
                 f"seconds={latency}"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                far = proxy.stdout.readline().strip()  # type: ignore[union-attr]
                far_one = _timed(lambda: fetch("far-one", 1, far))
                far_many = _timed(lambda: fetch("far-many", concurrency, far))
            finally:
                proxy.stdin.close()  # type: ignore[union-attr]
                proxy.wait(timeout=30)
        finally:
            server.terminate()
            server.wait(timeout=30)
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    return {"server": kind, "objects": objects, "object_bytes": size,
            "concurrency": concurrency, "one_at_a_time_seconds": round(one, 2),
            "concurrent_seconds": round(many, 2), "cached_seconds": round(cached, 2),
            "ratio": round(one / many, 2), "latency": latency,
            "latency_one_at_a_time_seconds": round(far_one, 2),
            "latency_concurrent_seconds": round(far_many, 2),
            "latency_ratio": round(far_one / far_many, 2), "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine()}


if __name__ == "__main__":
    for server_kind in sys.argv[1:] or ["rclone", "moto"]:
        print(json.dumps(measure(server_kind)), flush=True)

"""Processes for bench/bench.py, each timed from its start to its exit by this process: the job
(entrypoint.py), plain scripts, a cluster of workers on loopback, and S3 servers.

    run = run_process([python, "entrypoint.py"], env)   # every JSON line with its arrival time
    run.first("first training steps done")               # seconds from the process start

No TensorFlow here: every measurement runs in a fresh process of its own.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
ENTRYPOINT = [PYTHON, str(REPO / "entrypoint.py")]
S3_KEY, S3_SECRET = "bench-key", "bench-secret-8Yw2"
# Settings a developer may have exported, which would change what is measured.
_SETTINGS_PREFIXES = ("TF_CONFIG", "JOB_COMPLETION_INDEX", "WORKER_COUNT", "AWS_", "S3_")


@dataclass
class Run:
    """A finished process: its JSON lines (each with `t`, seconds from the start to its
    arrival), wall seconds, CPU seconds (user + system, its children included) and peak memory."""

    lines: list[dict[str, Any]]
    wall: float
    cpu: float
    peak_mb: float
    extra: dict[str, Any] = field(default_factory=dict)

    def first(self, message: str) -> float | None:
        return next((row["t"] for row in self.lines if _message(row) == message), None)

    def field(self, name: str) -> Any:
        return next((row[name] for row in self.lines if name in row), None)

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """The job's epoch lines (val_accuracy, seconds, images_per_second, t), or a script's
        `epoch` events."""
        return [row for row in self.lines if "val_accuracy" in row
                and (row.get("event") == "epoch" or _message(row).startswith("epoch "))]

    @property
    def best_accuracy(self) -> float:
        return max(row["val_accuracy"] for row in self.epochs)


def _message(row: dict[str, Any]) -> str:
    return str(row.get("message", row.get("event", "")))


def base_environ(**settings: str) -> dict[str, str]:
    """This environment without the job's settings a developer may have exported, quiet
    TensorFlow logs, and `settings`."""
    from trainer.options import OPTIONS  # no TensorFlow

    names = {option.variable for option in OPTIONS}
    env = {k: v for k, v in os.environ.items()
           if k not in names and not k.startswith(_SETTINGS_PREFIXES)}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO), **settings)
    return env


class Started:
    """A process started now, its stdout's JSON lines read and timestamped as they come."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.stderr = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in finish()
        self.machine = machine_cpu()
        self.started = time.monotonic()
        self.process = subprocess.Popen(command, env=env, cwd=REPO, text=True,
                                        stdout=subprocess.PIPE, stderr=self.stderr)
        self.lines: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            arrived = time.monotonic() - self.started
            if line.startswith("{"):
                try:
                    self.lines.append({**json.loads(line), "t": arrived})
                except json.JSONDecodeError:
                    continue

    def poll(self) -> bool:
        """Whether the process has exited (reaped here, with its resource usage)."""
        if self.process.returncode is None:
            pid, status, usage = os.wait4(self.process.pid, os.WNOHANG)
            if not pid:
                return False
            self.wall = time.monotonic() - self.started
            self.machine = {k: v - self.machine[k] for k, v in machine_cpu().items()}
            self.usage = usage
            self.process.returncode = os.waitstatus_to_exitcode(status)
        return True

    def finish(self, timeout: float = 1800) -> Run:
        deadline = time.monotonic() + timeout
        while not self.poll():
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.process.args} took over {timeout} s")
            time.sleep(0.01)
        self._reader.join(timeout=30)
        if self.process.returncode != 0:
            self.stderr.seek(0)
            raise RuntimeError(f"{' '.join(map(str, self.process.args))} exited "
                               f"{self.process.returncode}: {self.stderr.read()[-3000:]}")
        self.stderr.close()
        own = self.usage.ru_utime + self.usage.ru_stime
        # What else ran meanwhile: every process's CPU but this one's (S3 servers, the other
        # worker, anything outside the bench), and time the hypervisor gave to other guests.
        return Run(self.lines, self.wall, own, self.usage.ru_maxrss / 1024,
                   {"other_cpu": max(0.0, self.machine["busy"] - own),
                    "steal": self.machine["steal"]})

    def kill(self) -> None:
        if not self.poll():
            self.process.kill()
            while not self.poll():
                time.sleep(0.01)


def run_process(command: list[str], env: dict[str, str], timeout: float = 1800) -> Run:
    return Started(command, env).finish(timeout)


def run_job(env: dict[str, str]) -> Run:
    return run_process(ENTRYPOINT, env)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(env_of: Any, count: int = 2, command: list[str] = ENTRYPOINT) -> list[Run]:
    """`count` jobs as one MultiWorkerMirroredStrategy cluster on loopback (TF_CONFIG), worker
    0 the chief; each Run timed from its own start. If one fails, the others are stopped."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(count)]
    started = [Started(command, {**env_of(index), "TF_CONFIG": json.dumps(
        {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}})})
        for index in range(count)]
    try:
        while not all(job.poll() for job in started):
            if any(job.poll() and job.process.returncode != 0 for job in started):
                break  # the others would wait for their peer until PEER_TIMEOUT
            time.sleep(0.05)
        failed = [job for job in started if job.poll() and job.process.returncode != 0]
        return [job.finish() for job in failed + started]
    finally:
        for job in started:
            job.kill()


class S3Server:
    """`rclone serve s3` or `moto_server` on loopback, with a bucket `bench`; `cpu_seconds()`
    is what it has used so far (it shares this machine's cores with the job)."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        port = free_ports(1)[0]
        self.endpoint = f"http://127.0.0.1:{port}"
        bin_dir = Path(PYTHON).parent
        if kind == "rclone":
            command = [str(bin_dir / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{port}",
                       "--auth-key", f"{S3_KEY},{S3_SECRET}", str(root)]
        else:
            command = [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(port)]
        root.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL,
                                        env={**os.environ, "RCLONE_CONFIG": "/nonexistent"})
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{kind} did not start") from None
                time.sleep(0.1)
        import boto3

        from trainer.store.s3 import client_config

        boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY,
                     aws_secret_access_key=S3_SECRET, region_name="us-east-1",
                     config=client_config(self.endpoint, "path")).create_bucket(Bucket="bench")

    def env(self) -> dict[str, str]:
        return {"S3_ENDPOINT_URL": self.endpoint, "S3_ADDRESSING_STYLE": "path",
                "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


def machine_cpu() -> dict[str, float]:
    """Seconds this machine's CPUs have been busy (all processes) and stolen, so far."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    tick = os.sysconf("SC_CLK_TCK")
    return {"busy": (user + nice + system + irq + softirq) / tick, "steal": steal / tick}


def cpu() -> dict[str, Any]:
    """The CPU's model and the flags that decide bfloat16 here."""
    text = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown")
    flags = {flag for line in text.splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}
    return {"model": model, "cores": os.cpu_count(),
            "flags": {name: name in flags for name in ("amx_bf16", "amx_tile", "avx512_bf16")}}

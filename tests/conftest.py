"""Shared fixtures: tiny datasets, and helpers to run the real entrypoint as a subprocess."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

if TYPE_CHECKING:
    from matplotlib.figure import Figure

REPO = Path(__file__).resolve().parents[1]
ENTRYPOINT = REPO / "entrypoint.py"

# Fast settings for real training in tests: a small backbone on tiny images.
TINY_JOB = {
    "BACKBONE": "VGG16",  # few layers: the quickest to trace and save
    "WEIGHTS": "none",
    "IMAGE_SIZE": "32",
    "EPOCHS": "2",
    "BATCH_SIZE": "16",
    "LEARNING_RATE": "1e-3",
    "LOG_FORMAT": "json",
    "AUGMENT": "none",  # the tests that augment say so
    "EXPORT": "none",  # the exports (seconds each) are tested where they are the point
    # The same numbers on every machine: auto would pick bfloat16 on a CPU with AMX (tested
    # in tests/test_train.py), and tests compare accuracies.
    "PRECISION": "float32",
}


def clean_environ(*layers: dict[str, str], **extra: str) -> dict[str, str]:
    """This process's environment without any setting a developer may have exported, then
    `layers` and `extra` in order (later ones win)."""
    from trainer.settings import OPTIONS

    names = {o.variable for o in OPTIONS} | {"TF_CONFIG", "JOB_COMPLETION_INDEX", "WORKER_COUNT"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env["KERAS_HOME"] = env.get("TEST_KERAS_HOME", "/tmp/trainer-test-keras")
    for layer in (*layers, extra):
        env.update(layer)
    return env


def dockerfile_instructions() -> list[tuple[str, str]]:
    """The Dockerfile's (INSTRUCTION, arguments) in order, continuation lines joined, comments
    dropped."""
    result, pending = [], ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#") or not (line.strip() or pending):
            continue
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        keyword, _, rest = pending.strip().partition(" ")
        result.append((keyword.upper(), rest.strip()))
        pending = ""
    return result


def image_env() -> dict[str, str]:
    """The ENV of the Dockerfile's final stage, as written (`$PATH` unexpanded)."""
    import shlex

    steps = dockerfile_instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    env: dict[str, str] = {}
    for keyword, rest in steps[last_from:]:
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def image_environ(**extra: str) -> dict[str, str]:
    """An environment as the image gives it, for the entrypoint run here: clean_environ() with
    the Dockerfile's ENV over it (its PATH expanded, its KERAS_HOME the tests' cache), then
    `extra`."""
    base = clean_environ()
    env = {k: v.replace("$PATH", base.get("PATH", "")) for k, v in image_env().items()}
    return {**base, **env, "KERAS_HOME": base["KERAS_HOME"], **extra}


def run_entrypoint(env: dict[str, str], *args: str, timeout: float = 600,
                   cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENTRYPOINT), *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


# A tool a test needs (kubectl, chromium, hadolint, kubernetes-validate, buildah) that is not on
# the machine skips the test on a developer's machine; under CI=true (.ci/run) it fails it, so
# that a green CI never hides a check that did not run.
IN_CI = os.environ.get("CI", "").lower() == "true"


def unless_ci(missing: bool, reason: str) -> pytest.MarkDecorator:
    """skipif(`missing`) on a developer's machine; under CI=true the test runs, and fails."""
    return pytest.mark.skipif(missing and not IN_CI, reason=f"{reason} (CI=true fails instead)")


def missing_tool(reason: str) -> None:
    """Inside a test: skip, or under CI=true fail, naming what is missing."""
    (pytest.fail if IN_CI else pytest.skip)(reason)


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# What a reader's browser shows, measured once the page (and its images) loaded: the window's
# width, each picture's natural and shown width, header rows without any text, and each table
# row's first link (resolved to a URL; null for a row without one).
LAYOUT_PROBE = """<script>window.addEventListener('load', () => {
  const rows = [...document.querySelectorAll('tr')];
  document.body.dataset.probe = JSON.stringify({
    width: window.innerWidth,
    images: [...document.images].map(i => [i.naturalWidth, i.width]),
    empty_header_rows: rows.filter(r => r.querySelector('th')
                                   && [...r.cells].every(c => !c.textContent.trim())).length,
    links: rows.filter(r => r.querySelector('td')).map(r => {
      const a = r.querySelector('a'); return a ? a.href : null; }),
  });
});</script>"""


def smallest_font_px(figure: Figure) -> float:
    """The smallest text of a figure, in pixels of its PNG (points at DPI dots per inch)."""
    from matplotlib.text import Text

    from trainer.reports.plots import DPI, png_bytes

    png_bytes(figure)  # lays it out as it is written
    sizes = [text.get_fontsize() for text in figure.findobj(Text)
             if text.get_visible() and text.get_text().strip()]
    return min(sizes) * DPI / 72


def layout_in_chromium(page: Path, width: int = 1280) -> dict:
    """`page` as headless Chromium lays it out in a window `width` px wide (LAYOUT_PROBE's
    figures); a copy with the probe added sits next to it, so relative links resolve alike."""
    import html

    probe = page.with_name(f"{page.stem}.probe.html")
    probe.write_text(page.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    result = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--hide-scrollbars", "--disable-background-networking", "--disable-component-update",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size={width},900",
         "--virtual-time-budget=5000", "--dump-dom", probe.as_uri()],
        capture_output=True, text=True, timeout=120)
    found = re.search(r'data-probe="([^"]*)"', result.stdout)
    assert found, result.stderr[-2000:]
    return json.loads(html.unescape(found.group(1)))


# Processes a test started; whatever is still running when it ends (it failed) is killed, so that
# no TensorFlow is left eating the cores of the tests after it.
STARTED: list[subprocess.Popen] = []


@pytest.fixture(autouse=True)
def _kill_what_the_test_started() -> Iterator[None]:
    yield
    # A test that ran the CLI in this process left the trainer's log handler on its captured
    # output, which pytest has closed since.
    logging.getLogger("trainer").handlers.clear()
    while STARTED:
        process = STARTED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)


class Job:
    """The entrypoint as a subprocess whose log lines the test reads as they come."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, "entrypoint.py"], env=env, cwd=REPO,
                                        text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        STARTED.append(self.process)
        self.lines: list[dict] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            if line.startswith("{"):
                self.lines.append(json.loads(line))

    def wait_for(self, message: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(r["message"].startswith(message) for r in self.lines):
            assert self.process.poll() is None, (message, self.process.stderr.read()[-2000:])
            assert time.monotonic() < deadline, f"no {message!r} within {timeout} s"
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code, self.process.stderr.read()

    def resumed(self) -> tuple[int, int]:
        row = next(r for r in self.lines if r["message"].startswith("resuming after"))
        return row["resume_epoch"], row["resume_step"]

    def field(self, name: str) -> object:
        """The value of `name` in the first log line that has it."""
        return next(r[name] for r in self.lines if name in r)

    def trained_epochs(self) -> list[int]:
        return [r["epoch"] for r in self.lines
                if r["message"].startswith("epoch ") and "val_loss" in r]


@contextlib.contextmanager
def trainer_log(level: int) -> Iterator[list[logging.LogRecord]]:
    """What the trainer's logger says at `level` and above meanwhile (its own level lowered to
    `level` where it is higher, and put back)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("trainer")
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > level:
        logger.setLevel(level)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@pytest.fixture
def warnings_logged() -> Iterator[list[logging.LogRecord]]:
    """The warnings the trainer's logger gives during the test."""
    with trainer_log(logging.WARNING) as records:
        yield records


def trainer_in_process(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`trainer ARGS` run by its own main() in this process, with `env` as the whole
    environment: for the commands that load TensorFlow, whose import a subprocess would pay
    again (the console script itself is run as a process in tests/test_cli.py)."""
    import contextlib
    import io
    from unittest import mock

    from trainer.cli import main

    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), contextlib.redirect_stdout(out), \
            contextlib.redirect_stderr(err):
        code = main(list(args))
    logging.getLogger("trainer").handlers.clear()
    return subprocess.CompletedProcess(["trainer", *args], code, out.getvalue(), err.getvalue())


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def write_digits_npz(path: Path, per_class: int = 12, classes: int = 4, seed: int = 0) -> Path:
    """A tiny .npz in the keras.datasets layout, from scikit-learn's digits (8x8 grayscale)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    picked = np.concatenate([
        rng.choice(np.flatnonzero(digits.target == c), per_class, replace=False)
        for c in range(classes)
    ])
    images = np.round(digits.images[picked] * (255 / 16)).astype(np.uint8)
    np.savez(path, x_train=images, y_train=digits.target[picked].astype(np.int64))
    return path


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_digits_npz(tmp_path_factory.mktemp("data") / "tiny.npz")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """class-named sub-folders of PNGs, with train/ and val/ splits."""
    from PIL import Image

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(1)
    for split, count in (("train", 10), ("val", 4)):
        for name, level in (("cats", 40), ("dogs", 200)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = np.clip(rng.normal(level, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real run into a local ARTIFACT_URI, shared by the tests that read it: 3 epochs on
    two replicas (MirroredStrategy over two logical CPUs) of digits 0 and 1 (distinct enough
    to learn in that time: every held-out image right), with every serving export."""
    root = tmp_path_factory.mktemp("artifacts")
    npz = write_digits_npz(root.parent / "zeros-and-ones.npz", per_class=40, classes=2)
    env = clean_environ(TINY_JOB, DATASET=str(npz), ARTIFACT_URI=str(root), RUN_ID="tiny",
                        EPOCHS="3", BATCH_SIZE="8", CPU_REPLICAS="2", LEARNING_RATE="1e-4",
                        VALIDATION_SPLIT="0.25", EXPORT="savedmodel,onnx,litert")
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    return {"root": root, "run": root / "tiny", "env": env, "result": result, "npz": npz,
            "history": json.loads((root / "tiny" / "history.json").read_text())}


# --- SageMaker: its training layout in a folder ---

def sagemaker_layout(tmp_path: Path, hyperparameters: dict | None = None,
                     hosts: tuple = ("algo-1",), current: str = "algo-1",
                     channels: dict | None = None, checkpoints: bool = True,
                     modes: dict | None = None) -> Path:
    """A fake /opt/ml as SageMaker lays it out for a training container: `channels` maps each
    channel to its files (relative path -> bytes, or a folder to copy)."""
    base = tmp_path / "opt-ml"
    config = base / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters or {}))
    (config / "resourceconfig.json").write_text(json.dumps(
        {"current_host": current, "hosts": list(hosts), "network_interface_name": "eth0"}))
    channels = {"training": {"digits.npz": b"npz"}} if channels is None else channels
    # As SageMaker writes it; `modes` overrides a channel's fields.
    (config / "inputdataconfig.json").write_text(json.dumps({
        name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
               "RecordWrapperType": "None", **(modes or {}).get(name, {})}
        for name in channels}))
    for name, files in channels.items():
        folder = base / "input" / "data" / name
        if isinstance(files, Path):
            shutil.copytree(files, folder)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        for relative, data in files.items():
            (folder / relative).parent.mkdir(parents=True, exist_ok=True)
            (folder / relative).write_bytes(data)
    (base / "model").mkdir()
    (base / "output").mkdir()
    if checkpoints:
        (base / "checkpoints").mkdir()
    return base



# --- S3: real servers on loopback (rclone serve s3 checks credentials; moto has wide S3) ---

S3_KEY, S3_SECRET = "trainer-test-key", "trainer-test-secret-Zq9f2Lk"


class S3Server:
    """A real S3 server process on 127.0.0.1; `stop()` and `start()` simulate an outage."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> S3Server:
        bin_dir = Path(sys.executable).parent
        if self.kind == "rclone":
            command = [str(bin_dir / "rclone"), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                       "--auth-key", f"{S3_KEY},{S3_SECRET}", str(self.root)]
        else:
            command = [str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL,
                                        env={**os.environ, "RCLONE_CONFIG": "/nonexistent"})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.kind} S3 server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=20)
            self.process = None

    def client(self, secret: str = S3_SECRET):
        import boto3

        from trainer.store.s3 import client_config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=S3_KEY,
                            aws_secret_access_key=secret, region_name="us-east-1",
                            config=client_config(self.endpoint, "path"))

    def new_bucket(self) -> str:
        name = f"bucket-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self) -> dict[str, str]:
        """What a user sets to use this server."""
        return {"S3_ENDPOINT_URL": self.endpoint, "S3_ADDRESSING_STYLE": "path",
                "AWS_ACCESS_KEY_ID": S3_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/nonexistent",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"}


def _free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now, distinct from each other (all held until all are known)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="session", params=["rclone", "moto"])
def s3_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    server = S3Server(request.param, tmp_path_factory.mktemp(f"s3-{request.param}")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server of its own, for the one end-to-end run that goes through S3 once."""
    server = S3Server("moto", tmp_path_factory.mktemp("s3-moto-e2e")).start()
    yield server
    server.stop()


@pytest.fixture()
def rclone_server(tmp_path: Path):
    server = S3Server("rclone", tmp_path / "s3").start()
    yield server
    server.stop()


@dataclass
class RunStore:
    """Where a test's runs are kept (a local folder or an S3 bucket on loopback), what a user
    sets to use it, and how the test reads and damages its objects (keys under ARTIFACT_URI)."""

    kind: str
    env: dict[str, str]
    read: Callable[[str], bytes]  # KeyError when there is no such object
    write: Callable[[str, bytes], None]
    delete: Callable[[str], None]
    keys: Callable[[str], dict[str, str]]  # key under a prefix -> a version tag that changes


@pytest.fixture()
def run_store(tmp_path: Path) -> Iterator[RunStore]:
    """Runs in a bucket of an rclone S3 server of the test's own, which the heavy resume and
    multi-worker scenarios use: one run against S3 covers the uploads and the read-back that a
    local folder would skip (a local ARTIFACT_URI is the finished_run fixture's)."""
    server = S3Server("rclone", tmp_path / "s3").start()
    bucket, client = server.new_bucket(), server.client()

    def read_object(key: str) -> bytes:
        try:
            return client.get_object(Bucket=bucket, Key=f"runs/{key}")["Body"].read()
        except client.exceptions.NoSuchKey:
            raise KeyError(key) from None

    def list_objects(prefix: str) -> dict[str, str]:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                 Prefix=f"runs/{prefix}")
        return {o["Key"][len("runs/"):]: f"{o['ETag']} {o['LastModified']}"
                for page in pages for o in page.get("Contents", [])}

    yield RunStore(
        "s3", {**server.env(), "ARTIFACT_URI": f"s3://{bucket}/runs"}, read_object,
        lambda key, data: client.put_object(Bucket=bucket, Key=f"runs/{key}", Body=data),
        lambda key: client.delete_object(Bucket=bucket, Key=f"runs/{key}"), list_objects)
    server.stop()


def history_epochs(store: RunStore, run_id: str) -> int:
    try:
        return len(json.loads(store.read(f"{run_id}/history.json")))
    except (KeyError, ValueError):  # not written yet
        return 0


def check_finished_run(store: RunStore, run_id: str, scratch: Path, tiny_npz: Path,
                       epochs: int) -> None:
    """The run finished with every epoch once, its manifest matches the store, and best.h5 is
    the best epoch's model."""
    import hashlib

    read = lambda name: store.read(f"{run_id}/{name}")  # noqa: E731
    manifest = json.loads(read("manifest.json"))
    history = json.loads(read("history.json"))
    assert [row["epoch"] for row in history] == list(range(1, epochs + 1))
    best = max(history, key=lambda row: row["val_accuracy"])  # first of the maxima
    assert (manifest["best_epoch"], manifest["epochs_done"]) == (best["epoch"], epochs)
    for name, entry in manifest["artifacts"].items():
        assert hashlib.sha256(read(name)).hexdigest() == entry["sha256"], name
    model = scratch / f"{run_id}-best.h5"
    model.parent.mkdir(parents=True, exist_ok=True)
    model.write_bytes(read("best.h5"))
    assert score_model(model, tiny_npz)["accuracy"] == pytest.approx(
        best["val_accuracy"], abs=1e-6)


def write_tfrecords(folder: Path, images: list[np.ndarray], labels: list[int]) -> Path:
    """TFRecord files with `image` (PNG bytes) and `label` (int64), split over two files."""
    import io

    import tensorflow as tf
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for part in range(2):
        with tf.io.TFRecordWriter(str(folder / f"part-{part}.tfrecord")) as writer:
            for image, label in list(zip(images, labels, strict=True))[part::2]:
                png = io.BytesIO()
                Image.fromarray(image).save(png, format="PNG")
                encoded = tf.train.BytesList(value=[png.getvalue()])
                feature = {
                    "image": tf.train.Feature(bytes_list=encoded),
                    "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label])),
                }
                example = tf.train.Example(features=tf.train.Features(feature=feature))
                writer.write(example.SerializeToString())
    return folder


def score_model(model: Path, npz: Path, validation_split: float = 0.25) -> dict:
    """A VGG16 tiny-job model loaded with plain Keras (no custom objects), scored on the
    held-out split of `npz` with the training preprocessing."""
    import keras
    import tensorflow as tf

    from trainer.data.load import load_dataset

    loaded = keras.models.load_model(model, compile=False)
    data = load_dataset(str(npz), validation_split=validation_split, seed=0)
    x = tf.image.grayscale_to_rgb(tf.cast(data.val.images, tf.float32)[..., None])
    x = keras.applications.vgg16.preprocess_input(tf.image.resize(x, (32, 32)))
    predicted = np.argmax(loaded.predict(x, verbose=0), axis=1)
    return {"accuracy": float(np.mean(predicted == data.val.labels)),
            "dtype": str(loaded.output.dtype)}


# --- Fault injection (tests/faults.py): a TCP proxy between a client and an S3 server ---------
# Added for issue 12 (the S3 fault tests); self-contained so that it merges with other edits.
if TYPE_CHECKING:
    from faults import FaultProxy


@pytest.fixture()
def fault_proxies() -> Iterator[Callable[[str], FaultProxy]]:
    """Proxies in front of any server (`fault_proxies(server.endpoint)`), all closed after the
    test, which fails if one left a thread running."""
    from faults import FaultProxy

    made: list[FaultProxy] = []

    def make(endpoint: str) -> FaultProxy:
        made.append(FaultProxy(endpoint))
        return made[-1]

    yield make
    for proxy in made:
        proxy.close()
    assert not [t for p in made for t in p.threads()], "a proxy thread outlived its test"


@pytest.fixture()
def fault_proxy(s3_server: S3Server, fault_proxies: Callable[[str], FaultProxy]) -> FaultProxy:
    """A proxy in front of this session's S3 server (rclone or moto), in `pass` mode."""
    return fault_proxies(s3_server.endpoint)


# --- MLflow: a real `mlflow server` (the dev extra has it), SQLite store, on loopback ----------


class MlflowServer:
    """`mlflow server` in its own process group, restartable on the same port and store."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        (self.port,) = free_ports(1)
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        log = open(self.folder / "server.log", "ab")  # noqa: SIM115 - the server writes to it
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--artifacts-destination", str(self.folder / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.process.poll() is None, (self.folder / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError("mlflow server did not start in 120 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the server and its uvicorn worker
            self.process.wait(30)
        self.process = None

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.uri)


@pytest.fixture(scope="session")
def mlflow_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    saved = dict(os.environ)
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        server.start()
        yield server
    finally:
        server.stop()  # also when a test failed: no server is left behind
        os.environ.clear()  # the tracker sets MLflow's client variables in this process
        os.environ.update(saved)


@pytest.fixture
def mlflow_server(mlflow_service: MlflowServer) -> MlflowServer:
    """The session's server, started again if a test left it stopped."""
    if mlflow_service.process is None:
        mlflow_service.start()
    return mlflow_service


class HangingServer:
    """A TCP server on loopback that accepts every connection and never answers: an MLflow
    server stuck behind a load balancer, as the job meets it."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed by close()
            while True:
                self.accepted.append(self._socket.accept()[0])  # kept open, never answered

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close() alone does not)
        self._socket.close()
        for connection in self.accepted:
            connection.close()
        self._thread.join(timeout=10)


@pytest.fixture
def hanging_server() -> Iterator[HangingServer]:
    server = HangingServer()
    try:
        yield server
    finally:
        server.close()


# --- Shard datasets (trainer/data/shards.py): WebDataset tars and Hugging Face Parquet ---------


def _png(level: int, rng: np.random.Generator, side: int) -> bytes:
    import io

    from PIL import Image

    pixels = np.clip(rng.normal(level, 15, (side, side, 3)), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def write_webdataset(folder: Path, labels: list[int], shards: int, prefix: str = "train",
                     seed: int = 0, side: int = 12, label_as: str = "cls") -> list[Path]:
    """`shards` WebDataset tars `{prefix}-NNNN.tar`, sample i (`sNNNNN.png` with its `.cls`, or
    `.json` {"label": ...}) in shard i % shards; class c a gray level of its own."""
    import io
    import tarfile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{prefix}-{s:04d}.tar" for s in range(shards)]
    tars = [tarfile.open(path, "w") for path in paths]  # noqa: SIM115 - closed below
    for i, label in enumerate(labels):
        label_data = (str(label).encode() if label_as == "cls"
                      else json.dumps({"label": label}).encode())
        for name, data in ((f"s{i:05d}.png", _png(30 + 60 * label, rng, side)),
                           (f"s{i:05d}.{label_as}", label_data)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tars[i % shards].addfile(info, io.BytesIO(data))
    for tar in tars:
        tar.close()
    return paths


def write_hf_parquet(folder: Path, labels: list[int], shards: int, names: list[str],
                     prefix: str = "train", seed: int = 0, side: int = 12,
                     row_group: int = 16) -> list[Path]:
    """Parquet files as the Hugging Face Hub publishes image datasets:
    `{prefix}-NNNNN-of-MMMMM.parquet`, `image` struct (`bytes`, `path`), `label` int64, the class
    names in the `huggingface` schema metadata; row i in shard i % shards."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    paths = []
    for s in range(shards):
        mine = labels[s::shards]
        table = pa.table({
            "image": [{"bytes": _png(30 + 60 * label, rng, side), "path": None} for label in mine],
            "label": pa.array(mine, pa.int64())}).replace_schema_metadata(metadata)
        paths.append(folder / f"{prefix}-{s:05d}-of-{shards:05d}.parquet")
        pq.write_table(table, paths[-1], row_group_size=row_group)
    return paths


def upload_folder(client, bucket: str, folder: Path, prefix: str) -> int:  # noqa: ANN001
    """Every file under `folder` into `bucket` under `prefix/`; returns the bytes uploaded."""
    total = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")
        total += path.stat().st_size
    return total


class DiskSampler:
    """The bytes under each folder, sampled from another thread while a test runs: the disk's
    high-water mark (the largest of the folders'), measured, not taken from the cache's books."""

    def __init__(self, *folders: Path) -> None:
        self.folders, self.peak, self._done = folders, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.is_set():
            for folder in self.folders:
                total = 0
                for top, _, files in os.walk(folder):
                    for name in files:
                        with contextlib.suppress(FileNotFoundError):  # deleted meanwhile
                            total += os.stat(os.path.join(top, name)).st_size
                self.peak = max(self.peak, total)
            time.sleep(0.002)

    def stop(self) -> int:
        self._done.set()
        self._thread.join(timeout=10)
        return self.peak


# --- Kubeflow Trainer's TrainJob status server (tests/trainjob_status.py), on loopback ---------


@pytest.fixture
def status_server(tmp_path: Path):
    from trainjob_status import StatusServer

    server = StatusServer(tmp_path)
    yield server
    server.close()

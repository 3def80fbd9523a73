"""Where the job runs: SageMaker's or Vertex AI's layout read into settings and folders.

    platform = resolve_platform(os.environ)   # then load_settings(platform.environ, flags)
    check_inputs(platform, given)             # once the settings are resolved

SageMaker (bring-your-own-container training) is recognised by `<SAGEMAKER_BASE_DIR>/input/config/`
(default /opt/ml); its hyperparameters and channels are read by trainer.cluster.sagemaker. The run
goes to `model/` (packed by SageMaker as model.tar.gz), the resume state to `checkpoints/` when it
exists (synced with S3 for managed spot training), TensorBoard events to `output/tensorboard/`
when it exists, the failure line to `output/failure`. Every channel must be read: one that
DATASET or WEIGHTS set otherwise leaves unread is a ConfigError, and so is a job with no channel to
train on and no DATASET (never a silent fallback to a built-in dataset).

Vertex AI custom training is recognised by CLOUD_ML_JOB_ID or an AIP_*_DIR variable. Cloud
Storage is read through its FUSE mount: `gs://bucket/path` in DATASET, DATASET_MIRROR, WEIGHTS and
ARTIFACT_URI, and in AIP_MODEL_DIR (the run), AIP_CHECKPOINT_DIR (the resume state) and
AIP_TENSORBOARD_LOG_DIR (TensorBoard events), becomes `<GCS_FUSE_ROOT>/bucket/path` (default
/gcs). RUN_ID defaults to CLOUD_ML_JOB_ID. Its cluster comes from TF_CONFIG or CLUSTER_SPEC
(trainer.cluster.specs). Without AIP_MODEL_DIR (a job without baseOutputDirectory) ARTIFACT_URI
must be given: the container's own disk is gone when the job ends. The tuned metric goes to the
hypertune metrics file (trainer.tracking.hypertune).

Everywhere: a local DATASET folder that holds one .npz and nothing else is read as that file, and
a WEIGHTS folder with exactly one weights file (.h5, .keras) below it as that file, which is what a
SageMaker channel, a Kubeflow Trainer initializer or a FUSE prefix gives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.cluster.sagemaker import read_sagemaker
from trainer.errors import ConfigError
from trainer.options import OPTIONS

DEFAULT_SAGEMAKER_BASE_DIR = "/opt/ml"
TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' terminationMessagePath default
DEFAULT_GCS_FUSE_ROOT = "/gcs"
VERTEX_MARKERS = ("CLOUD_ML_JOB_ID", "AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR",
                  "AIP_TENSORBOARD_LOG_DIR")
GCS_VARIABLES = ("DATASET", "DATASET_MIRROR", "WEIGHTS", "ARTIFACT_URI")
WEIGHTS_SUFFIXES = (".h5", ".keras")
# The settings whose locations may be inside a channel.
LOCATION_FIELDS = ("dataset", "weights", "dataset_mirror")


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
    channels: dict[str, str] = field(default_factory=dict)  # SageMaker's: name -> folder
    dataset_channels: tuple[str, ...] = ()  # the channels that DATASET's default reads
    notes: tuple[str, ...] = ()  # logged by the job once logging is set up


def resolve_platform(environ: Mapping[str, str]) -> Platform:
    """The platform this process runs on, read from `environ` and the files it names.
    ConfigError (2) for a SageMaker layout that cannot be used."""
    base = sagemaker_base(environ)
    if base is not None:
        return _sagemaker(environ, base)
    if any(environ.get(name) for name in VERTEX_MARKERS):
        return _vertex(environ)
    return Platform(name=None, environ=_local_files(dict(environ)))


def check_inputs(platform: Platform, given: Mapping[str, Any]) -> None:
    """What the platform gives must be used: `given` holds the settings (by field) that a
    flag, a variable, a hyperparameter or a channel set, as resolved."""
    if platform.name == "vertex" and platform.run_dir is None and "artifact_uri" not in given:
        raise ConfigError(
            "on Vertex AI without AIP_MODEL_DIR the run would stay on the container's disk, "
            "which is gone when the job ends; give the job a baseOutputDirectory (which sets "
            "AIP_MODEL_DIR), or ARTIFACT_URI=gs://bucket/runs or s3://bucket/runs")
    if platform.name != "sagemaker":
        return
    if "dataset" not in given:
        listed = ", ".join(platform.channels) or "none"
        raise ConfigError(
            f"no dataset: no `training` or `train` channel (channels: {listed}) and no DATASET; "
            "give the job a `training` channel (and optionally `validation`), or the dataset "
            "hyperparameter (a built-in name such as digits, or a location)")
    default = platform.environ.get("DATASET")
    used = set(platform.dataset_channels) if given["dataset"] == default else set()
    locations = [str(given[name]) for name in LOCATION_FIELDS if given.get(name)]
    for name, folder in platform.channels.items():
        if any(_inside(location, folder) for location in locations):
            used.add(name)
    unused = [name for name in platform.channels if name not in used]
    if unused:
        shown = ", ".join(f"{name.upper()}={given[name]}" for name in ("dataset", "weights")
                          if name in given)
        raise ConfigError(
            f"channel(s) {', '.join(unused)} would not be read ({shown}); leave DATASET "
            "and WEIGHTS unset to train on the channels (`training` or `train`, `validation` "
            "or `test`, `weights`), or drop the channels the job does not need")


def _inside(location: str, folder: str) -> bool:
    path, root = Path(location), Path(folder)
    return path == root or root in path.parents


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


def record_failure(line: str, environ: Mapping[str, str]) -> None:
    """The failure line where the platform shows it: Kubernetes' `kubectl describe pod` (the
    termination log) and SageMaker's FailureReason (output/failure), where writable."""
    # TERMINATION_LOG: the file a pod spec names in terminationMessagePath, when not the default.
    for path in (environ.get("TERMINATION_LOG") or TERMINATION_LOG, failure_file(environ)):
        try:
            if path:
                with open(path, "w") as f:
                    f.write(line + "\n")
        except OSError:
            pass


def settings_variables() -> set[str]:
    """The variables that settings are read from."""
    return {option.variable for option in OPTIONS}


def _sagemaker(environ: Mapping[str, str], base: Path) -> Platform:
    layout = read_sagemaker(dict(environ), base, settings_variables())
    checkpoints = base / "checkpoints"
    tensorboard = base / "output" / "tensorboard"
    return Platform(
        name="sagemaker", environ=_local_files(layout.environ), run_dir=str(base / "model"),
        state_dir=str(checkpoints) if checkpoints.is_dir() else None,
        tensorboard_dir=str(tensorboard) if tensorboard.is_dir() else None,
        failure_file=str(base / "output" / "failure"), channels=layout.channels,
        dataset_channels=layout.dataset_channels, notes=layout.notes)


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

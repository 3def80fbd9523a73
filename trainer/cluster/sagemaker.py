"""SageMaker's training layout (bring your own container) read into variables and channels.

    layout = read_sagemaker(os.environ, Path("/opt/ml"))
    layout.environ, layout.channels, layout.dataset_channels, layout.notes

`input/config/hyperparameters.json` gives settings: keys in any case (`epochs`, `EPOCHS`,
`learning-rate`), values as SageMaker writes them (strings, which its Python SDK 2 JSON-encodes:
`"\"ResNet50\""` is read as ResNet50). Hyperparameters beat the environment (flags beat both, in
load_settings). Keys that SageMaker adds itself (`sagemaker_*`, `_tuning_objective_metric`) are
ignored, and so is the TensorFlow estimator's `model_dir` (named in a note: the run goes to
`model/`); MLflow's variables (`MLFLOW_*`) are passed on to MLflow; any other key that is not a
setting is a ConfigError naming it, so a typo never trains with a default.

`input/config/inputdataconfig.json` names the channels. File and FastFile channels are folders
under `input/data/`; Pipe mode (FIFOs, no files), RecordIO wrapping, and `ShardedByS3Key` over
several hosts (each host would see another part of the data, while every worker of this trainer
reads the whole dataset and takes its own share) are refused, naming the channel and what to give
instead. The dataset, unless set: the `training` (or `train`) channel, with the `validation` (or
else `test`) channel as its validation split (both folders of class folders or of TFRecord files,
presented as one dataset folder with `train/` and `val/` under WORK_DIR); or the one channel
there is. A channel of one `.npz` carries its own validation split (x_test, y_test). WEIGHTS,
unless set: the `weights` channel. Whether every channel is read is checked once the settings are
resolved (trainer.cluster.platforms.check_inputs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

DEFAULT_WORKER_PORT = "2222"
DEFAULT_WORK_DIR = "/tmp/trainer"  # Settings.work_dir's default
TRAINING_CHANNELS = ("training", "train")
VALIDATION_CHANNELS = ("validation", "test")  # the first one present is the validation split
WEIGHTS_CHANNEL = "weights"
FILE_MODES = ("File", "FastFile")
# Hyperparameters that are not settings but may be given: MLflow's own variables.
PASSED_PREFIXES = ("MLFLOW_",)


@dataclass(frozen=True)
class SageMakerLayout:
    environ: dict[str, str]  # the environment with the hyperparameters and the defaults
    channels: dict[str, str]  # every channel: name -> its folder
    dataset_channels: tuple[str, ...]  # the channels DATASET's default is made of
    notes: tuple[str, ...]  # what the job tells the user once logging is set up


def read_sagemaker(environ: dict[str, str], base: Path, settings: set[str]) -> SageMakerLayout:
    """The environment as the job sees it on SageMaker: `environ` with the hyperparameters over
    it, then defaults for what neither sets (DATASET, WEIGHTS, RUN_ID, TF_CONFIG). `settings`:
    the variables that settings are read from."""
    config = base / "input" / "config"
    hyperparameters, notes = _hyperparameters(config / "hyperparameters.json", settings)
    effective = {**environ, **hyperparameters}
    hosts, index = _hosts(config / "resourceconfig.json")
    channels = _channels(config / "inputdataconfig.json", base / "input" / "data", len(hosts))
    defaults: dict[str, str] = {}
    dataset_channels: tuple[str, ...] = ()
    if not effective.get("DATASET"):  # the channels are DATASET's default
        dataset, dataset_channels = _dataset_default(channels, effective.get("WORK_DIR"))
        if dataset:
            defaults["DATASET"] = dataset
    if WEIGHTS_CHANNEL in channels:
        defaults["WEIGHTS"] = channels[WEIGHTS_CHANNEL]
    if environ.get("TRAINING_JOB_NAME"):
        defaults["RUN_ID"] = environ["TRAINING_JOB_NAME"].lower()
    if len(hosts) > 1:
        port = effective.get("WORKER_PORT") or DEFAULT_WORKER_PORT
        defaults["TF_CONFIG"] = json.dumps({
            "cluster": {"worker": [f"{host}:{port}" for host in hosts]},
            "task": {"type": "worker", "index": index}})
    for name, value in defaults.items():
        if not effective.get(name):
            effective[name] = value
    return SageMakerLayout(effective, channels, dataset_channels, tuple(notes))


def _hyperparameters(path: Path, known: set[str]) -> tuple[dict[str, str], list[str]]:
    """hyperparameters.json as variables (upper-case names, string values), and notes."""
    if not path.is_file():
        return {}, []
    try:
        loaded = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ConfigError(f"{path} is not readable JSON ({type(error).__name__}); give "
                          "hyperparameters as a JSON object of names and values") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} is not a JSON object; give hyperparameters as names and "
                          "values")
    variables: dict[str, str] = {}
    unknown, notes = [], []
    for key, value in loaded.items():
        if key.lower().startswith("sagemaker_") or key.startswith("_"):
            continue  # SageMaker's own (its SDK, automatic model tuning)
        if key == "model_dir":
            notes.append(f"hyperparameter model_dir={_text(value)} (added by SageMaker's "
                         "TensorFlow estimator) is not used: the run goes to /opt/ml/model, "
                         "which SageMaker uploads to the job's output path; give the estimator "
                         "model_dir=False to leave it out")
            continue
        name = key.strip().upper().replace("-", "_")
        if name not in known and not name.startswith(PASSED_PREFIXES):
            unknown.append(key)
            continue
        variables[name] = _text(value)
    if unknown:
        raise ConfigError(
            f"hyperparameter(s) {', '.join(sorted(unknown))} are not settings of this trainer; "
            "use the names of its variables in any case (epochs, batch_size, learning_rate, "
            "...; see `trainer train --help`)")
    return variables, notes


def _text(value: Any) -> str:
    """A value as the setting's text: SageMaker's Python SDK 2 JSON-encodes strings."""
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


def _hosts(path: Path) -> tuple[list[str], int]:
    """The hosts of resourceconfig.json, sorted, and this one's index (one host without it)."""
    if not path.is_file():
        return ["algo-1"], 0
    try:
        resources = json.loads(path.read_text())
        hosts, current = sorted(resources["hosts"]), resources["current_host"]
        return hosts, hosts.index(current)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise ConfigError(f"{path} is not valid: it must list hosts and name the current_host "
                          "among them, as SageMaker writes it") from None


def _channels(config: Path, data: Path, hosts: int) -> dict[str, str]:
    """The channels of inputdataconfig.json (else the folders under input/data/), each a
    folder; a ConfigError for a channel this trainer cannot read as files."""
    if not config.is_file():
        if not data.is_dir():
            return {}
        return {child.name: str(child) for child in sorted(data.iterdir()) if child.is_dir()}
    try:
        channels = json.loads(config.read_text())
        described = {str(name): dict(about) for name, about in channels.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        raise ConfigError(f"{config} is not valid: it must map each channel's name to its "
                          "TrainingInputMode, as SageMaker writes it") from None
    for name, about in described.items():
        mode = about.get("TrainingInputMode", "File")
        if mode == "Pipe":
            raise ConfigError(
                f"channel {name} uses TrainingInputMode Pipe, which streams the objects through "
                "a FIFO that this trainer cannot read (it reads files, every epoch); give the "
                "channel InputMode FastFile (streamed from S3 as files) or File")
        if mode not in FILE_MODES:
            raise ConfigError(f"channel {name} has TrainingInputMode {mode}; give File or "
                              "FastFile")
        if about.get("RecordWrapperType", "None") not in ("None", None):
            raise ConfigError(
                f"channel {name} has RecordWrapperType {about['RecordWrapperType']}; give "
                "RecordWrapperType None: the trainer reads the objects as they are")
        if about.get("S3DistributionType") == "ShardedByS3Key" and hosts > 1:
            raise ConfigError(
                f"channel {name} is ShardedByS3Key over {hosts} hosts: each host would get "
                "another part of the objects, while every worker of this trainer reads the "
                "whole dataset and takes its own share of it (of TFRecord files, only the files "
                "it reads); give the channel S3DataDistributionType FullyReplicated")
    return {name: str(data / name) for name in described}


def _dataset_default(channels: dict[str, str], work_dir: str | None
                     ) -> tuple[str | None, tuple[str, ...]]:
    """DATASET made of the channels, and which channels it reads."""
    training = [name for name in TRAINING_CHANNELS if name in channels]
    validation = [name for name in VALIDATION_CHANNELS if name in channels]
    if len(training) > 1:
        raise ConfigError("channels training and train both given; give the training data as "
                          "one channel, `training` or `train`")
    if not training:
        others = [name for name in channels if name != WEIGHTS_CHANNEL]
        if len(others) == 1 and others[0] not in VALIDATION_CHANNELS:
            return channels[others[0]], (others[0],)
        return None, ()
    train = training[0]
    if not validation:
        return channels[train], (train,)
    if len(validation) > 1:
        raise ConfigError(
            "channels validation and test both given; the trainer picks its best epoch on the "
            "validation split and evaluates that model on it: give one of them (evaluate the "
            "model on the other afterwards with `trainer evaluate`)")
    val = validation[0]
    for name in (train, val):
        if _single_npz(Path(channels[name])):
            raise ConfigError(
                f"channel {name} holds one .npz, which carries its own validation split: put "
                f"the images of channel {val} into the training .npz as x_test and y_test and "
                f"drop channel {val}, or give both channels as folders of class folders or of "
                "TFRecord files")
    view = Path(work_dir or DEFAULT_WORK_DIR) / "sagemaker-channels"
    _link(view / "train", Path(channels[train]))
    _link(view / "val", Path(channels[val]))
    return str(view), (train, val)


def _link(link: Path, target: Path) -> None:
    """`link` pointing at `target` (made again if it points elsewhere)."""
    try:
        if link.is_symlink() and Path(link.readlink()) == target:
            return
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(target, target_is_directory=True)
    except OSError as error:
        raise ConfigError(f"WORK_DIR: cannot make {link} ({error.strerror}); give a WORK_DIR "
                          "that is writable") from None


def _single_npz(folder: Path) -> bool:
    try:
        entries = [path for path in folder.iterdir() if not path.name.startswith(".")]
    except OSError:
        return False
    return len(entries) == 1 and entries[0].suffix == ".npz"

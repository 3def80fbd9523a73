"""SageMaker's channels and hyperparameters as users give them (its console, the CLI, its Python
SDK 2 and 3), laid out as real folders, resolved with the image's own environment (the
Dockerfile's ENV) and loaded by the real dataset loader; no TensorFlow.

    .venv/bin/python -m pytest tests/cluster/test_sagemaker.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import image_environ, sagemaker_layout

from trainer.cluster.platforms import resolve_platform
from trainer.data.load import load_dataset
from trainer.errors import ConfigError
from trainer.settings import Settings, load_settings


def resolved(base: Path, tmp_path: Path, flags: dict | None = None, **extra: str) -> Settings:
    environ = image_environ(SAGEMAKER_BASE_DIR=str(base), TRAINING_JOB_NAME="job-1",
                            WORK_DIR=str(tmp_path / "work"), **extra)
    return load_settings(environ, flags)


def refused(base: Path, tmp_path: Path, match: str, flags: dict | None = None,
            **extra: str) -> str:
    with pytest.raises(ConfigError, match=match) as raised:
        resolved(base, tmp_path, flags, **extra)
    assert raised.value.exit_code == 2
    return str(raised.value)


@pytest.mark.parametrize("train, validation", [("train", "validation"),
                                               ("training", "validation"), ("train", "test")])
def test_a_validation_channel_is_the_validation_split(image_folder: Path, tmp_path: Path,
                                                      train: str, validation: str) -> None:
    base = sagemaker_layout(tmp_path, channels={train: image_folder / "train",
                                                validation: image_folder / "val"})
    settings = resolved(base, tmp_path)
    dataset = load_dataset(settings.dataset, validation_split=settings.validation_split,
                           seed=settings.seed)
    channel = base / "input" / "data"
    # Read through the dataset folder WORK_DIR/sagemaker-channels, of links to the channels.
    assert sorted(Path(p).resolve() for p in dataset.train.images) == sorted(
        (channel / train).rglob("*.png"))
    assert sorted(Path(p).resolve() for p in dataset.val.images) == sorted(
        (channel / validation).rglob("*.png"))
    assert dataset.class_names == ("cats", "dogs") and len(dataset.val) == 8


def test_a_training_channel_alone_is_split_as_any_dataset(image_folder: Path,
                                                          tmp_path: Path) -> None:
    base = sagemaker_layout(tmp_path, channels={"train": image_folder / "train"})
    settings = resolved(base, tmp_path)
    assert settings.dataset == str(base / "input" / "data" / "train")
    dataset = load_dataset(settings.dataset, validation_split=0.25, seed=0)
    assert (len(dataset.train), len(dataset.val)) == (15, 5)


def test_channel_layouts_that_cannot_be_read_are_refused(image_folder: Path,
                                                         tmp_path: Path) -> None:
    folders = {"training": image_folder / "train", "validation": image_folder / "val",
               "test": image_folder / "val"}
    base = sagemaker_layout(tmp_path / "three", channels=folders)
    refused(base, tmp_path, "channels validation and test both given; .* `trainer evaluate`")
    both = sagemaker_layout(tmp_path / "both", channels={
        "training": image_folder / "train", "train": image_folder / "train"})
    refused(both, tmp_path, "channels training and train both given")
    npz = sagemaker_layout(tmp_path / "npz", channels={
        "training": {"digits.npz": b"npz"}, "validation": image_folder / "val"})
    refused(npz, tmp_path, "channel training holds one .npz, .* as x_test and y_test")


@pytest.mark.parametrize("fields, hosts, match", [
    ({"TrainingInputMode": "Pipe"}, 1, "channel training uses TrainingInputMode Pipe, .* "
     "FastFile .* or File"),
    ({"RecordWrapperType": "RecordIO"}, 1, "channel training has RecordWrapperType RecordIO; "
     "give RecordWrapperType None"),
    ({"S3DistributionType": "ShardedByS3Key"}, 2, "channel training is ShardedByS3Key over 2 "
     "hosts: .* give the channel S3DataDistributionType FullyReplicated"),
])
def test_input_modes_the_trainer_cannot_read_are_refused_naming_what_to_use(
        tmp_path: Path, fields: dict, hosts: int, match: str) -> None:
    names = tuple(f"algo-{i + 1}" for i in range(hosts))
    base = sagemaker_layout(tmp_path, hosts=names, modes={"training": fields})
    refused(base, tmp_path, match)


def test_fast_file_and_one_hosts_shards_are_read_as_files(tmp_path: Path) -> None:
    base = sagemaker_layout(tmp_path, modes={"training": {
        "TrainingInputMode": "FastFile", "S3DistributionType": "ShardedByS3Key"}})
    assert resolved(base, tmp_path).dataset == str(
        base / "input" / "data" / "training" / "digits.npz")


def test_never_a_silent_fallback_to_a_built_in_dataset(image_folder: Path,
                                                       tmp_path: Path) -> None:
    none = sagemaker_layout(tmp_path / "none", channels={})
    refused(none, tmp_path, "no dataset: no `training` or `train` channel .channels: none. "
            "and no DATASET")
    two = sagemaker_layout(tmp_path / "two", channels={"images": image_folder / "train",
                                                       "extra": image_folder / "val"})
    refused(two, tmp_path, r"channels: images, extra\) and no DATASET")
    # A built-in dataset asked for by name is no fallback.
    assert resolved(none, tmp_path, DATASET="digits").dataset == "digits"


def test_a_channel_that_dataset_or_weights_would_leave_unread_is_refused(
        tmp_path: Path) -> None:
    base = sagemaker_layout(tmp_path, hyperparameters={"dataset": "digits"})
    message = refused(base, tmp_path, r"channel\(s\) training would not be read \(DATASET=digits")
    assert "leave DATASET and WEIGHTS unset" in message
    # The same from a flag, and a weights channel left aside by WEIGHTS.
    plain = sagemaker_layout(tmp_path / "flag")
    refused(plain, tmp_path, "would not be read", flags={"dataset": "digits"})
    weights = sagemaker_layout(tmp_path / "weights", channels={
        "training": {"d.npz": b"npz"}, "weights": {"w.h5": b"h5"}})
    refused(weights, tmp_path, r"channel\(s\) weights would not be read .*WEIGHTS=none",
            WEIGHTS="none")
    # A location inside a channel reads it.
    inside = str(weights / "input" / "data" / "weights" / "w.h5")
    assert resolved(weights, tmp_path, WEIGHTS=inside).weights == inside


def test_the_python_sdks_hyperparameters(tmp_path: Path) -> None:
    """SDK 2's TensorFlow estimator JSON-encodes every value and adds `sagemaker_*` keys and
    `model_dir`; SDK 3's ModelTrainer passes strings as they are and other values as JSON."""
    sdk2 = {"backbone": '"VGG16"', "epochs": "3", "learning_rate": "0.0001",
            "weights": '"none"', "model_dir": '"s3://bucket/tf-job-1/model"',
            "sagemaker_program": '"train.py"', "sagemaker_region": '"eu-west-1"',
            "sagemaker_container_log_level": "20", "sagemaker_job_name": '"tf-job-1"'}
    base = sagemaker_layout(tmp_path / "sdk2", hyperparameters=sdk2)
    settings = resolved(base, tmp_path)
    assert (settings.backbone, settings.epochs, settings.learning_rate, settings.weights) == (
        "VGG16", 3, 1e-4, "none")
    (note,) = resolve_platform({"SAGEMAKER_BASE_DIR": str(base)}).notes
    assert note.startswith("hyperparameter model_dir=s3://bucket/tf-job-1/model (added by "
                           "SageMaker's TensorFlow estimator) is not used")
    sdk3 = {"backbone": "VGG16", "epochs": "3", "fine_tune_epochs": "0", "augment": "flip"}
    base3 = sagemaker_layout(tmp_path / "sdk3", hyperparameters=sdk3)
    assert resolved(base3, tmp_path).augment == "flip"


def test_mlflow_variables_given_as_hyperparameters_reach_mlflow(tmp_path: Path) -> None:
    from trainer.tracking.backlog import configure_client

    base = sagemaker_layout(tmp_path, hyperparameters={
        "mlflow_tracking_uri": "http://mlflow.example:5000", "MLFLOW_TRACKING_USERNAME": "ci",
        "MLFLOW_TRACKING_PASSWORD": "s3cret"})
    environ = resolve_platform(image_environ(SAGEMAKER_BASE_DIR=str(base),
                                             MLFLOW_TRACKING_PASSWORD="from-the-env")).environ
    target: dict[str, str] = {"MLFLOW_TRACKING_PASSWORD": "from-the-env"}
    configure_client(environ, target)  # what MLflow's client reads: the process environment
    assert target["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"
    assert (target["MLFLOW_TRACKING_USERNAME"], target["MLFLOW_TRACKING_PASSWORD"]) == (
        "ci", "s3cret")  # the hyperparameter beats the environment, as for any setting
    config = json.dumps(resolved(base, tmp_path).public_dict())
    assert "s3cret" not in config

"""SageMaker's and Vertex AI's layouts, built as real folders under tmp_path, read into settings.

    .venv/bin/python -m pytest tests/cluster/test_platforms.py

No TensorFlow: the effective environment goes through load_settings and resolve_cluster, as the
job reads it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, sagemaker_layout

from trainer.cluster.platforms import failure_file, fuse_path, resolve_platform
from trainer.cluster.specs import resolve_cluster
from trainer.errors import ConfigError
from trainer.settings import load_settings


def test_sagemaker_hyperparameters_channels_and_folders(tmp_path: Path) -> None:
    # As SageMaker's Python SDK writes them: strings JSON-encoded, keys as the user gave them.
    base = sagemaker_layout(tmp_path, hyperparameters={
        "epochs": "3", "BATCH_SIZE": "8", "backbone": '"VGG16"', "learning-rate": "1e-4",
        "image_size": 32, "sagemaker_program": '"train.py"', "sagemaker_region": '"eu-west-1"',
        "_tuning_objective_metric": "val_accuracy"},
        channels={"training": {"digits.npz": b"npz"}, "weights": {"vgg16.h5": b"h5"}})
    environ = {"SAGEMAKER_BASE_DIR": str(base), "TRAINING_JOB_NAME": "VGG16-Digits-2026",
               "EPOCHS": "9", "POOLING": "max"}
    platform = resolve_platform(environ)
    assert platform.name == "sagemaker"
    settings = load_settings(platform.environ)
    # Hyperparameters beat the environment, which still gives what they leave unset.
    assert (settings.epochs, settings.batch_size, settings.backbone) == (3, 8, "VGG16")
    assert (settings.learning_rate, settings.image_size, settings.pooling) == (1e-4, 32, "max")
    assert settings.run_id == "vgg16-digits-2026"
    # A channel is a folder: the one .npz (or weights file) in it is what is read.
    assert settings.dataset == str(base / "input" / "data" / "training" / "digits.npz")
    assert settings.weights == str(base / "input" / "data" / "weights" / "vgg16.h5")
    assert platform.run_dir == str(base / "model")
    assert platform.state_dir == str(base / "checkpoints")
    assert platform.failure_file == failure_file(environ) == str(base / "output" / "failure")
    assert platform.tensorboard_dir is None
    # Flags still beat hyperparameters.
    assert load_settings(platform.environ, {"epochs": "5"}).epochs == 5
    # One host: no cluster.
    assert resolve_cluster(platform.environ)[1] is None


def test_sagemaker_defaults_give_way_to_what_the_user_set(tmp_path: Path) -> None:
    base = sagemaker_layout(tmp_path, hyperparameters={"dataset": '"s3://bucket/data.npz"'},
                     channels={"images": {"cats/1.png": b"", "dogs/1.png": b""}},
                     checkpoints=False)
    environ = {"SAGEMAKER_BASE_DIR": str(base), "TRAINING_JOB_NAME": "job", "RUN_ID": "mine"}
    platform = resolve_platform(environ)
    assert platform.environ["DATASET"] == "s3://bucket/data.npz"
    assert platform.environ["RUN_ID"] == "mine"
    assert platform.state_dir is None
    # Without a `training` channel, the only one is the dataset (here a folder of classes).
    (base / "input" / "config" / "hyperparameters.json").write_text("{}")
    assert resolve_platform(environ).environ["DATASET"] == str(base / "input" / "data" / "images")


def test_sagemaker_hosts_become_a_multi_worker_cluster(tmp_path: Path) -> None:
    base = sagemaker_layout(tmp_path, hosts=("algo-2", "algo-1", "algo-3"), current="algo-2")
    platform = resolve_platform({"SAGEMAKER_BASE_DIR": str(base)})
    cluster, config = resolve_cluster(platform.environ)
    assert cluster.workers == ("algo-1:2222", "algo-2:2222", "algo-3:2222")
    assert (cluster.index, cluster.is_chief) == (1, False)
    assert config["task"] == {"type": "worker", "index": 1}
    other_port = resolve_platform({"SAGEMAKER_BASE_DIR": str(base), "WORKER_PORT": "7777"})
    assert resolve_cluster(other_port.environ)[0].address == "algo-2:7777"
    # A TF_CONFIG that the user gives wins.
    explicit = json.dumps({"cluster": {"worker": ["x:1"]}, "task": {"type": "worker", "index": 0}})
    given = resolve_platform({"SAGEMAKER_BASE_DIR": str(base), "TF_CONFIG": explicit})
    assert given.environ["TF_CONFIG"] == explicit


def test_bad_hyperparameters_are_config_errors(tmp_path: Path) -> None:
    base = sagemaker_layout(tmp_path, hyperparameters={"epochs": "three"})
    environ = {"SAGEMAKER_BASE_DIR": str(base)}
    with pytest.raises(ConfigError, match="EPOCHS='three' is invalid") as raised:
        load_settings(resolve_platform(environ).environ)
    assert raised.value.exit_code == 2
    (base / "input" / "config" / "hyperparameters.json").write_text('{"epoch": "3"}')
    with pytest.raises(ConfigError, match="hyperparameter.s. epoch are not settings"):
        resolve_platform(environ)
    (base / "input" / "config" / "hyperparameters.json").write_text("{not json")
    with pytest.raises(ConfigError, match="hyperparameters.json is not readable JSON"):
        resolve_platform(environ)
    # The failure line's file is known even then.
    assert failure_file(environ) == str(base / "output" / "failure")


def test_no_sagemaker_layout_no_sagemaker(tmp_path: Path) -> None:
    (tmp_path / "opt-ml" / "input").mkdir(parents=True)  # no input/config/
    environ = {"SAGEMAKER_BASE_DIR": str(tmp_path / "opt-ml"), "EPOCHS": "2"}
    platform = resolve_platform(environ)
    assert (platform.name, platform.run_dir, platform.failure_file) == (None, None, None)
    assert platform.environ == environ and failure_file(environ) is None


def test_vertex_folders_and_gcs_locations_through_the_fuse_root(tmp_path: Path) -> None:
    root = tmp_path / "gcs"
    (root / "bucket" / "data").mkdir(parents=True)
    (root / "bucket" / "data" / "digits.npz").write_bytes(b"npz")
    (root / "bucket" / "weights" / "imagenet").mkdir(parents=True)
    (root / "bucket" / "weights" / "imagenet" / "vgg16_notop.h5").write_bytes(b"h5")
    environ = {"GCS_FUSE_ROOT": str(root), "CLOUD_ML_JOB_ID": "6024518239811076096",
               "AIP_MODEL_DIR": "gs://bucket/jobs/42/model/",
               "AIP_CHECKPOINT_DIR": "gs://bucket/jobs/42/checkpoints/",
               "AIP_TENSORBOARD_LOG_DIR": "gs://bucket/jobs/42/logs/",
               "DATASET": "gs://bucket/data", "WEIGHTS": "gs://bucket/weights",
               "ARTIFACT_URI": "gs://bucket/runs"}
    platform = resolve_platform(environ)
    assert platform.name == "vertex"
    assert platform.run_dir == str(root / "bucket" / "jobs" / "42" / "model")
    assert platform.state_dir == str(root / "bucket" / "jobs" / "42" / "checkpoints")
    assert platform.tensorboard_dir == str(root / "bucket" / "jobs" / "42" / "logs")
    assert platform.failure_file is None
    settings = load_settings(platform.environ)
    assert settings.run_id == "6024518239811076096"
    assert settings.dataset == str(root / "bucket" / "data" / "digits.npz")
    assert settings.weights == str(root / "bucket" / "weights" / "imagenet" / "vgg16_notop.h5")
    assert settings.artifact_uri == str(root / "bucket" / "runs")
    assert fuse_path("gs://b/x") == "/gcs/b/x" and fuse_path("s3://b/x") == "s3://b/x"
    assert load_settings(resolve_platform({**environ, "RUN_ID": "mine"}).environ).run_id == "mine"


def test_initializer_folders_are_read_as_the_dataset_and_weights_file(tmp_path: Path) -> None:
    """Kubeflow Trainer's initializers fill /workspace/dataset and /workspace/model."""
    dataset, model = tmp_path / "workspace" / "dataset", tmp_path / "workspace" / "model"
    (dataset / "train" / "cats").mkdir(parents=True)
    (model / "keras").mkdir(parents=True)
    (model / "keras" / "backbone.weights.h5").write_bytes(b"h5")
    (model / "README.md").write_text("a model card")
    environ = {"DATASET": str(dataset), "WEIGHTS": str(model)}
    resolved = resolve_platform(environ).environ
    assert resolved["DATASET"] == str(dataset)  # a folder of classes stays a folder
    assert resolved["WEIGHTS"] == str(model / "keras" / "backbone.weights.h5")
    (model / "other.h5").write_bytes(b"h5")  # two weights files: which one is not guessed
    assert resolve_platform(environ).environ["WEIGHTS"] == str(model)


def test_the_entrypoint_takes_sagemakers_train_argument() -> None:
    """`docker run IMAGE train` is `trainer train`, not `trainer train train`."""
    for args in (["train", "--epochs", "0"], ["--epochs", "0"]):
        result = subprocess.run([sys.executable, "entrypoint.py", *args], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        assert "EPOCHS='0' is invalid" in result.stderr.strip().splitlines()[-1]


# --- end to end: the real entrypoint, as each platform starts it ---


def test_sagemaker_runs_the_image_with_train_and_its_layout(tiny_npz: Path,
                                                             tmp_path: Path) -> None:
    """`docker run IMAGE train` in SageMaker's layout; then managed spot training's restarts,
    which bring back /opt/ml/checkpoints alone: the shipped model stays the best epoch's."""
    from conftest import clean_environ, json_lines, run_entrypoint

    from trainer.store.artifacts import read_model_metadata

    # A learning rate too small to change a prediction: every epoch ties with the first, which
    # stays the best (a later epoch must beat it), so the last epoch is not the best one.
    base = sagemaker_layout(tmp_path, hyperparameters={
        "backbone": '"VGG16"', "weights": '"none"', "image_size": "32", "epochs": "3",
        "batch_size": "16", "validation_split": "0.25", "augment": '"none"',
        "learning_rate": "1e-9", "export": '"none"'},
        channels={"training": {"tiny.npz": tiny_npz.read_bytes()}})
    env = clean_environ(SAGEMAKER_BASE_DIR=str(base), TRAINING_JOB_NAME="Digits-On-SageMaker",
                        LOG_FORMAT="json", EPOCHS="7", WORK_DIR=str(tmp_path / "work"))
    model, state = base / "model", base / "checkpoints" / "state"
    result = run_entrypoint(env, "train")  # `docker run IMAGE train`
    assert result.returncode == 0, result.stderr
    config = json.loads((model / "config.json").read_text())
    assert config["settings"]["run_id"] == "digits-on-sagemaker"
    assert config["settings"]["epochs"] == 3  # the hyperparameter beats the variable
    assert config["settings"]["dataset"] == str(base / "input" / "data" / "training" /
                                                "tiny.npz")
    manifest = json.loads((model / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["best_epoch"] == 1
    best_sha256 = manifest["artifacts"]["best.h5"]["sha256"]
    assert (state / "LATEST.json").is_file()
    assert not (model / "state").exists()  # the state is SageMaker's to sync
    assert any(r["message"].startswith("run finished") for r in json_lines(result.stdout))

    def restart_with_an_empty_model_folder(after_epoch: int) -> dict:
        shutil.rmtree(model)
        model.mkdir()
        restarted = run_entrypoint(env, "train")
        assert restarted.returncode == 0, restarted.stderr
        assert f"resuming after epoch {after_epoch}" in [
            r["message"] for r in json_lines(restarted.stdout)]
        shipped = json.loads((model / "manifest.json").read_text())
        assert shipped["best_epoch"] == 1 and len(shipped["artifacts"]) > 5
        assert shipped["artifacts"]["best.h5"]["sha256"] == best_sha256
        assert read_model_metadata(model / "best.h5")["epoch"] == 1
        return shipped

    # Restarted in the finish phase (every epoch done, the manifest not yet written).
    restart_with_an_empty_model_folder(after_epoch=3)
    # Restarted after epoch 2: the pointer as it was before epoch 3's state was saved.
    pointer = json.loads((state / "LATEST.json").read_text())
    assert [entry["epoch"] for entry in pointer["states"]] == [3, 2]
    (state / "LATEST.json").write_text(json.dumps({"states": pointer["states"][1:]}))
    shipped = restart_with_an_empty_model_folder(after_epoch=2)
    assert shipped["epochs_done"] == 3

    (base / "input" / "config" / "hyperparameters.json").write_text('{"epochs": "0"}')
    failed = run_entrypoint(env, "train", timeout=60)
    assert failed.returncode == 2
    line = (base / "output" / "failure").read_text().strip()
    assert line == "EPOCHS='0' is invalid: give a whole number >= 1 and <= 100000"
    assert failed.stderr.strip().endswith(line)


def test_vertex_reads_and_writes_cloud_storage_through_its_mount(tiny_npz: Path,
                                                                  tmp_path: Path) -> None:
    """A trial of a tuning job: the tuned hyperparameters as Vertex AI passes them
    (`--learning_rate=...`), the tuned metric in cloudml-hypertune's file."""
    from conftest import clean_environ, run_entrypoint

    mount = tmp_path / "gcs"
    (mount / "data-bucket" / "sets").mkdir(parents=True)
    (mount / "data-bucket" / "sets" / "tiny.npz").write_bytes(tiny_npz.read_bytes())
    metrics_file = tmp_path / "hypertune" / "output.metrics"
    env = clean_environ(
        {"BACKBONE": "VGG16", "WEIGHTS": "none", "IMAGE_SIZE": "32", "EPOCHS": "1",
         "BATCH_SIZE": "16", "VALIDATION_SPLIT": "0.25", "AUGMENT": "none"},
        GCS_FUSE_ROOT=str(mount), CLOUD_ML_JOB_ID="1234567890", CLOUD_ML_TRIAL_ID="7",
        CLOUD_ML_HP_METRIC_FILE=str(metrics_file), DATASET="gs://data-bucket/sets/tiny.npz",
        AIP_MODEL_DIR="gs://out-bucket/job/model/", AIP_CHECKPOINT_DIR="gs://out-bucket/job/ckpt/",
        AIP_TENSORBOARD_LOG_DIR="gs://out-bucket/job/logs/", WORK_DIR=str(tmp_path / "work"))
    result = run_entrypoint(env, "--learning_rate=0.0005", "--epochs", "2")
    assert result.returncode == 0, result.stderr
    model_dir = mount / "out-bucket" / "job" / "model"
    config = json.loads((model_dir / "config.json").read_text())
    assert config["settings"]["run_id"] == "1234567890"
    assert (config["settings"]["learning_rate"], config["settings"]["epochs"]) == (0.0005, 2)
    manifest = json.loads((model_dir / "manifest.json").read_text())
    assert manifest["status"] == "finished"
    assert (mount / "out-bucket" / "job" / "ckpt" / "state" / "LATEST.json").is_file()
    assert list((mount / "out-bucket" / "job" / "logs" / "validation").iterdir())
    # One line per epoch and one at the end, as cloudml-hypertune writes them: the best
    # val_accuracy so far, so that the final measurement is the shipped model's.
    history = json.loads((model_dir / "history.json").read_text())
    best_so_far = [max(row["val_accuracy"] for row in history[:end]) for end in (1, 2, 2)]
    lines = [json.loads(line) for line in metrics_file.read_text().splitlines()]
    assert [(line["trial"], line["global_step"]) for line in lines] == [
        ("7", "1"), ("7", "2"), ("7", "2")]
    assert [float(line["val_accuracy"]) for line in lines] == best_so_far
    assert float(lines[-1]["val_accuracy"]) == manifest["best_value"]
    assert all(set(line) == {"timestamp", "trial", "global_step", "val_accuracy", "checkpoint_path"}
               for line in lines)

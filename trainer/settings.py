"""Settings: read once from flags and environment variables into one frozen dataclass (the
options, their variables, help and parsers are trainer.options').

A flag beats a variable; a variable beats the default. Validation needs no TensorFlow, so a bad
setting fails in well under a second.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trainer.cluster.platforms import check_inputs, resolve_platform
from trainer.errors import ConfigError
from trainer.models.backbones import MIN_IMAGE_SIZE
from trainer.options import OPTIONS, Option, check_run_id
from trainer.redaction import redact

MONITORS: dict[str, Literal["max", "min"]] = {"val_accuracy": "max", "val_loss": "min",
                                              "accuracy": "max", "loss": "min"}
# Built-ins whose images a horizontal flip or a crop would falsify (a flipped 2 is no 2).
# Built-ins of natural photos, which flips and shifts leave true; anything else (digits, a user's
# own data the job cannot know to be photos) is augmented only when AUGMENT asks for it.
AUGMENTED_DATASETS = ("cifar10", "cifar100")
# The settings that change what a run makes (its data, model, numbers or exports): a finished
# run re-run with another value of one of them did not do what was asked. The rest (where and
# how it is stored, logged, timed, compiled) leave the result as it is.
RESULT_SETTINGS = (
    "dataset", "backbone", "pooling", "epochs", "batch_size", "image_size", "weights",
    "learning_rate", "validation_split", "monitor", "seed", "cpu_replicas", "fine_tune_epochs",
    "fine_tune_layers", "fine_tune_learning_rate", "lr_schedule", "warmup_epochs",
    "label_smoothing", "early_stopping_patience", "augment", "precision", "batch_norm_sync",
    "bad_images", "export")


@dataclass(frozen=True)
class Settings:
    dataset: str = "cifar10"
    dataset_format: Literal["npz", "folder", "tfrecord", "webdataset", "parquet"] | None = None
    data_cache_bytes: int | None = None  # None: trainer.data.shards.default_cache_bytes
    dataset_mirror: str | None = None
    backbone: str = "ResNet50"
    pooling: Literal["avg", "max"] = "avg"
    epochs: int = 10
    batch_size: int = 64
    image_size: int | None = None
    weights: str = "imagenet"
    learning_rate: float = 1e-3
    validation_split: float = 0.1
    monitor: Literal["val_accuracy", "val_loss", "accuracy", "loss"] = "val_accuracy"
    seed: int = 0
    artifact_uri: str = "./runs"
    run_id: str = ""
    s3_endpoint_url: str | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    cpu_replicas: int = 1
    log_format: Literal["json", "text"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    upload_timeout: float = 900.0
    steps_per_call: int = 10
    work_dir: str = "/tmp/trainer"
    fine_tune_epochs: int = 0
    fine_tune_layers: int | None = None  # None: the whole backbone
    fine_tune_learning_rate: float | None = None  # None: LEARNING_RATE / 10
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    early_stopping_patience: int = 0
    augment: str = "auto"
    precision: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    xla: Literal["auto", "on", "off"] = "auto"
    peer_timeout: float = 600.0
    termination_grace_seconds: float = 30.0
    export: str = "savedmodel"
    batch_norm_sync: Literal["auto", "step", "save"] = "auto"
    bad_images: Literal["skip", "fail"] = "skip"
    # Folders a platform gives the run (trainer.cluster.platforms), not variables of their own:
    run_dir: str | None = None  # the run's folder itself, in place of ARTIFACT_URI/RUN_ID
    state_dir: str | None = None  # the resume state's folder, in place of the run's state/
    tensorboard_dir: str | None = None  # TensorBoard's event files, in place of tensorboard/

    @property
    def monitor_mode(self) -> Literal["max", "min"]:
        return MONITORS[self.monitor]

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.fine_tune_epochs

    @property
    def fine_tune_rate(self) -> float:
        return self.fine_tune_learning_rate or self.learning_rate / 10

    @property
    def export_formats(self) -> tuple[str, ...]:
        return () if self.export == "none" else tuple(self.export.split(","))

    @property
    def store_uri(self) -> str:
        """Where the store that holds the run is: ARTIFACT_URI, or the platform's folder."""
        return str(Path(self.run_dir).parent) if self.run_dir else self.artifact_uri

    @property
    def run_key(self) -> str:
        """The run's folder in that store: RUN_ID, or the platform folder's name."""
        return Path(self.run_dir).name if self.run_dir else self.run_id

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations in effect: AUGMENT resolved for the dataset."""
        if self.augment == "auto":
            return ("flip", "translate") if self.dataset in AUGMENTED_DATASETS else ()
        return () if self.augment == "none" else tuple(self.augment.split(","))

    def public_dict(self) -> dict[str, Any]:
        """Every setting, for config.json, logs and MLflow: credentials that a URL carries
        (DATASET_MIRROR, S3_ENDPOINT_URL) hidden."""
        return {name: redact(value) if isinstance(value, str) else value
                for name, value in dataclasses.asdict(self).items()}


def changed_settings(saved: Mapping[str, Any], settings: Settings) -> list[str]:
    """Each result setting whose value differs from `saved` (a run's config.json settings), as
    `VARIABLE old -> new`; settings that `saved` does not hold (an older run's) are not compared."""
    variables = {option.field: option.variable for option in OPTIONS}
    current = settings.public_dict()
    return [f"{variables[name]} {_shown(saved[name])} -> {_shown(current[name])}"
            for name in RESULT_SETTINGS if name in saved and saved[name] != current[name]]


def _shown(value: Any) -> str:
    return "unset" if value is None else str(value)


def default_of(option: Option) -> Any:
    """The value a setting has when neither its flag nor its variable is given."""
    return Settings.__dataclass_fields__[option.field].default


def shown_default(option: Option) -> str:
    """The default as --help and docs/configuration.md say it (tests/test_readme.py checks
    that they agree)."""
    if option.default_text is not None:
        return option.default_text
    default = default_of(option)
    if isinstance(default, float):
        return f"{default:g}"
    return "none" if default in (None, "") else str(default)


def load_settings(
    environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None
) -> Settings:
    """Resolve every option (flag, then variable, then default) and validate them together.
    On SageMaker and Vertex AI the platform's layout comes first (trainer.cluster.platforms): its
    hyperparameters rank between the flags and the variables, its channels and folders above the
    defaults, and what it gives must be used (check_inputs)."""
    flags = flags or {}
    platform = resolve_platform(environ)
    environ = platform.environ
    values: dict[str, Any] = {}
    for option in OPTIONS:
        text = flags.get(option.field)
        if text is None:
            text = environ.get(option.variable)
        if text is None or (text == "" and option.field != "run_id"):
            continue
        values[option.field] = option.parse(option.variable, text)
    check_inputs(platform, values)
    settings = Settings(**values, run_dir=platform.run_dir, state_dir=platform.state_dir,
                        tensorboard_dir=platform.tensorboard_dir)
    _check_image_size(settings)
    _check_recipe(settings)
    if not settings.run_id:
        settings = dataclasses.replace(settings, run_id=generate_run_id(settings))
    return settings


def _check_image_size(settings: Settings) -> None:
    minimum = MIN_IMAGE_SIZE[settings.backbone]
    if settings.image_size is not None and settings.image_size < minimum:
        raise ConfigError(
            f"IMAGE_SIZE={settings.image_size} is below {settings.backbone}'s minimum of "
            f"{minimum}; give IMAGE_SIZE >= {minimum} or leave it unset"
        )


def _check_recipe(settings: Settings) -> None:
    if settings.fine_tune_epochs and settings.weights == "none":
        raise ConfigError(f"FINE_TUNE_EPOCHS={settings.fine_tune_epochs} freezes a backbone that "
                          "WEIGHTS=none leaves random; give pre-trained WEIGHTS or "
                          "FINE_TUNE_EPOCHS=0")
    if settings.warmup_epochs and settings.warmup_epochs >= settings.epochs:
        raise ConfigError(f"WARMUP_EPOCHS={settings.warmup_epochs} is not below "
                          f"EPOCHS={settings.epochs}; give fewer warm-up epochs")


def generate_run_id(settings: Settings, now: float | None = None) -> str:
    """e.g. 20261128-143000-resnet50-cifar10."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    source = settings.dataset.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0] or "data"
    slug = re.sub(r"[^a-z0-9]+", "-", f"{settings.backbone}-{source}".lower()).strip("-")
    return f"{stamp}-{slug}"[:128].rstrip("-.")


__all__ = ["OPTIONS", "Settings", "changed_settings", "check_run_id", "default_of",
           "load_settings", "shown_default"]

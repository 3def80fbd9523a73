"""Settings: read once from flags and environment variables into one frozen dataclass.

A flag beats a variable; a variable beats the default. Validation needs no TensorFlow, so a bad
setting fails in well under a second.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trainer.backbones import MIN_IMAGE_SIZE, canonical_name
from trainer.errors import ConfigError

BUILTIN_DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "digits")
MONITORS = {"val_accuracy": "max", "val_loss": "min", "accuracy": "max", "loss": "min"}
RUN_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
AUGMENTATIONS = ("flip", "crop", "translate")
# Built-ins whose images a horizontal flip or a crop would falsify (a flipped 2 is no 2).
UNAUGMENTED_DATASETS = ("digits", "mnist")


@dataclass(frozen=True)
class Settings:
    dataset: str = "cifar10"
    dataset_mirror: str | None = None
    backbone: str = "ResNet50"
    pooling: str = "avg"
    epochs: int = 10
    batch_size: int = 64
    image_size: int | None = None
    weights: str = "imagenet"
    learning_rate: float = 1e-3
    validation_split: float = 0.1
    monitor: str = "val_accuracy"
    seed: int = 0
    artifact_uri: str = "./runs"
    run_id: str = ""
    s3_endpoint_url: str | None = None
    s3_addressing_style: str = "auto"
    cpu_replicas: int = 1
    log_format: str | None = None
    log_level: str = "INFO"
    upload_timeout: float = 900.0
    steps_per_call: int = 10
    work_dir: str = "/tmp/trainer"
    fine_tune_epochs: int = 0
    fine_tune_layers: int | None = None  # None: the whole backbone
    fine_tune_learning_rate: float | None = None  # None: LEARNING_RATE / 10
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    early_stopping_patience: int = 0
    augment: str = "auto"
    precision: str = "auto"
    xla: str = "auto"
    peer_timeout: float = 600.0

    @property
    def monitor_mode(self) -> str:
        return MONITORS[self.monitor]

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.fine_tune_epochs

    @property
    def fine_tune_rate(self) -> float:
        return self.fine_tune_learning_rate or self.learning_rate / 10

    @property
    def augmentations(self) -> tuple[str, ...]:
        """The augmentations in effect: AUGMENT resolved for the dataset."""
        if self.augment == "auto":
            return () if self.dataset in UNAUGMENTED_DATASETS else ("flip", "translate")
        return () if self.augment == "none" else tuple(self.augment.split(","))

    def public_dict(self) -> dict[str, Any]:
        """Every setting, for config.json and logs (none of them holds a secret)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Option:
    """One setting: its variable, its help, and how its text becomes a value."""

    field: str
    variable: str
    help: str
    parse: Callable[[str, str], Any]

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    @property
    def default(self) -> Any:
        return Settings.__dataclass_fields__[self.field].default


def _fail(variable: str, value: str, expected: str) -> ConfigError:
    return ConfigError(f"{variable}={value!r} is invalid: {expected}")


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(variable: str, text: str) -> int:
        expected = f"give a whole number >= {minimum}" + (f" and <= {maximum}" if maximum else "")
        try:
            value = int(text)
        except ValueError:
            raise _fail(variable, text, expected) from None
        if value < minimum or (maximum is not None and value > maximum):
            raise _fail(variable, text, expected)
        return value

    return parse


def _number(low: float, high: float | None, *, low_inclusive: bool) -> Callable[[str, str], float]:
    def parse(variable: str, text: str) -> float:
        expected = f"give a number {'>=' if low_inclusive else '>'} {low:g}"
        expected += f" and < {high:g}" if high is not None else ""
        try:
            value = float(text)
        except ValueError:
            raise _fail(variable, text, expected) from None
        too_low = value < low if low_inclusive else value <= low
        if too_low or (high is not None and value >= high) or value != value:
            raise _fail(variable, text, expected)
        return value

    return parse


def _choice(*choices: str, lower: bool = True) -> Callable[[str, str], str]:
    def parse(variable: str, text: str) -> str:
        value = text.strip().lower() if lower else text.strip().upper()
        if value not in choices:
            raise _fail(variable, text, "choose one of " + ", ".join(choices))
        return value

    return parse


def _fine_tune_layers(variable: str, text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        return _integer(1, 10000)(variable, text)
    except ConfigError:
        raise _fail(variable, text, "give all, or the number N >= 1 of the backbone's top "
                    "layers with weights to unfreeze") from None


def _augment(variable: str, text: str) -> str:
    value = text.strip().lower().replace(" ", "")
    if value in ("auto", "none"):
        return value
    kinds = value.split(",")
    if not value or any(kind not in AUGMENTATIONS for kind in kinds):
        raise _fail(variable, text, "give auto, none, or a comma-separated list of "
                    + ", ".join(AUGMENTATIONS))
    return ",".join(kind for kind in AUGMENTATIONS if kind in kinds)


def _backbone(variable: str, text: str) -> str:
    name = canonical_name(text)
    if name is None:
        raise _fail(variable, text, "name a keras.applications model, e.g. ResNet50, MobileNetV2, "
                    "EfficientNetB0 (any model in keras.applications, any case)")
    return name


def _text(variable: str, text: str) -> str:
    if not text.strip():
        raise _fail(variable, text, "it must not be empty")
    return text.strip()


def _optional_text(variable: str, text: str) -> str | None:
    return text.strip() or None


def _artifact_uri(variable: str, text: str) -> str:
    value = _text(variable, text)
    if "://" in value and not value.startswith("s3://"):
        raise _fail(variable, text, "give a local folder or s3://bucket[/prefix]")
    if value.startswith("s3://"):
        bucket = value[5:].split("/", 1)[0]
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket):
            raise _fail(variable, text, "the bucket name after s3:// must be 3-63 characters of "
                        "a-z, 0-9, '.' and '-'")
    return value


def check_run_id(text: str, variable: str = "RUN_ID") -> str:
    """A run id as given to a command, checked like RUN_ID."""
    return _run_id(variable, text)


def _run_id(variable: str, text: str) -> str:
    value = text.strip()
    if value and (not RUN_ID_PATTERN.fullmatch(value) or ".." in value):
        raise _fail(variable, text, "use at most 128 characters of a-z, 0-9, '.', '_' and '-', "
                    "starting with a letter or digit, without '..'")
    return value


def _weights(variable: str, text: str) -> str:
    value = _text(variable, text)
    return value.lower() if value.lower() in ("imagenet", "none") else value


OPTIONS: tuple[Option, ...] = (
    Option("dataset", "DATASET", "Built-in name (" + ", ".join(BUILTIN_DATASETS) + ") or a local "
           "path / s3:// URI of an .npz, an image folder or a TFRecord folder.", _text),
    Option("dataset_mirror", "DATASET_MIRROR", "URL or local folder holding the built-in "
           "datasets' archives under their usual names, for clusters without internet.",
           _optional_text),
    Option("backbone", "BACKBONE", "keras.applications model name, case-insensitive.", _backbone),
    Option("pooling", "POOLING", "Global pooling before the softmax head: avg or max.",
           _choice("avg", "max")),
    Option("epochs", "EPOCHS", "Number of epochs (>= 1).", _integer(1, 100000)),
    Option("batch_size", "BATCH_SIZE", "Batch size per replica; the global batch is this times "
           "the replicas.", _integer(1, 65536)),
    Option("image_size", "IMAGE_SIZE", "Side N of the N x N input; default: the dataset's own, "
           "raised to the backbone's minimum.", _integer(1, 2048)),
    Option("weights", "WEIGHTS", "imagenet, none, or a local path or s3:// URI of a weights file.",
           _weights),
    Option("learning_rate", "LEARNING_RATE", "Adam learning rate (> 0).",
           _number(0.0, None, low_inclusive=False)),
    Option("validation_split", "VALIDATION_SPLIT", "Fraction held out for validation when the "
           "dataset has no validation or test split (0 < x < 1).",
           _number(0.0, 1.0, low_inclusive=False)),
    Option("monitor", "MONITOR", "Metric that picks the best epoch: " + ", ".join(MONITORS)
           + " (losses minimise).", _choice(*MONITORS)),
    Option("seed", "SEED", "Random seed for the split, the shuffling and the initial weights.",
           _integer(0, 2**31 - 1)),
    Option("artifact_uri", "ARTIFACT_URI", "Where runs are stored: a local folder or "
           "s3://bucket[/prefix].", _artifact_uri),
    Option("run_id", "RUN_ID", "Run name, [a-z0-9][a-z0-9._-]*, at most 128 characters; "
           "default: generated from the time, backbone and dataset.", _run_id),
    Option("s3_endpoint_url", "S3_ENDPOINT_URL", "S3-compatible endpoint; default AWS "
           "(AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL work too).", _optional_text),
    Option("s3_addressing_style", "S3_ADDRESSING_STYLE", "auto, path or virtual.",
           _choice("auto", "path", "virtual")),
    Option("cpu_replicas", "CPU_REPLICAS", "Split the CPU into N logical devices, so "
           "MirroredStrategy runs N replicas without GPUs.", _integer(1, 64)),
    Option("log_format", "LOG_FORMAT", "json or text; default: text on a terminal, json off one.",
           _choice("json", "text")),
    Option("log_level", "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR; DEBUG also shows "
           "tracebacks.", _choice(*LOG_LEVELS, lower=False)),
    Option("upload_timeout", "UPLOAD_TIMEOUT", "Seconds to wait after training for unreachable "
           "storage before exiting 75 with the local copies kept.",
           _number(0.0, None, low_inclusive=True)),
    Option("steps_per_call", "STEPS_PER_CALL", "Training steps per compiled call: more keeps a "
           "GPU busier; SIGTERM is answered after the current call.", _integer(1, 10000)),
    Option("work_dir", "WORK_DIR", "Local folder for a run's files before upload, and the cache "
           "of datasets and weights fetched from S3.", _text),
    Option("fine_tune_epochs", "FINE_TUNE_EPOCHS", "Two-phase transfer learning: after EPOCHS "
           "epochs of the head alone (backbone frozen, BatchNorm in inference mode), this many "
           "more with FINE_TUNE_LAYERS unfrozen; 0 trains the whole model for EPOCHS.",
           _integer(0, 100000)),
    Option("fine_tune_layers", "FINE_TUNE_LAYERS", "all, or N: the backbone's top N layers with "
           "weights that the fine-tuning phase trains (BatchNorm layers are not counted and "
           "stay frozen).",
           _fine_tune_layers),
    Option("fine_tune_learning_rate", "FINE_TUNE_LEARNING_RATE", "Learning rate of the "
           "fine-tuning phase; default LEARNING_RATE / 10.",
           _number(0.0, None, low_inclusive=False)),
    Option("lr_schedule", "LR_SCHEDULE", "constant, or cosine: decay to 0 over each phase.",
           _choice("constant", "cosine")),
    Option("warmup_epochs", "WARMUP_EPOCHS", "Epochs of linear warm-up from 0 at the start of "
           "training (< EPOCHS).", _integer(0, 100000)),
    Option("label_smoothing", "LABEL_SMOOTHING", "Label smoothing of the training loss "
           "(0 <= x < 1).", _number(0.0, 1.0, low_inclusive=True)),
    Option("early_stopping_patience", "EARLY_STOPPING_PATIENCE", "Stop when MONITOR has not "
           "improved for this many epochs of the last phase; 0 never stops early.",
           _integer(0, 100000)),
    Option("augment", "AUGMENT", "auto, none, or a list of " + ", ".join(AUGMENTATIONS)
           + "; auto is flip,translate except for digits and mnist (none).", _augment),
    Option("precision", "PRECISION", "auto, float32, bfloat16 or float16 (mixed, with loss "
           "scaling); auto is bfloat16 on GPUs that support it, float32 elsewhere.",
           _choice("auto", "float32", "bfloat16", "float16")),
    Option("xla", "XLA", "auto, on or off: XLA-compile each replica's forward and backward "
           "pass; auto is on with one GPU per worker, off otherwise.",
           _choice("auto", "on", "off")),
    Option("peer_timeout", "PEER_TIMEOUT", "Multi-worker runs: seconds to wait at start for "
           "every peer worker to answer before exiting 75 naming the missing ones.",
           _number(0.0, None, low_inclusive=False)),
)


def load_settings(
    environ: Mapping[str, str], flags: Mapping[str, str | None] | None = None
) -> Settings:
    """Resolve every option (flag, then variable, then default) and validate them together."""
    flags = flags or {}
    values: dict[str, Any] = {}
    for option in OPTIONS:
        text = flags.get(option.field)
        if text is None:
            text = environ.get(option.variable)
        if text is None or (text == "" and option.field != "run_id"):
            continue
        values[option.field] = option.parse(option.variable, text)
    settings = Settings(**values)
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

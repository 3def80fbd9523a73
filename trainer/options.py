"""Every setting as an option: its variable, its `trainer train` flag, its help, and how its
text becomes a value (a ConfigError naming the variable and the fix when it cannot)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError
from trainer.locations import location, size_in_bytes
from trainer.models.backbones import NOT_HDF5_LOADABLE, canonical_name
from trainer.serving.formats import FORMATS, parse_formats

BUILTIN_DATASETS = ("cifar10", "cifar100", "mnist", "fashion_mnist", "digits")
MONITOR_NAMES = ("val_accuracy", "val_loss", "accuracy", "loss")
RUN_ID_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
AUGMENTATIONS = ("flip", "crop", "translate")


@dataclass(frozen=True)
class Option:
    """One setting: its variable, its help, and how its text becomes a value."""

    field: str
    variable: str
    help: str
    parse: Callable[[str, str], Any]
    # How --help and docs/configuration.md show the default when the value alone cannot say it
    # (None, or a default resolved later); else the default value itself is shown.
    default_text: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


def _fail(variable: str, value: str, expected: str) -> ConfigError:
    return ConfigError(f"{variable}={value!r} is invalid: {expected}")


# The parsers below are made once, when OPTIONS is built; each calls a module-level function at
# parse time, so that `make mutate` (mutmut swaps a function's body per call) reaches their bounds.
def _integer(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    return functools.partial(_parse_integer, minimum, maximum)


def _parse_integer(minimum: int, maximum: int | None, variable: str, text: str) -> int:
    expected = f"give a whole number >= {minimum}" + (f" and <= {maximum}" if maximum else "")
    try:
        value = int(text)
    except ValueError:
        raise _fail(variable, text, expected) from None
    if value < minimum or (maximum is not None and value > maximum):
        raise _fail(variable, text, expected)
    return value


def _number(low: float, high: float | None, *, low_inclusive: bool) -> Callable[[str, str], float]:
    return functools.partial(_parse_number, low, high, low_inclusive)


def _parse_number(low: float, high: float | None, low_inclusive: bool, variable: str,
                  text: str) -> float:
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


def _choice(*choices: str, lower: bool = True) -> Callable[[str, str], str]:
    return functools.partial(_parse_choice, choices, lower)


def _parse_choice(choices: tuple[str, ...], lower: bool, variable: str, text: str) -> str:
    value = text.strip().lower() if lower else text.strip().upper()
    if value not in choices:
        raise _fail(variable, text, "choose one of " + ", ".join(choices))
    return value


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


def _export(variable: str, text: str) -> str:
    return ",".join(parse_formats(text, variable)) or "none"


def _backbone(variable: str, text: str) -> str:
    name = canonical_name(text)
    if name is None:
        raise _fail(variable, text, "name a keras.applications model, e.g. ResNet50, MobileNetV2, "
                    "EfficientNetB0 (any model in keras.applications, any case)")
    if name in NOT_HDF5_LOADABLE:
        raise _fail(variable, text, f"Keras 3.15 cannot load its best.h5 back ({name}: "
                    f"{NOT_HDF5_LOADABLE[name]}); choose another backbone, e.g. MobileNetV2, "
                    "EfficientNetV2S or ResNet50")
    return name


def _text(variable: str, text: str) -> str:
    if not text.strip():
        raise _fail(variable, text, "it must not be empty")
    return text.strip()


def _optional_text(variable: str, text: str) -> str | None:
    return text.strip() or None


def _artifact_uri(variable: str, text: str) -> str:
    return location(variable, text, "a local folder, file:///absolute/folder or "
                    "s3://bucket[/prefix]")


def _dataset(variable: str, text: str) -> str:
    value = _text(variable, text)
    if value.lower() in BUILTIN_DATASETS:
        return value
    return location(variable, text, "a built-in name (" + ", ".join(BUILTIN_DATASETS) + "), a "
                    "local path, file:///absolute/path or s3://bucket/key")


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
    if value.lower() in ("imagenet", "none"):
        return value.lower()
    return location(variable, text, "imagenet, none, a local path, file:///absolute/path or "
                    "s3://bucket/key of a weights file")


OPTIONS: tuple[Option, ...] = (
    Option("dataset", "DATASET", "Built-in name (" + ", ".join(BUILTIN_DATASETS) + ") or a local "
           "path / s3:// URI of an .npz, an image folder, or a folder of TFRecord, WebDataset "
           "(.tar) or Parquet shards (s3:// shards are streamed, never fetched whole).", _dataset),
    Option("dataset_format", "DATASET_FORMAT", "Only where a DATASET's files leave it "
           "ambiguous: npz, folder, tfrecord, webdataset or parquet.",
           _choice("npz", "folder", "tfrecord", "webdataset", "parquet"), "detected"),
    Option("data_cache_bytes", "DATA_CACHE_BYTES", "Local disk for shards streamed from an "
           "s3:// DATASET (the next shards are downloaded ahead, read ones deleted); bytes, or "
           "e.g. 20G or 16Gi. At least the largest shard.", size_in_bytes,
           "half the free disk under WORK_DIR"),
    Option("dataset_mirror", "DATASET_MIRROR", "URL or local folder holding the built-in "
           "datasets' archives under their usual names, for clusters without internet.",
           _optional_text, "none"),
    Option("backbone", "BACKBONE", "keras.applications model name, case-insensitive.", _backbone),
    Option("pooling", "POOLING", "Global pooling before the softmax head: avg or max.",
           _choice("avg", "max")),
    Option("epochs", "EPOCHS", "Number of epochs (>= 1).", _integer(1, 100000)),
    Option("batch_size", "BATCH_SIZE", "Batch size per replica; the global batch is this times "
           "the replicas.", _integer(1, 65536)),
    Option("image_size", "IMAGE_SIZE", "Side N of the N x N input; the dataset's own side is "
           "raised to the backbone's minimum and capped at its native input size (224 for most; "
           "299 Xception and Inception; the EfficientNet sizes).", _integer(1, 2048),
           "the dataset's own side"),
    Option("weights", "WEIGHTS", "imagenet, none, or a local path or s3:// URI of a weights file.",
           _weights),
    Option("learning_rate", "LEARNING_RATE", "Adam learning rate (> 0).",
           _number(0.0, None, low_inclusive=False)),
    Option("validation_split", "VALIDATION_SPLIT", "Fraction held out for validation when the "
           "dataset has no validation or test split (0 < x < 1).",
           _number(0.0, 1.0, low_inclusive=False)),
    Option("monitor", "MONITOR", "Metric that picks the best epoch: " + ", ".join(MONITOR_NAMES)
           + " (losses minimise).", _choice(*MONITOR_NAMES)),
    Option("seed", "SEED", "Random seed for the split, the shuffling and the initial weights.",
           _integer(0, 2**31 - 1)),
    Option("artifact_uri", "ARTIFACT_URI", "Where runs are stored: a local folder or "
           "s3://bucket[/prefix].", _artifact_uri),
    Option("run_id", "RUN_ID", "Run name, [a-z0-9][a-z0-9._-]*, at most 128 characters.",
           _run_id, "generated from the time, backbone and dataset"),
    Option("s3_endpoint_url", "S3_ENDPOINT_URL", "S3-compatible endpoint (AWS_ENDPOINT_URL_S3 "
           "and AWS_ENDPOINT_URL work too).", _optional_text, "none (AWS)"),
    Option("s3_addressing_style", "S3_ADDRESSING_STYLE", "auto, path or virtual.",
           _choice("auto", "path", "virtual")),
    Option("cpu_replicas", "CPU_REPLICAS", "Split the CPU into N logical devices, so "
           "MirroredStrategy runs N replicas without GPUs.", _integer(1, 64)),
    Option("log_format", "LOG_FORMAT", "json or text.", _choice("json", "text"),
           "text on a terminal, json off one"),
    Option("log_level", "LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR; DEBUG also shows "
           "tracebacks.", _choice(*LOG_LEVELS, lower=False)),
    Option("upload_timeout", "UPLOAD_TIMEOUT", "Seconds to wait after training for unreachable "
           "storage before exiting 75 with the local copies kept; also how long a shard "
           "streamed from S3 is waited for during training.",
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
           _fine_tune_layers, "all"),
    Option("fine_tune_learning_rate", "FINE_TUNE_LEARNING_RATE", "Learning rate of the "
           "fine-tuning phase.", _number(0.0, None, low_inclusive=False), "LEARNING_RATE / 10"),
    Option("lr_schedule", "LR_SCHEDULE", "constant, or cosine: decay to 0 over each phase.",
           _choice("constant", "cosine")),
    Option("warmup_epochs", "WARMUP_EPOCHS", "Epochs of linear warm-up from 0 at the start of "
           "training (< EPOCHS).", _integer(0, 100000)),
    Option("label_smoothing", "LABEL_SMOOTHING", "Label smoothing of the training loss "
           "(0 <= x < 1).", _number(0.0, 1.0, low_inclusive=True)),
    Option("early_stopping_patience", "EARLY_STOPPING_PATIENCE", "Stop when MONITOR has not "
           "improved for this many epochs of the last phase; 0 never stops early.",
           _integer(0, 100000), "0 (off)"),
    Option("augment", "AUGMENT", "auto, none, or a list of " + ", ".join(AUGMENTATIONS)
           + "; auto is flip,translate for cifar10 and cifar100, none for any other dataset.",
           _augment),
    Option("precision", "PRECISION", "auto, float32, bfloat16 or float16 (mixed, with loss "
           "scaling); auto is bfloat16 where the hardware runs it natively (GPUs of compute "
           "capability 8.0 or newer, CPUs with AMX-BF16, and CPUs with AVX512-BF16 where a "
           "short test at start finds bfloat16 at least 1.2x as fast), float32 elsewhere.",
           _choice("auto", "float32", "bfloat16", "float16")),
    Option("xla", "XLA", "auto, on or off: XLA-compile each replica's forward and backward "
           "pass; auto is on with one GPU per worker, off otherwise.",
           _choice("auto", "on", "off")),
    Option("peer_timeout", "PEER_TIMEOUT", "Multi-worker runs: seconds to wait at start for "
           "every peer worker to answer before exiting 75 naming the missing ones.",
           _number(0.0, None, low_inclusive=False)),
    Option("batch_norm_sync", "BATCH_NORM_SYNC", "With several replicas: step, BatchNorm's "
           "statistics of the global batch at every step (all-reduces inside every step), or "
           "save, each replica's own batch statistics, the moving averages averaged across "
           "replicas before each evaluation and save; auto is step inside one worker, save "
           "across several workers.", _choice("auto", "step", "save")),
    Option("export", "EXPORT", "none, or a comma list of " + ", ".join(FORMATS) + ": the "
           "serving exports of the best model at the end of a run, each checked against it.",
           _export),
    Option("termination_grace_seconds", "TERMINATION_GRACE_SECONDS", "The pod's grace period "
           "after SIGTERM (the manifests set it to terminationGracePeriodSeconds): the job "
           "saves its state and uploads it within it, 5 s to spare.",
           _number(5.0, None, low_inclusive=False)),
    Option("bad_images", "BAD_IMAGES", "skip or fail: what to do with image files that are "
           "empty, truncated or no image (skip leaves them out, counts them and names them in "
           "the log and config.json; fail exits 3 naming them).", _choice("skip", "fail")),
)

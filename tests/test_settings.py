"""Settings: every contract variable parsed and validated; bad values exit 2 naming the variable."""

from __future__ import annotations

import pytest
from conftest import clean_environ, run_entrypoint

from trainer.errors import ConfigError
from trainer.settings import OPTIONS, RESULT_SETTINGS, Settings, changed_settings, load_settings

CONTRACT_VARIABLES = {
    "DATASET", "DATASET_MIRROR", "BACKBONE", "POOLING", "EPOCHS", "BATCH_SIZE", "IMAGE_SIZE",
    "WEIGHTS", "LEARNING_RATE", "VALIDATION_SPLIT", "MONITOR", "SEED", "ARTIFACT_URI", "RUN_ID",
    "S3_ENDPOINT_URL", "S3_ADDRESSING_STYLE", "CPU_REPLICAS", "LOG_FORMAT", "LOG_LEVEL",
}


def test_every_contract_variable_is_a_setting() -> None:
    assert {o.variable for o in OPTIONS} >= CONTRACT_VARIABLES


def test_defaults_follow_the_contract() -> None:
    settings = load_settings({})
    assert (settings.dataset, settings.backbone, settings.pooling) == ("cifar10", "ResNet50", "avg")
    assert (settings.epochs, settings.batch_size, settings.image_size) == (10, 64, None)
    assert (settings.weights, settings.learning_rate, settings.validation_split) == (
        "imagenet", 1e-3, 0.1)
    assert (settings.monitor, settings.seed, settings.artifact_uri) == ("val_accuracy", 0, "./runs")
    assert (settings.s3_addressing_style, settings.cpu_replicas, settings.log_level) == (
        "auto", 1, "INFO")
    assert settings.run_id.endswith("-resnet50-cifar10")


def test_every_variable_is_parsed() -> None:
    environ = {
        "DATASET": "s3://data/set.npz", "DATASET_MIRROR": "http://mirror/keras",
        "BACKBONE": "mobilenetv2", "POOLING": "MAX", "EPOCHS": "3", "BATCH_SIZE": "8",
        "IMAGE_SIZE": "48", "WEIGHTS": "None", "LEARNING_RATE": "2e-4",
        "VALIDATION_SPLIT": "0.25", "MONITOR": "val_loss", "SEED": "7",
        "ARTIFACT_URI": "s3://bucket/prefix", "RUN_ID": "my-run.1", "S3_ENDPOINT_URL":
        "http://127.0.0.1:9000", "S3_ADDRESSING_STYLE": "path", "CPU_REPLICAS": "2",
        "LOG_FORMAT": "text", "LOG_LEVEL": "debug",
    }
    assert load_settings(environ) == Settings(
        dataset="s3://data/set.npz", dataset_mirror="http://mirror/keras", backbone="MobileNetV2",
        pooling="max", epochs=3, batch_size=8, image_size=48, weights="none",
        learning_rate=2e-4, validation_split=0.25, monitor="val_loss", seed=7,
        artifact_uri="s3://bucket/prefix", run_id="my-run.1",
        s3_endpoint_url="http://127.0.0.1:9000", s3_addressing_style="path", cpu_replicas=2,
        log_format="text", log_level="DEBUG",
    )
    assert load_settings(environ).monitor_mode == "min"


def test_a_flag_beats_a_variable_and_a_variable_beats_the_default() -> None:
    settings = load_settings({"EPOCHS": "5", "BATCH_SIZE": "16"}, {"epochs": "2"})
    assert (settings.epochs, settings.batch_size, settings.pooling) == (2, 16, "avg")


BAD_VALUES = [
    ("BACKBONE", "ResNet51"), ("EPOCHS", "0"), ("EPOCHS", "abc"), ("POOLING", "mean"),
    ("RUN_ID", "a/b"), ("RUN_ID", "run..1"), ("RUN_ID", "Upper"), ("RUN_ID", "x" * 129),
    ("BATCH_SIZE", "0"), ("IMAGE_SIZE", "-3"), ("LEARNING_RATE", "0"), ("LEARNING_RATE", "fast"),
    ("VALIDATION_SPLIT", "1"), ("VALIDATION_SPLIT", "0"), ("MONITOR", "f1"), ("SEED", "-1"),
    ("ARTIFACT_URI", "gs://bucket/runs"), ("ARTIFACT_URI", "s3://B/x"),
    ("S3_ADDRESSING_STYLE", "dns"), ("CPU_REPLICAS", "0"), ("LOG_FORMAT", "xml"),
    ("LOG_LEVEL", "LOUD"), ("DATASET", " "),
    ("FINE_TUNE_EPOCHS", "-1"), ("FINE_TUNE_LAYERS", "0"), ("FINE_TUNE_LAYERS", "top"),
    ("FINE_TUNE_LEARNING_RATE", "0"), ("LR_SCHEDULE", "linear"), ("WARMUP_EPOCHS", "-2"),
    ("LABEL_SMOOTHING", "1"), ("LABEL_SMOOTHING", "-0.1"), ("EARLY_STOPPING_PATIENCE", "-1"),
    ("AUGMENT", "flip,rotate"), ("AUGMENT", ","), ("PRECISION", "float8"), ("XLA", "maybe"),
    ("PEER_TIMEOUT", "0"), ("PEER_TIMEOUT", "soon"),
    ("DATASET_FORMAT", "csv"), ("DATA_CACHE_BYTES", "0"), ("DATA_CACHE_BYTES", "-5"),
    ("DATA_CACHE_BYTES", "lots"), ("DATA_CACHE_BYTES", "20Xi"),
    *[(variable, uri) for variable in ("ARTIFACT_URI", "DATASET", "WEIGHTS") for uri in (
        "s3:/bucket/x", "s3:bucket/x", "S3://bucket/x", "gs://bucket/x", "http://host/x",
        "file://host/x")],
]


@pytest.mark.parametrize(("variable", "value"), BAD_VALUES)
def test_bad_value_is_a_config_error_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({variable: value})
    assert str(caught.value).startswith(f"{variable}=")
    assert caught.value.exit_code == 2


@pytest.mark.parametrize(("environ", "message"), [
    ({"BATCH_SIZE": "65537"}, "give a whole number >= 1 and <= 65536"),
    ({"LEARNING_RATE": "0"}, "give a number > 0$"),
    ({"LABEL_SMOOTHING": "1"}, "give a number >= 0 and < 1$"),
    ({"FINE_TUNE_EPOCHS": "1", "FINE_TUNE_LAYERS": "10001"}, "give all, or the number N >= 1"),
])
def test_each_range_ends_where_its_message_says(environ: dict[str, str], message: str) -> None:
    """The ends of the ranges (make mutate found them untested): whole numbers include both,
    fractions include the lower end or not as the message says and exclude the upper one."""
    with pytest.raises(ConfigError, match=message):
        load_settings(environ)
    accepted = {"BATCH_SIZE": "65536", "LABEL_SMOOTHING": "0", "FINE_TUNE_LAYERS": "10000",
                "LEARNING_RATE": "1e-300"}
    variable = next(name for name in environ if name in accepted)
    settings = load_settings({**environ, variable: accepted[variable]})
    assert getattr(settings, variable.lower()) == type(getattr(settings, variable.lower()))(
        accepted[variable])
    if variable == "FINE_TUNE_LAYERS":
        assert load_settings({**environ, variable: "1"}).fine_tune_layers == 1


def test_the_default_words_given_explicitly_are_the_defaults() -> None:
    """`WEIGHTS=ImageNet` is the ImageNet weights, not a file named so, and `AUGMENT=Auto` is
    the default, not an unknown augmentation (make mutate found both untested)."""
    settings = load_settings({"WEIGHTS": "ImageNet", "AUGMENT": "Auto"})
    assert (settings.weights, settings.augment) == (load_settings({}).weights, "auto")


def test_sizes_are_bytes_or_kubernetes_quantities() -> None:
    assert [load_settings({"DATA_CACHE_BYTES": text}).data_cache_bytes
            for text in ("50000", "500M", "20Gi", "1.5T", "64kB")] == [
        50_000, 500_000_000, 20 * 2**30, 1_500_000_000_000, 64_000]
    assert load_settings({}).data_cache_bytes is None  # a share of the free disk
    assert load_settings({"DATASET_FORMAT": "Parquet"}).dataset_format == "parquet"


def test_a_malformed_uri_names_the_accepted_forms_and_file_uris_are_paths() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings({"ARTIFACT_URI": "s3:/runs"})
    assert str(caught.value) == (
        "ARTIFACT_URI='s3:/runs' is invalid: give a local folder, file:///absolute/folder or "
        "s3://bucket[/prefix]; s3:// in lower case, no other scheme")
    with pytest.raises(ConfigError, match=r"^WEIGHTS='gs://b/w.h5' is invalid: give imagenet, "
                       r"none, .* \(gs:// is read on Vertex AI alone, through its Cloud Storage"):
        load_settings({"WEIGHTS": "gs://b/w.h5"})
    settings = load_settings({"ARTIFACT_URI": "file:///srv/runs", "DATASET": "file:///d/a%20b",
                              "WEIGHTS": "file://localhost/w/best.h5"})
    assert (settings.artifact_uri, settings.dataset, settings.weights) == (
        "/srv/runs", "/d/a b", "/w/best.h5")
    plain = load_settings({"ARTIFACT_URI": "runs", "DATASET": "MNIST", "WEIGHTS": "./w.h5"})
    assert (plain.artifact_uri, plain.dataset, plain.weights) == ("runs", "MNIST", "./w.h5")


def test_image_size_below_the_backbone_minimum_names_both() -> None:
    with pytest.raises(ConfigError, match=r"IMAGE_SIZE=64 is below Xception's minimum of 71"):
        load_settings({"BACKBONE": "xception", "IMAGE_SIZE": "64"})
    assert load_settings({"BACKBONE": "xception", "IMAGE_SIZE": "71"}).image_size == 71


@pytest.mark.parametrize(("variable", "value"), [
    ("BACKBONE", "resnet51"), ("EPOCHS", "0"), ("EPOCHS", "abc"), ("POOLING", "mean"),
    ("RUN_ID", "../escape"), ("RUN_ID", "a/b"), ("BATCH_SIZE", "0"), ("IMAGE_SIZE", "16"),
    ("FINE_TUNE_LAYERS", "-4"), ("LABEL_SMOOTHING", "1.5"), ("PRECISION", "half"),
    ("ARTIFACT_URI", "s3:/runs"),
])
def test_entrypoint_exits_2_with_one_line_and_no_traceback(variable: str, value: str) -> None:
    result = run_entrypoint(clean_environ(**{variable: value}), timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert variable in result.stderr and "Traceback" not in result.stderr + result.stdout


def test_debug_shows_the_traceback() -> None:
    result = run_entrypoint(clean_environ(EPOCHS="0", LOG_LEVEL="DEBUG"), timeout=60)
    assert result.returncode == 2
    assert "Traceback" in result.stderr


def test_generated_run_id_is_valid_and_names_backbone_and_dataset() -> None:
    settings = load_settings({"BACKBONE": "VGG16", "DATASET": "/data/My Flowers/"})
    assert settings.run_id.endswith("-vgg16-my-flowers")
    assert load_settings({"RUN_ID": settings.run_id}).run_id == settings.run_id


def test_transfer_learning_settings_are_parsed() -> None:
    settings = load_settings({
        "FINE_TUNE_EPOCHS": "3", "FINE_TUNE_LAYERS": "20", "FINE_TUNE_LEARNING_RATE": "1e-5",
        "LR_SCHEDULE": "Cosine", "WARMUP_EPOCHS": "1", "EPOCHS": "2", "LABEL_SMOOTHING": "0.1",
        "EARLY_STOPPING_PATIENCE": "2", "AUGMENT": "translate, flip", "PRECISION": "bfloat16",
        "XLA": "on"})
    assert (settings.fine_tune_epochs, settings.fine_tune_layers, settings.total_epochs) == (
        3, 20, 5)
    assert (settings.fine_tune_rate, settings.lr_schedule, settings.warmup_epochs) == (
        1e-5, "cosine", 1)
    assert (settings.label_smoothing, settings.early_stopping_patience) == (0.1, 2)
    assert settings.augmentations == ("flip", "translate")
    assert (settings.precision, settings.xla) == ("bfloat16", "on")
    assert load_settings({"FINE_TUNE_LAYERS": "ALL"}).fine_tune_layers is None
    assert load_settings({"LEARNING_RATE": "0.01"}).fine_tune_rate == pytest.approx(0.001)


def test_augmentation_is_on_by_default_for_the_built_in_photos_only() -> None:
    assert load_settings({"DATASET": "cifar10"}).augmentations == ("flip", "translate")
    assert load_settings({"DATASET": "cifar100"}).augmentations == ("flip", "translate")
    # Data the job cannot know to be photos is trained as given, as the tutorial does.
    for dataset in ("digits", "mnist", "fashion_mnist", "/data/flowers", "s3://bucket/set.npz"):
        assert load_settings({"DATASET": dataset}).augmentations == (), dataset
    assert load_settings({"DATASET": "digits", "AUGMENT": "crop"}).augmentations == ("crop",)
    assert load_settings({"AUGMENT": "none"}).augmentations == ()


@pytest.mark.parametrize(("environ", "message"), [
    ({"FINE_TUNE_EPOCHS": "2", "WEIGHTS": "none"}, "FINE_TUNE_EPOCHS=2 freezes a backbone"),
    ({"WARMUP_EPOCHS": "3", "EPOCHS": "3"}, "WARMUP_EPOCHS=3 is not below EPOCHS=3"),
])
def test_contradicting_settings_name_both(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(environ)


# Settings that leave a run's result as it is: where it is stored, logged, timed or compiled.
NOT_RESULT_SETTINGS = {
    "dataset_mirror", "artifact_uri", "run_id", "s3_endpoint_url", "s3_addressing_style",
    "log_format", "log_level", "upload_timeout", "steps_per_call", "work_dir", "xla",
    "peer_timeout", "termination_grace_seconds",
    # How the same DATASET is read (its format where detection is ambiguous, the stream's cache):
    # the examples, and so the result, are the same.
    "dataset_format", "data_cache_bytes"}


def test_every_setting_is_either_a_result_setting_or_named_as_none() -> None:
    """A new setting must be classed: one that changes the result and is left out of
    RESULT_SETTINGS would let a finished run re-run with it say "nothing to do"."""
    fields = {option.field for option in OPTIONS}
    assert set(RESULT_SETTINGS) | NOT_RESULT_SETTINGS == fields
    assert not set(RESULT_SETTINGS) & NOT_RESULT_SETTINGS


def test_changed_settings_names_each_with_both_values() -> None:
    saved = load_settings({"DATASET": "/data/a", "SEED": "1", "AUGMENT": "flip"}).public_dict()
    same = load_settings({"DATASET": "/data/a", "SEED": "1", "AUGMENT": "flip",
                          "LOG_LEVEL": "DEBUG", "ARTIFACT_URI": "s3://other/runs"})
    assert changed_settings(saved, same) == []
    other = load_settings({"DATASET": "/data/b", "SEED": "1", "AUGMENT": "flip",
                           "WEIGHTS": "none", "LABEL_SMOOTHING": "0.1", "PRECISION": "float32",
                           "IMAGE_SIZE": "64"})
    assert changed_settings(saved, other) == [
        "DATASET /data/a -> /data/b", "IMAGE_SIZE unset -> 64", "WEIGHTS imagenet -> none",
        "LABEL_SMOOTHING 0.0 -> 0.1", "PRECISION auto -> float32"]
    # An older run's config.json without a setting: that one is not compared.
    assert changed_settings({"seed": 1}, other) == []

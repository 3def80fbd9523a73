"""Backbones: the static table matches keras.applications; the tutorial's model is built."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pytest

from trainer.errors import DataError
from trainer.models.backbones import MIN_IMAGE_SIZE, canonical_name
from trainer.models.classifier import (
    build_model,
    link_baked_weights,
    preprocess_function,
    preprocessing_name,
)


def test_table_lists_exactly_the_installed_keras_applications() -> None:
    installed = {n for n in dir(keras.applications) if n[0].isupper()}
    assert set(MIN_IMAGE_SIZE) == installed


def test_names_are_case_insensitive_and_minimums_follow_keras() -> None:
    assert canonical_name("resnet50") == "ResNet50"
    assert canonical_name(" EFFICIENTNETB0 ") == "EfficientNetB0"
    assert canonical_name("resnet51") is None
    assert (MIN_IMAGE_SIZE["Xception"], MIN_IMAGE_SIZE["InceptionV3"],
            MIN_IMAGE_SIZE["ResNet50"]) == (71, 75, 32)


def test_each_family_has_its_own_preprocessing() -> None:
    pixels = np.full((1, 2, 2, 3), 255.0, dtype=np.float32)
    assert preprocessing_name("ResNet50") == "keras.applications.resnet"
    assert float(np.max(preprocess_function("MobileNetV2")(pixels.copy()))) == pytest.approx(1.0)
    assert float(np.max(preprocess_function("EfficientNetB0")(pixels.copy()))) == 255.0
    assert float(np.min(preprocess_function("ResNet50")(pixels.copy()))) < 255.0 - 100


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_the_tutorial_model_pools_then_softmaxes_in_float32(pooling: str) -> None:
    model = build_model("VGG16", pooling, 32, 5, None)
    layer_names = [layer.__class__.__name__ for layer in model.layers]
    expected = "GlobalAveragePooling2D" if pooling == "avg" else "GlobalMaxPooling2D"
    assert layer_names[-2] == expected and layer_names[-1] == "Dense"
    assert model.output_shape == (None, 5) and model.output.dtype == "float32"
    assert model.layers[-1].get_config()["activation"] == "softmax"


def test_a_weights_file_gives_the_backbone_and_a_fresh_head(tmp_path: Path) -> None:
    trained = build_model("VGG16", "avg", 32, 3, None)
    trained.get_layer("predictions").bias.assign(np.full(3, 5.0, dtype=np.float32))
    trained.save_weights(tmp_path / "model.weights.h5")
    loaded = build_model("VGG16", "avg", 32, 3, str(tmp_path / "model.weights.h5"))
    for a, b in zip(trained.weights, loaded.weights, strict=True):
        if a.path.startswith("predictions/"):
            assert not np.array_equal(a.numpy(), b.numpy()), a.path
        else:
            np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(loaded.get_layer("predictions").bias.numpy(), np.zeros(3))


def test_a_weights_file_of_another_backbone_is_a_data_error(tmp_path: Path) -> None:
    build_model("VGG19", "avg", 32, 3, None).save_weights(tmp_path / "vgg19.weights.h5")
    with pytest.raises(DataError, match="WEIGHTS=.*vgg19.weights.h5 does not fit"):
        build_model("VGG16", "avg", 32, 3, str(tmp_path / "vgg19.weights.h5"))


def test_baked_weights_are_linked_into_an_empty_keras_cache(tmp_path: Path) -> None:
    baked = tmp_path / "opt-keras" / "models"
    baked.mkdir(parents=True)
    (baked / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5").write_bytes(b"weights")
    home = tmp_path / "home-keras"
    home.mkdir()
    link_baked_weights({"BAKED_KERAS_HOME": str(baked.parent), "KERAS_HOME": str(home)})
    linked = home / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert linked.read_bytes() == b"weights"


def test_backbones_whose_best_h5_keras_cannot_load_are_refused_at_once(tmp_path: Path) -> None:
    """Keras 3.15 saves these as HDF5 but cannot load them back without custom objects; when a
    Keras release can, this test fails and NOT_HDF5_LOADABLE shrinks."""
    from trainer.errors import ConfigError
    from trainer.models.backbones import MIN_IMAGE_SIZE, NOT_HDF5_LOADABLE
    from trainer.settings import load_settings

    for name in ("MobileNetV3Small", "ConvNeXtTiny", "InceptionResNetV2"):  # one per family
        model = build_model(name, "avg", max(32, MIN_IMAGE_SIZE[name]), 3, None)
        model.save(tmp_path / f"{name}.h5", include_optimizer=False)
        with pytest.raises(ValueError):
            keras.models.load_model(tmp_path / f"{name}.h5", compile=False)
        with pytest.raises(ConfigError, match=f"BACKBONE='{name.lower()}' is invalid: Keras"):
            load_settings({"BACKBONE": name.lower()})
    assert len(NOT_HDF5_LOADABLE) == 8

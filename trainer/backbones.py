"""The keras.applications backbones by name, and the tutorial's model built on one.

The name table is static so that settings are validated before TensorFlow is imported;
tests/test_backbones.py checks it against the installed keras.applications.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

# Canonical keras.applications name -> smallest input side it accepts with include_top=False.
_MIN_SIZE_EXCEPTIONS = {"Xception": 71, "InceptionV3": 75, "InceptionResNetV2": 75}
_NAMES = (
    "ConvNeXtBase ConvNeXtLarge ConvNeXtSmall ConvNeXtTiny ConvNeXtXLarge "
    "DenseNet121 DenseNet169 DenseNet201 "
    "EfficientNetB0 EfficientNetB1 EfficientNetB2 EfficientNetB3 EfficientNetB4 EfficientNetB5 "
    "EfficientNetB6 EfficientNetB7 EfficientNetV2B0 EfficientNetV2B1 EfficientNetV2B2 "
    "EfficientNetV2B3 EfficientNetV2L EfficientNetV2M EfficientNetV2S "
    "InceptionResNetV2 InceptionV3 MobileNet MobileNetV2 MobileNetV3Large MobileNetV3Small "
    "NASNetLarge NASNetMobile ResNet101 ResNet101V2 ResNet152 ResNet152V2 ResNet50 ResNet50V2 "
    "VGG16 VGG19 Xception"
).split()
MIN_IMAGE_SIZE = {name: _MIN_SIZE_EXCEPTIONS.get(name, 32) for name in _NAMES}
_BY_LOWER = {name.lower(): name for name in _NAMES}


def canonical_name(name: str) -> str | None:
    """`resnet50` -> `ResNet50`; None for a name keras.applications does not have."""
    return _BY_LOWER.get(name.strip().lower())


def preprocess_function(backbone: str) -> Any:
    """The backbone family's own `preprocess_input` (caffe, tf, torch, or a pass-through)."""
    import keras

    constructor = getattr(keras.applications, backbone)
    return importlib.import_module(constructor.__module__).preprocess_input


def preprocessing_name(backbone: str) -> str:
    """The module whose `preprocess_input` a model needs, e.g. `keras.applications.resnet`."""
    import keras

    module = getattr(keras.applications, backbone).__module__
    return module.replace("keras.src.applications.", "keras.applications.")


def build_model(
    backbone: str,
    pooling: str,
    image_size: int,
    num_classes: int,
    weights: str | None,
) -> Any:
    """include_top=False backbone, global `pooling`, then a Dense softmax head (float32 output).

    `weights` is "imagenet", None, or a local path to a weights file of the whole model or of
    the backbone alone; either way only the backbone's weights are used, the head starts fresh.
    """
    import keras

    constructor = getattr(keras.applications, backbone)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    base_weights = "imagenet" if weights == "imagenet" else None
    base = constructor(include_top=False, weights=base_weights, input_tensor=inputs,
                       pooling=pooling)
    _synchronize_batch_norm(base)
    head = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                              name="predictions")
    outputs = head(base.output)
    model = keras.Model(inputs, outputs, name=f"{backbone.lower()}_{pooling}_classifier")
    if weights not in (None, "imagenet"):
        _load_weights_file(model, base, weights)
    return model


def link_baked_weights(environ: dict[str, str]) -> None:
    """ImageNet weights baked into the image (BAKED_KERAS_HOME/models) linked into the Keras
    cache, which on Kubernetes is an empty writable volume, so Keras finds them offline."""
    baked = Path(environ.get("BAKED_KERAS_HOME", "")) / "models"
    if not environ.get("BAKED_KERAS_HOME") or not baked.is_dir():
        return
    home = Path(environ.get("KERAS_HOME") or Path.home() / ".keras")
    if not os.access(home if home.exists() else home.parent, os.W_OK):
        home = Path("/tmp/.keras")  # where Keras itself falls back to
    cache = home / "models"
    if cache.resolve() == baked.resolve():
        return
    cache.mkdir(parents=True, exist_ok=True)
    for file in baked.iterdir():
        if not (cache / file.name).exists():
            (cache / file.name).symlink_to(file)


def _synchronize_batch_norm(base: Any) -> None:
    # keras.applications keeps BatchNormalization statistics per replica; computing them over
    # the global batch keeps every replica's moving mean and variance identical, so the saved
    # model is the same whichever replica it is read from.
    import keras

    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = True


def _reset_head(model: Any) -> None:
    """A fresh head: WEIGHTS are where the backbone starts, whatever the file held. A head
    trained on other classes starts confidently wrong, and its large weights take many steps
    to unlearn (measured: below chance after 3 epochs of head training on 96 images)."""
    head = model.get_layer("predictions")
    head.kernel.assign(head.kernel_initializer(head.kernel.shape, dtype=head.kernel.dtype))
    head.bias.assign(head.bias_initializer(head.bias.shape, dtype=head.bias.dtype))


def _load_weights_file(model: Any, base: Any, path: str) -> None:
    from trainer.errors import DataError

    errors = []
    # The whole model first: a backbone-only file into the whole model raises, whereas a
    # whole-model file loads into the backbone without a word and leaves the head random.
    for target in (model, base):
        try:
            target.load_weights(path)
            _reset_head(model)
            return
        except Exception as error:  # noqa: BLE001 - each failure is reported below
            errors.append(str(error).splitlines()[0] if str(error) else type(error).__name__)
    raise DataError(
        f"WEIGHTS={path} does not fit the {model.name} backbone or model ({errors[0]}); "
        "give a weights file saved from the same BACKBONE, or WEIGHTS=imagenet or none"
    )

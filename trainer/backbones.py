"""The keras.applications backbones by name: a static table, so that settings are validated
before TensorFlow is imported (tests/test_backbones.py checks it against keras.applications).
The model built on a backbone is trainer.model's."""

from __future__ import annotations

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

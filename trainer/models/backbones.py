"""The keras.applications backbones by name: a static table, so that settings are validated
before TensorFlow is imported (tests/models/test_backbones.py checks it against keras.applications).
The model built on a backbone is trainer.models.classifier's."""

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
# The side each backbone was trained on in ImageNet (keras.applications' default input size).
_NATIVE_SIZE_EXCEPTIONS = {
    "Xception": 299, "InceptionV3": 299, "InceptionResNetV2": 299, "NASNetLarge": 331,
    **{f"EfficientNetB{i}": side for i, side in enumerate((224, 240, 260, 300, 380, 456, 528,
                                                           600))},
    "EfficientNetV2B0": 224, "EfficientNetV2B1": 240, "EfficientNetV2B2": 260,
    "EfficientNetV2B3": 300, "EfficientNetV2S": 384, "EfficientNetV2M": 480,
    "EfficientNetV2L": 480,
}
# Backbones whose whole model Keras 3.15 saves as HDF5 but cannot load back without custom
# objects: best.h5 must load with plain keras.models.load_model, so they are refused at once
# rather than after hours of training (tests/models/test_backbones.py checks that they still fail).
_LAYER_SCALE = "its LayerScale layer is not serializable to HDF5"
NOT_HDF5_LOADABLE = {
    "MobileNetV3Small": "its hard-sigmoid arithmetic does not load back from HDF5",
    "MobileNetV3Large": "its hard-sigmoid arithmetic does not load back from HDF5",
    "InceptionResNetV2": "its CustomScaleLayer is not serializable to HDF5",
    **{f"ConvNeXt{size}": _LAYER_SCALE for size in ("Tiny", "Small", "Base", "Large", "XLarge")},
}
NATIVE_IMAGE_SIZE = {name: _NATIVE_SIZE_EXCEPTIONS.get(name, 224) for name in _NAMES}
_BY_LOWER = {name.lower(): name for name in _NAMES}


def canonical_name(name: str) -> str | None:
    """`resnet50` -> `ResNet50`; None for a name keras.applications does not have."""
    return _BY_LOWER.get(name.strip().lower())


def default_image_size(dataset_side: int, backbone: str) -> tuple[int, str]:
    """IMAGE_SIZE when it is not set, and why: the dataset's own side when it is small (raised
    to the backbone's minimum), else the backbone's native input size, so that phone photos
    do not train at 4032 x 4032."""
    minimum, native = MIN_IMAGE_SIZE[backbone], NATIVE_IMAGE_SIZE[backbone]
    if dataset_side > native:
        return native, (f"the images' side ({dataset_side}) is above {backbone}'s native input "
                        f"size, {native}")
    if dataset_side < minimum:
        return minimum, (f"the images' side ({dataset_side}) is below {backbone}'s minimum, "
                         f"{minimum}")
    return dataset_side, "the images' own side"

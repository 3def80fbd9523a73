"""Every backbone family BACKBONE accepts exports to every format through the real path
(trainer.serving.export.export_model): one representative per family, built with WEIGHTS=none at
the family's smallest IMAGE_SIZE, saved as the job saves best.h5, written as SavedModel, ONNX
(the model Triton serves) and LiteRT, each loaded from disk by its own runtime and
compared with best.h5 (largest absolute difference within PARITY_TOLERANCE).

`make test` runs the families whose conversion needed special handling (EfficientNet: its
Normalization layer's captured tensors, frozen by converters._onnx_of); the whole matrix carries
the `exports` marker and runs by `make test-exports` (docs/development.md).

    flock /tmp/cpu.lock .venv/bin/python -m pytest tests/serving/test_families.py -m exports
"""

from __future__ import annotations

from pathlib import Path

import pytest
from test_export import natural_images

from trainer.models.backbones import MIN_IMAGE_SIZE, NOT_HDF5_LOADABLE
from trainer.serving.formats import FORMATS

# One worker runs this module: its exports compete with test_export.py's for the cores.
pytestmark = pytest.mark.xdist_group("export")

# keras.applications module (the family; its preprocess_input) -> its cheapest backbone.
REPRESENTATIVES = {
    "vgg16": "VGG16", "vgg19": "VGG19", "resnet": "ResNet50", "resnet_v2": "ResNet50V2",
    "mobilenet": "MobileNet", "mobilenet_v2": "MobileNetV2", "efficientnet": "EfficientNetB0",
    "efficientnet_v2": "EfficientNetV2B0", "densenet": "DenseNet121",
    "inception_v3": "InceptionV3", "xception": "Xception", "nasnet": "NASNetMobile",
}
# Those whose conversion needed special handling (see _family_params).
AT_RISK = {"efficientnet"}
CLASSES = ["cat", "dog", "eel"]


def test_every_accepted_backbone_has_a_family_representative() -> None:
    """A backbone BACKBONE accepts from a keras.applications module not listed here (a new
    family in trainer/models/backbones.py) fails, until it gets a representative."""
    from trainer.models.classifier import preprocessing_name

    accepted = sorted(set(MIN_IMAGE_SIZE) - set(NOT_HDF5_LOADABLE))
    families = {name: preprocessing_name(name).rsplit(".", 1)[-1] for name in accepted}
    assert sorted(set(families.values()) - set(REPRESENTATIVES)) == []
    assert all(families[name] == family for family, name in REPRESENTATIVES.items())


def _family_params() -> list:
    """Every family in every format behind `exports` (minutes); in `make test`, the families at
    risk in ONNX alone, the conversion their fix is in (about 10 s instead of 60)."""
    return [*[pytest.param(family, FORMATS, marks=pytest.mark.exports, id=REPRESENTATIVES[family])
              for family in sorted(REPRESENTATIVES)],
            *[pytest.param(family, ("onnx",), id=f"{REPRESENTATIVES[family]}-onnx")
              for family in sorted(AT_RISK)]]


@pytest.mark.parametrize("family, formats", _family_params())
def test_the_family_exports_to_every_format_within_tolerance(
        family: str, formats: tuple[str, ...], tmp_path: Path) -> None:
    import keras

    from trainer.models.classifier import build_model, preprocessing_name
    from trainer.serving.export import PARITY_TOLERANCE, export_model
    from trainer.store.artifacts import RunArtifacts
    from trainer.store.stores import LocalStore

    backbone = REPRESENTATIVES[family]
    size = MIN_IMAGE_SIZE[backbone]
    keras.utils.set_random_seed(0)
    artifacts = RunArtifacts(LocalStore(str(tmp_path / "store")), "run", tmp_path / "run")
    artifacts.save_model(build_model(backbone, "avg", size, len(CLASSES), None), "best.h5", {
        "class_names": CLASSES, "image_size": size, "backbone": backbone,
        "preprocessing": preprocessing_name(backbone)})
    results = export_model(tmp_path / "run" / "best.h5", tmp_path / "export", formats,
                           reference_images=natural_images(4, size, size, seed=3), name="fam")
    print(backbone, size, {kind: (r["max_abs_difference"], r["seconds"], r.get("check_seconds"))
                           for kind, r in results.items()})
    assert list(results) == list(formats)
    for kind, result in results.items():
        assert result["status"] == "ok", (backbone, kind, result)
        assert result["max_abs_difference"] is not None, (backbone, kind, result)
        assert result["max_abs_difference"] <= PARITY_TOLERANCE, (backbone, kind, result)
        assert len(result["files"]) > 1, (backbone, kind, result)  # labels.txt and the model
    if "onnx" in results:  # Triton serves the same file, with `images` its one input
        import onnx

        graph = onnx.load(str(tmp_path / "export/triton/fam/1/model.onnx")).graph
        assert [value.name for value in graph.input] == ["images"]

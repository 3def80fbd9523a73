"""The tutorial's model: a keras.applications backbone without its top, global pooling, and a
Dense softmax head; its weights (ImageNet, baked into the image, or a file) and its
preprocessing.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import keras

from trainer.errors import ConfigError, DataError, TransientError, first_line, is_network_outage
from trainer.logs import downloads_logged


def preprocess_function(backbone: str) -> Callable[[Any], Any]:
    """The backbone family's own `preprocess_input` (caffe, tf, torch, or a pass-through)."""
    constructor = getattr(keras.applications, backbone)
    return importlib.import_module(constructor.__module__).preprocess_input


def preprocessing_name(backbone: str) -> str:
    """The module whose `preprocess_input` a model needs, e.g. `keras.applications.resnet`."""
    module = getattr(keras.applications, backbone).__module__
    return module.replace("keras.src.applications.", "keras.applications.")


def build_classifier(backbone: str, pooling: str, image_size: int, num_classes: int,
                     weights: str | None, environ: dict[str, str],
                     synchronized: bool = True) -> keras.Model:
    """`build_model` with the job's errors: settings that keras.applications refuses are exit 2;
    ImageNet weights that cannot be downloaded or arrive corrupted, or a weights file that is
    missing or does not fit, exit 3."""
    if weights == "imagenet":
        link_baked_weights(environ)
    elif weights is not None and not Path(weights).is_file():
        raise DataError(f"WEIGHTS={weights} does not exist; give the path of a weights file, "
                        "WEIGHTS=imagenet or WEIGHTS=none")
    try:
        with downloads_logged(f"{backbone}'s ImageNet weights"):
            return build_model(backbone, pooling, image_size, num_classes, weights,
                               synchronized)
    except ValueError as error:
        corrupted = corrupted_download(error, f"{backbone}'s ImageNet weights")
        if corrupted is not None:
            raise corrupted from error
        raise ConfigError(f"BACKBONE={backbone} cannot be built with these settings: "
                          f"{first_line(error)}") from error
    except Exception as error:
        if weights == "imagenet" and is_network_outage(error):
            raise TransientError(
                f"WEIGHTS=imagenet: could not download {backbone}'s ImageNet weights "
                f"({first_line(error)}); the network or the server is down: "
                "retry later. Without internet: WEIGHTS=<path or s3:// URI of the weights "
                f"file>, the weights baked into the image (--build-arg BAKE_WEIGHTS={backbone}), "
                "or WEIGHTS=none to train from scratch") from error
        if weights == "imagenet" and "fetch" in str(error).lower():
            raise DataError(
                f"WEIGHTS=imagenet: could not download {backbone}'s ImageNet weights "
                "(no internet?); give WEIGHTS=<path or s3:// URI of the weights file>, bake "
                f"them into the image with --build-arg BAKE_WEIGHTS={backbone}, or train from "
                "scratch with WEIGHTS=none"
            ) from error
        raise


def corrupted_download(error: ValueError, what: str) -> DataError | None:
    """A DataError (exit 3) for the ValueError that Keras' `get_file` raises when a download
    does not match its published checksum (an HTML page from a proxy or a captive portal saved
    in place of the file); None for any other ValueError. Keras leaves the file in its cache:
    it is deleted here, so that the next try downloads it again."""
    if "corrupted file detected" not in str(error):
        return None
    # get_file's own variables, where it raised: the file, its URL and the published checksum.
    found: dict[str, Any] = {}
    trace = error.__traceback__
    while trace is not None:
        if trace.tb_frame.f_code.co_name == "get_file":
            found = dict(trace.tb_frame.f_locals)
        trace = trace.tb_next
    path, expected = found.get("download_target"), str(found.get("file_hash") or "")
    if not path or not Path(path).is_file():
        return DataError(f"WEIGHTS=imagenet: the download of {what} is corrupted "
                         f"({first_line(error)}); retry, or give WEIGHTS=<path or s3:// URI of "
                         "the weights file>")
    algorithm = "sha256" if len(expected) == 64 else "md5"
    with open(path, "rb") as f:
        actual = hashlib.file_digest(f, algorithm).hexdigest()
    Path(path).unlink(missing_ok=True)
    return DataError(
        f"WEIGHTS=imagenet: the download of {what} from {found.get('origin')} is corrupted: "
        f"{path} has {algorithm} {actual}, not the published {expected} (a proxy's or portal's "
        "page in place of the file?); deleted, so the next try downloads it again; check the "
        "network's proxy, or give WEIGHTS=<path or s3:// URI of the weights file>")


def build_model(
    backbone: str,
    pooling: str,
    image_size: int,
    num_classes: int,
    weights: str | None,
    synchronized: bool = True,
) -> keras.Model:
    """include_top=False backbone, global `pooling`, then a Dense softmax head (float32 output);
    its BatchNormalization layers `synchronized` across replicas (trainer.loop averages the
    moving statistics of unsynchronized ones).

    `weights` is "imagenet", None, or a local path to a weights file of the whole model or of
    the backbone alone; either way only the backbone's weights are used, the head starts fresh.
    """
    constructor = getattr(keras.applications, backbone)
    inputs = keras.Input((image_size, image_size, 3), name="image")
    base_weights = "imagenet" if weights == "imagenet" else None
    base = constructor(include_top=False, weights=base_weights, input_tensor=inputs,
                       pooling=pooling)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.synchronized = synchronized
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


def _reset_head(model: keras.Model) -> None:
    """A fresh head: WEIGHTS are where the backbone starts, whatever the file held. A head
    trained on other classes starts confidently wrong, and its large weights take many steps
    to unlearn (measured: below chance after 3 epochs of head training on 96 images)."""
    head = model.get_layer("predictions")
    head.kernel.assign(head.kernel_initializer(head.kernel.shape, dtype=head.kernel.dtype))
    head.bias.assign(head.bias_initializer(head.bias.shape, dtype=head.bias.dtype))


def _load_weights_file(model: keras.Model, base: keras.Model, path: str) -> None:
    errors = []
    # The whole model first: a backbone-only file into the whole model raises, whereas a
    # whole-model file loads into the backbone without a word and leaves the head random.
    for target in (model, base):
        try:
            target.load_weights(path)
            _reset_head(model)
            return
        except Exception as error:  # noqa: BLE001 - each failure is reported below
            errors.append(first_line(error))
    if _is_whole_model_h5(path):
        # A run's best.h5 for a dataset with another number of classes: its head cannot fit,
        # and the HDF5 loaders match layers by position, head included. Its backbone can.
        try:
            _load_backbone_of(model, path)
            _reset_head(model)
            return
        except Exception as error:  # noqa: BLE001 - reported below
            errors.insert(0, first_line(error))
    raise DataError(
        f"WEIGHTS={path} does not fit the {model.name} backbone or model ({errors[0]}); "
        "give a weights file saved from the same BACKBONE, or WEIGHTS=imagenet or none"
    )


def _is_whole_model_h5(path: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "model_config" in f.attrs
    except OSError:
        return False


def _backbone_variables(model: keras.Model) -> list[Any]:
    """Every variable but the head's (the last layer), BatchNormalization statistics too, in
    the model's order."""
    head = {id(variable) for variable in model.layers[-1].weights}
    return [variable for variable in model.weights if id(variable) not in head]


def _load_backbone_of(model: keras.Model, path: str) -> None:
    """The backbone of a whole model saved as HDF5 (a run's best.h5) into `model`'s."""
    source = keras.models.load_model(path, compile=False)
    ours, theirs = _backbone_variables(model), _backbone_variables(source)
    if len(ours) != len(theirs):
        raise ValueError(f"its backbone has {len(theirs)} weights, {model.name}'s has "
                         f"{len(ours)}")
    for mine, saved in zip(ours, theirs, strict=True):
        if tuple(mine.shape) != tuple(saved.shape):
            raise ValueError(f"{mine.path} expects {tuple(mine.shape)}, the file's "
                             f"{saved.path} has {tuple(saved.shape)}")
    for mine, saved in zip(ours, theirs, strict=True):
        mine.assign(saved.numpy())


def weights_digest(model: keras.Model) -> str:
    """sha256 over every variable (BatchNormalization statistics too): equal on every worker."""
    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()

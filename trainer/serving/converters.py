"""The serving formats written from a float32 Keras model with its preprocessing inside:
a SavedModel (TF Serving, KServe, Vertex AI), ONNX with a Triton model repository, and LiteRT.
trainer/serving/export.py decides what to write and checks it; trainer/serving/runtimes.py
loads each back.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from trainer.data import images
from trainer.data.pipeline import batch_preprocessor
from trainer.serving.runtimes import LABELS


@dataclass
class ServingModel:
    """What the exports need: a float32 keras.Model, its class names, its input side and its
    backbone's `preprocess_input`."""

    model: Any
    class_names: list[str]
    image_size: int
    preprocess: Callable


def predictor(source: ServingModel) -> Callable:
    """uint8 N x S x S x 3 -> float32 probabilities: training's preprocessing, then the model."""
    preprocess = batch_preprocessor(source.image_size, source.preprocess)
    return lambda batch: tf.cast(source.model(preprocess(batch), training=False), tf.float32)


def _fixed_signature(source: ServingModel) -> tf.TensorSpec:
    size = source.image_size
    return tf.TensorSpec([None, size, size, 3], tf.uint8, name="images")


def write_savedmodel(source: ServingModel, out_dir: Path, name: str) -> Path:
    """savedmodel/1/: `serving_default` (uint8 images of any size) and `serve_bytes`
    (encoded images), both giving `probabilities` and `classes` (top class names, looked up
    in assets/labels.txt, which travels inside)."""
    size, probabilities = source.image_size, predictor(source)
    names = tf.lookup.StaticHashTable(tf.lookup.TextFileInitializer(
        str(out_dir / LABELS), tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
        tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")

    def outputs(batch: tf.Tensor) -> dict[str, tf.Tensor]:
        result = probabilities(batch)
        return {"probabilities": result, "classes": names.lookup(tf.argmax(result, axis=-1))}

    def serve_bytes(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        batch = tf.map_fn(lambda encoded: images.resize(images.decode(encoded), size),
                          image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3],
                                                                         tf.uint8))
        return outputs(batch)

    # The variables the endpoints use are tracked by themselves; tracking the model as well
    # would store every weight twice (a SavedModel twice the size of best.h5).
    archive = keras.export.ExportArchive()
    archive.track(names)
    archive.add_endpoint("serving_default", lambda batch: outputs(images.resize(batch, size)),
                         [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")])
    archive.add_endpoint("serve_bytes", serve_bytes,
                         [tf.TensorSpec([None], tf.string, name="image_bytes")])
    folder = out_dir / "savedmodel" / "1"
    archive.write_out(str(folder), verbose=False)
    return folder


def write_onnx(source: ServingModel, out_dir: Path, name: str) -> Path:
    """onnx/model.onnx (class names and image size in its metadata), and a Triton model
    repository triton/NAME/ serving it with the onnxruntime backend."""
    import onnx

    # Keras' own ONNX export applies this patch (numpy 2 support) before the same call.
    from keras.src.export.tf2onnx_lib import patch_tf2onnx

    with warnings.catch_warnings():  # its own probe of np.object warns under numpy 2
        warnings.simplefilter("ignore", FutureWarning)
        patch_tf2onnx()
    probabilities, signature = predictor(source), _fixed_signature(source)
    function = tf.function(lambda images: {"probabilities": probabilities(images)},
                           input_signature=[signature])
    proto = _onnx_of(function.get_concrete_function())
    onnx.helper.set_model_props(proto, {"class_names": json.dumps(source.class_names),
                                        "image_size": str(source.image_size)})
    path = out_dir / "onnx" / "model.onnx"
    path.parent.mkdir(parents=True)
    onnx.save(proto, str(path))
    triton = out_dir / "triton" / name
    (triton / "1").mkdir(parents=True)
    shutil.copyfile(path, triton / "1" / "model.onnx")
    shutil.copyfile(out_dir / LABELS, triton / LABELS)
    (triton / "config.pbtxt").write_text(triton_config(name, source.image_size,
                                                       len(source.class_names)))
    return path


def _onnx_of(concrete: Any) -> Any:
    """The ONNX model of a concrete function whose inputs are its signature's alone.
    tf2onnx's own from_function takes every placeholder of the graph as an input, including
    those of tensors the function captured (not variables: EfficientNet's Normalization layer
    holds its mean and variance as tensors), which would then be inputs that a caller must
    feed; frozen here, they are constants."""
    import tf2onnx

    captured = {id(tensor) for tensor in concrete.graph.internal_captures}
    inputs = [tensor.name for tensor in concrete.inputs
              if tensor.dtype != tf.resource and id(tensor) not in captured]
    outputs = [tensor.name for tensor in concrete.outputs if tensor.dtype != tf.resource]
    graph = tf2onnx.tf_loader.from_function(concrete, inputs, outputs)
    proto, _ = tf2onnx.convert.from_graph_def(
        graph, name=concrete.name, input_names=inputs, output_names=outputs,
        tensors_to_rename=tf2onnx.convert.tensor_names_from_structed(concrete, inputs, outputs))
    return proto


def triton_config(name: str, image_size: int, classes: int, max_batch_size: int = 64) -> str:
    """Triton's config.pbtxt for the ONNX model (dims without the batch dimension); the
    labels make Triton's classification extension answer with class names."""
    return f"""name: "{name}"
backend: "onnxruntime"
max_batch_size: {max_batch_size}
input [
  {{
    name: "images"
    data_type: TYPE_UINT8
    dims: [ {image_size}, {image_size}, 3 ]
  }}
]
output [
  {{
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ {classes} ]
    label_filename: "{LABELS}"
  }}
]
dynamic_batching {{ }}
"""


def write_litert(source: ServingModel, out_dir: Path, name: str) -> Path:
    """litert/model.tflite: signature `serving_default`, `images` -> `probabilities`."""
    probabilities = predictor(source)
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serving_default",
                         lambda images: {"probabilities": probabilities(images)},
                         [_fixed_signature(source)])
    with tempfile.TemporaryDirectory(prefix="trainer-litert-") as saved:
        # Converted from a SavedModel, as Keras' own LiteRT export does: a tf.function over the
        # model directly converts without its weights.
        archive.write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        flatbuffer = converter.convert()
    path = out_dir / "litert" / "model.tflite"
    path.parent.mkdir(parents=True)
    path.write_bytes(flatbuffer)
    return path


WRITERS = {"savedmodel": write_savedmodel, "onnx": write_onnx, "litert": write_litert}


def folders(kind: str, out_dir: Path, name: str) -> list[Path]:
    return {"savedmodel": [out_dir / "savedmodel"], "litert": [out_dir / "litert"],
            "onnx": [out_dir / "onnx", out_dir / "triton" / name]}[kind]

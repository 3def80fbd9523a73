"""Serving exports: SavedModel, ONNX (with a Triton repository) and LiteRT, each loaded from
disk by its own runtime (ONNX and LiteRT in a fresh process) and compared with best.h5;
`trainer predict` on the exports; `trainer export`; a bfloat16-trained model exported in float32.

    flock /tmp/tf.lock python -m pytest tests/serving/test_export.py -q
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer.errors import ConfigError, DataError

# One worker runs this module: its exports are made once.
pytestmark = pytest.mark.xdist_group("export")

CLASSES = ["cat", "dog", "eel"]
SIZE = 32


def natural_images(count: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth gradients with noise: pixels with structure, like photographs, not pure noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    images = []
    for _ in range(count):
        a, b, c = rng.uniform(-255, 255, 3)
        channels = [a * x + b * y + c * x * y + rng.uniform(0, 255) for _ in range(3)]
        image = np.stack(channels, -1) + rng.normal(0, 20, (height, width, 3))
        images.append(np.clip(image, 0, 255).astype(np.uint8))
    return np.stack(images)


def save_best_h5(folder: Path, policy: str = "float32", seed: int = 0) -> Path:
    """A VGG16 classifier at 32x32 saved as the job saves best.h5 (metadata included), built
    under the Keras dtype `policy` as a run with that PRECISION builds it."""
    import keras

    from trainer.models.classifier import build_model, preprocessing_name
    from trainer.store.artifacts import RunArtifacts
    from trainer.store.stores import LocalStore

    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build_model("VGG16", "avg", SIZE, len(CLASSES), None)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # A head whose logits vary from image to image by about 2 (around a mean of 0), so that
    # the top class depends on the image and no probability saturates at 0 or 1.
    from trainer.models.classifier import preprocess_function

    head = model.get_layer("predictions")
    features = keras.Model(model.input, head.input)(
        preprocess_function("VGG16")(natural_images(32, SIZE, SIZE, seed + 100)
                                     .astype(np.float32))).numpy().astype(np.float64)
    kernel = np.random.default_rng(seed).normal(0, 1, head.kernel.shape)
    kernel *= 2 / max(((features - features.mean(axis=0)) @ kernel).std(), 1e-6)
    head.kernel.assign(kernel.astype(np.float32))
    head.bias.assign((-features.mean(axis=0) @ kernel).astype(np.float32))
    artifacts = RunArtifacts(LocalStore(str(folder / "store")), "run", folder / "run")
    artifacts.save_model(model, "best.h5", {
        "class_names": CLASSES, "image_size": SIZE, "backbone": "VGG16",
        "preprocessing": preprocessing_name("VGG16")})
    return folder / "run" / "best.h5"


def best_h5_probabilities(model_h5: Path, pixels: np.ndarray) -> np.ndarray:
    """best.h5 as training runs it: resized to the training size, the backbone's preprocessing."""
    import keras

    from trainer.data import images
    from trainer.data.pipeline import batch_preprocessor
    from trainer.models.classifier import preprocess_function

    model = keras.models.load_model(model_h5, compile=False)
    preprocess = batch_preprocessor(SIZE, preprocess_function("VGG16"))
    return model(preprocess(images.batch(pixels, SIZE)), training=False).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from trainer.serving.export import export_model

    root = tmp_path_factory.mktemp("export")
    model_h5 = save_best_h5(root)
    # Validation images as a run holds them: other sizes than the model's, one grayscale.
    reference = [*natural_images(6, 40, 30, seed=1), natural_images(1, 20, 20, seed=2)[0, ..., 0]]
    results = export_model(model_h5, root / "export", ["savedmodel", "onnx", "litert"],
                           reference_images=reference, name="tiny")
    return {"root": root, "h5": model_h5, "out": root / "export", "results": results}


# Loads each export with nothing but its runtime's own API (not trainer.serving.runtimes), ONNX and
# LiteRT before TensorFlow is even imported.
RAW_RUNTIMES = r"""
import json, sys
from pathlib import Path
import numpy as np
data, out = np.load(sys.argv[1]), Path(sys.argv[2])
result = {}
import onnxruntime
session = onnxruntime.InferenceSession(str(out / "onnx/model.onnx"),
                                       providers=["CPUExecutionProvider"])
result["onnx"] = session.run(["probabilities"], {"images": data["images"]})[0].tolist()
result["onnx_io"] = [[(t.name, t.type, t.shape[1:]) for t in session.get_inputs()],
                     [(t.name, t.type, t.shape[1:]) for t in session.get_outputs()]]
from ai_edge_litert.interpreter import Interpreter
runner = Interpreter(model_path=str(out / "litert/model.tflite")).get_signature_runner()
result["litert"] = runner(images=data["images"])["probabilities"].tolist()
assert "tensorflow" not in sys.modules
import tensorflow as tf
loaded = tf.saved_model.load(str(out / "savedmodel/1"))
serve, serve_bytes = loaded.signatures["serving_default"], loaded.signatures["serve_bytes"]
answer = serve(images=tf.constant(data["images"]))
result["savedmodel"] = answer["probabilities"].numpy().tolist()
result["classes"] = [name.decode() for name in answer["classes"].numpy()]
result["other_size"] = serve(images=tf.constant(data["other"]))["probabilities"].numpy().tolist()
for kind in ("png", "jpeg"):
    encoded = [path.read_bytes() for path in sorted(out.parent.glob(f"bytes/*.{kind}"))]
    answer = serve_bytes(image_bytes=tf.constant(encoded))
    result[kind] = answer["probabilities"].numpy().tolist()
print(json.dumps(result))
"""


def test_each_export_run_by_its_own_runtime_matches_best_h5(exported: dict) -> None:
    import tensorflow as tf

    from trainer.data import images

    root, out = exported["root"], exported["out"]
    pixels = natural_images(8, SIZE, SIZE, seed=3)
    other = images.resize(pixels, (45, 37)).numpy()  # as a caller would resize, training's way
    (root / "bytes").mkdir()
    jpeg_pixels = []
    for i, image in enumerate(pixels):
        (root / "bytes" / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
        jpeg = tf.io.encode_jpeg(image, quality=90).numpy()
        (root / "bytes" / f"{i}.jpeg").write_bytes(jpeg)
        jpeg_pixels.append(images.decode(jpeg).numpy())
    np.savez(root / "inputs.npz", images=pixels, other=other)
    done = subprocess.run([sys.executable, "-c", RAW_RUNTIMES, str(root / "inputs.npz"),
                           str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])

    expected = best_h5_probabilities(exported["h5"], list(pixels))
    assert len(set(expected.argmax(axis=1))) > 1, "the model must tell these images apart"
    for kind in ("savedmodel", "onnx", "litert", "png"):
        np.testing.assert_allclose(answers[kind], expected, atol=1e-3, rtol=0, err_msg=kind)
    np.testing.assert_allclose(answers["other_size"],
                               best_h5_probabilities(exported["h5"], list(other)), atol=1e-3)
    np.testing.assert_allclose(answers["jpeg"],
                               best_h5_probabilities(exported["h5"], jpeg_pixels), atol=1e-3)
    assert answers["classes"] == [CLASSES[i] for i in expected.argmax(axis=1)]
    assert answers["onnx_io"] == [[["images", "tensor(uint8)", [SIZE, SIZE, 3]]],
                                  [["probabilities", "tensor(float)", [len(CLASSES)]]]]


def test_export_results_and_files(exported: dict) -> None:
    out, results = exported["out"], exported["results"]
    assert list(results) == ["savedmodel", "onnx", "litert"]
    for kind, result in results.items():
        assert result["status"] == "ok", (kind, result)
        assert 0 <= result["max_abs_difference"] <= 1e-3
        assert result["seconds"] > 0 and result["check_seconds"] > 0
        assert "labels.txt" in result["files"]
        assert all((out / name).is_file() for name in result["files"])
    assert {"savedmodel/1/saved_model.pb", "savedmodel/1/assets/labels.txt"} <= set(
        results["savedmodel"]["files"])
    assert set(results["onnx"]["files"]) == {
        "labels.txt", "onnx/model.onnx", "triton/tiny/config.pbtxt",
        "triton/tiny/1/model.onnx", "triton/tiny/labels.txt"}
    assert results["litert"]["files"] == ["labels.txt", "litert/model.tflite"]
    assert (out / "labels.txt").read_text().splitlines() == CLASSES
    # Each weight stored once: no export much larger than best.h5 itself.
    for name in ("savedmodel", "onnx", "litert"):
        size = sum(path.stat().st_size for path in (out / name).rglob("*") if path.is_file())
        assert size < 1.1 * exported["h5"].stat().st_size, name
    assert (out / "savedmodel/1/assets/labels.txt").read_text().splitlines() == CLASSES


def test_triton_repository_describes_the_onnx_model(exported: dict) -> None:
    triton = exported["out"] / "triton" / "tiny"
    config = (triton / "config.pbtxt").read_text()
    assert re.search(r'^name: "tiny"$', config, re.M)
    assert re.search(r'^backend: "onnxruntime"$', config, re.M)
    assert re.search(r'^max_batch_size: \d+$', config, re.M)  # the ONNX batch dim is dynamic
    tensors = re.findall(r'name: "(\w+)"\s+data_type: (\w+)\s+dims: \[ ([\d, ]+) \]', config)
    assert tensors == [("images", "TYPE_UINT8", f"{SIZE}, {SIZE}, 3"),
                       ("probabilities", "TYPE_FP32", str(len(CLASSES)))]
    assert (triton / "1" / "model.onnx").read_bytes() == (
        exported["out"] / "onnx" / "model.onnx").read_bytes()
    assert (triton / "labels.txt").read_text().splitlines() == CLASSES


def predict(capsys: pytest.CaptureFixture, model: Path | str, *paths: Path) -> dict:
    """`trainer predict MODEL IMAGE...` -> {image: [(class, probability), ...]}."""
    from trainer.cli import main

    capsys.readouterr()
    assert main(["predict", str(model), *map(str, paths), "--top", "3"]) == 0
    ranked = {}
    for line in capsys.readouterr().out.strip().splitlines():
        image, rest = line.rsplit(": ", 1)
        ranked[image] = [(part.split()[0], float(part.split()[1])) for part in rest.split(", ")]
    return ranked


def test_predict_with_the_exports_agrees_with_best_h5_and_16_bit_images(
        exported: dict, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import tensorflow as tf

    pixels = natural_images(3, 48, 40, seed=4)
    files = []
    for i, image in enumerate(pixels):
        files.append(tmp_path / f"{i}.png")
        files[-1].write_bytes(tf.io.encode_png(image).numpy())
    twin = tmp_path / "16bit.png"
    twin.write_bytes(tf.io.encode_png(pixels[0].astype(np.uint16) * 257).numpy())
    out = exported["out"]
    by_h5 = predict(capsys, exported["h5"], *files, twin)
    for model in (out / "savedmodel", out / "savedmodel" / "1", out / "onnx" / "model.onnx"):
        by_export = predict(capsys, model, *files, twin)
        for image, ranked in by_h5.items():
            assert by_export[image][0][0] == ranked[0][0], (model, image)
            assert by_export[image][0][1] == pytest.approx(ranked[0][1], abs=2e-3)
        sixteen, eight = by_export[str(twin)], by_export[str(files[0])]
        assert sixteen[0][0] == eight[0][0]
        assert dict(sixteen) == pytest.approx(dict(eight), abs=0.01)
    assert by_h5[str(twin)] == by_h5[str(files[0])]


def test_a_bfloat16_trained_model_exports_in_float32(tmp_path: Path) -> None:
    import keras
    from tensorflow.core.framework import types_pb2
    from tensorflow.core.protobuf import saved_model_pb2

    from trainer.serving.export import export_model, load_float32

    model_h5 = save_best_h5(tmp_path, policy="mixed_bfloat16", seed=5)
    trained = keras.models.load_model(model_h5, compile=False)
    assert trained.get_layer("block1_conv1").compute_dtype == "bfloat16"
    rebuilt, policy = load_float32(model_h5)
    assert policy == "mixed_bfloat16"
    assert {layer.compute_dtype for layer in rebuilt.layers} == {"float32"}
    pixels = natural_images(8, SIZE, SIZE, seed=6)
    from trainer.models.classifier import preprocess_function

    batch = preprocess_function("VGG16")(pixels.astype(np.float32))
    as_trained = trained(batch, training=False).numpy()
    in_float32 = rebuilt(batch, training=False).numpy()
    # The same weights: float32 differs from bfloat16 arithmetic by its rounding only.
    assert np.abs(as_trained - in_float32).max() < 0.05
    assert (as_trained.argmax(axis=1) == in_float32.argmax(axis=1)).mean() >= 0.75

    results = export_model(model_h5, tmp_path / "export", ["savedmodel", "litert"],
                           reference_images=pixels)
    assert all(r["status"] == "ok" and r["max_abs_difference"] <= 1e-3
               for r in results.values()), results
    graph = saved_model_pb2.SavedModel()
    graph.ParseFromString((tmp_path / "export/savedmodel/1/saved_model.pb").read_bytes())
    meta = graph.meta_graphs[0]
    nodes = [*meta.graph_def.node, *(n for f in meta.graph_def.library.function
                                     for n in f.node_def)]
    types = {value.type for node in nodes for value in node.attr.values()}
    assert types_pb2.DT_BFLOAT16 not in types and types_pb2.DT_FLOAT in types


def test_a_conversion_that_fails_or_changes_the_numbers_fails_its_format_only(
        exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.serving import converters, export
    from trainer.serving.converters import ServingModel

    def shifted_litert(source: ServingModel, out_dir: Path, name: str) -> Path:
        # A converter that silently changes the preprocessing, as a real one might.
        changed = ServingModel(source.model, source.class_names, source.image_size,
                               lambda batch: source.preprocess(batch * 0.9))
        return converters.write_litert(changed, out_dir, name)

    def unsupported_onnx(source: ServingModel, out_dir: Path, name: str) -> Path:
        (out_dir / "onnx").mkdir()
        (out_dir / "onnx" / "model.onnx").write_bytes(b"half-written")
        raise ValueError("Unsupported ops: ImageProjectiveTransformV3")  # as tf2onnx says

    monkeypatch.setitem(export.WRITERS, "litert", shifted_litert)
    monkeypatch.setitem(export.WRITERS, "onnx", unsupported_onnx)
    warnings: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = warnings.append  # type: ignore[method-assign]
    logging.getLogger("trainer").addHandler(handler)
    try:
        results = export.export_model(exported["h5"], tmp_path, ["onnx", "litert"],
                                      reference_images=natural_images(4, SIZE, SIZE, seed=7))
    finally:
        logging.getLogger("trainer").removeHandler(handler)
    litert = results["litert"]
    assert litert["status"] == "failed" and litert["max_abs_difference"] > 1e-3
    assert "differs from best.h5" in litert["error"]
    assert litert["files"] == [] and not (tmp_path / "litert").exists()  # none left to publish
    assert results["onnx"] == {"status": "failed", "max_abs_difference": None,
                               "error": "ValueError: Unsupported ops: ImageProjectiveTransformV3",
                               "seconds": results["onnx"]["seconds"], "files": []}
    assert not (tmp_path / "onnx").exists()
    logged = [r.getMessage() for r in warnings]
    assert any("litert export failed" in m for m in logged)
    assert any("onnx export failed" in m for m in logged)


def test_trainer_export_command(exported: dict, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    from trainer.cli import main

    assert main(["export", str(exported["h5"]), "--format", "litert", "--to",
                 str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert f"in {tmp_path / 'out'}" in printed
    assert re.search(r"^litert\s+ok\s+max abs difference \S+\s+.*model\.tflite$", printed, re.M)
    assert (tmp_path / "out" / "litert" / "model.tflite").is_file()
    # A run id: its best.h5 fetched (verified) from the store, as `trainer fetch` does.
    from trainer.store.artifacts import RunArtifacts
    from trainer.store.stores import LocalStore

    store = exported["root"] / "store"
    artifacts = RunArtifacts(LocalStore(str(store)), "run", exported["h5"].parent)
    artifacts.adopt("best.h5", None)
    artifacts.write_json("config.json", {})
    artifacts.write_json("history.json", [])
    artifacts.write_json("manifest.json", artifacts.manifest(status="finished"))
    assert main(["export", "run", "--format", "savedmodel", "--to", str(tmp_path / "run"),
                 "--artifact-uri", str(store)]) == 0
    assert re.search(r"^savedmodel\s+ok\s+", capsys.readouterr().out, re.M)
    assert (tmp_path / "run" / "savedmodel" / "1" / "saved_model.pb").is_file()

    assert main(["export", str(exported["out"] / "onnx" / "model.onnx")]) == 2
    assert "not an .h5 file or a run id" in capsys.readouterr().err
    assert main(["export", str(exported["h5"]), "--format", "tflite"]) == 2
    assert "--format=tflite: unknown format tflite" in capsys.readouterr().err


def test_trainer_export_logs_which_format_runs_and_how_many_are_done(
        exported: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    """Each format is one long call: a line at least every PROGRESS_SECONDS (shortened here)
    names the one running, the formats done of those asked, and the time so far."""
    import trainer.ticker
    from trainer.cli import main

    monkeypatch.setattr(trainer.ticker, "PROGRESS_SECONDS", 0.2)
    assert main(["export", str(exported["h5"]), "--format", "litert", "--to",
                 str(tmp_path / "out"), "--log-level", "INFO"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()
             if line.startswith("{")]
    lines = [line for line in lines if line.get("step") == "export"]
    assert [line.get("running") for line in lines[:1]] == ["litert"]
    assert "check of litert" in {line.get("running") for line in lines}
    done = [line["done"] for line in lines]
    assert done == sorted(done) and done[-1] == lines[-1]["total"] == 2
    assert lines[-1]["message"].startswith(f"export {tmp_path / 'out'} finished: 2/2")
    seconds = [line["elapsed_seconds"] for line in lines]
    assert seconds == sorted(seconds)
    logging.getLogger("trainer").handlers.clear()


def test_a_missing_runtime_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    from trainer.cli import main
    from trainer.serving.formats import check_export_runtimes, parse_formats

    assert parse_formats("none") == () and parse_formats("litert, savedmodel") == (
        "savedmodel", "litert")
    check_export_runtimes(["savedmodel", "onnx", "litert"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError,
                       match=r"EXPORT=onnx needs .*onnxruntime.*pip install -e '\.\[export\]'"):
        check_export_runtimes(["savedmodel", "onnx"])
    check_export_runtimes(["savedmodel", "litert"])
    assert main(["export", "some-run", "--format", "onnx"]) == 2
    assert "onnxruntime" in capsys.readouterr().err


def test_decoding_gives_8_bit_rgb_whatever_the_file(tmp_path: Path) -> None:
    import tensorflow as tf

    from trainer.data import images

    rgb = natural_images(1, 9, 7, seed=8)[0]
    gray = rgb[..., :1]
    rgba = np.concatenate([rgb, np.full((9, 7, 1), 128, np.uint8)], axis=-1)
    deep = rgb.astype(np.uint16) * 256 + rgb[::-1, ::-1]
    for encoded, expected in (
            # 16-bit: scaled down to the nearest 8-bit value (x / 257), not clipped to 255
            (tf.io.encode_png(deep), np.round(deep / 257).astype(np.uint8)),
            (tf.io.encode_png(gray), np.repeat(gray, 3, axis=-1)),
            (tf.io.encode_png(rgba), rgb)):
        np.testing.assert_array_equal(images.decode(encoded).numpy(), expected)
    (tmp_path / "not-an-image.png").write_bytes(b"text")
    with pytest.raises(DataError, match="not-an-image.png is not a readable"):
        images.read(tmp_path / "not-an-image.png")

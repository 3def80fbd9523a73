"""End to end: the real entrypoint trains a tiny model and leaves the contract's artifacts."""

from __future__ import annotations

import csv
import hashlib
import json

import pytest
from conftest import json_lines, run_entrypoint, score_model

# One worker runs every test that reads the shared finished run (trained once per worker).
pytestmark = pytest.mark.xdist_group("finished_run")

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "learning_rate",
                   "seconds", "images_per_second"]


def test_every_stdout_line_is_one_json_object(finished_run: dict) -> None:
    lines = finished_run["result"].stdout.splitlines()
    assert lines and all(json.loads(line)["logger"] == "trainer" for line in lines)
    logged = json_lines(finished_run["result"].stdout)
    epochs = [r for r in logged if r.get("epoch") and "loss" in r]
    assert [r["epoch"] for r in epochs] == [1, 2, 3]
    assert all(r["run_id"] == "tiny" for r in epochs)


def test_history_has_the_contract_columns(finished_run: dict) -> None:
    history = finished_run["history"]
    assert [row["epoch"] for row in history] == [1, 2, 3]
    assert all(list(row) == HISTORY_COLUMNS or set(row) == set(HISTORY_COLUMNS)
               for row in history)
    assert all(row["images_per_second"] > 0 and row["learning_rate"] == pytest.approx(1e-4)
               for row in history)
    with open(finished_run["run"] / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == HISTORY_COLUMNS
    assert [float(r["val_loss"]) for r in rows] == pytest.approx(
        [r["val_loss"] for r in history])


def test_config_records_what_a_user_needs_to_reproduce(finished_run: dict) -> None:
    config = json.loads((finished_run["run"] / "config.json").read_text())
    assert config["settings"]["backbone"] == "VGG16" and config["settings"]["epochs"] == 3
    assert config["class_names"] == ["0", "1"]
    assert config["image_size"] == 32 and config["replicas"] == 2
    assert (config["precision"], config["precision_reason"]) == ("float32", "PRECISION=float32")
    assert config["preprocessing"] == "keras.applications.vgg16"
    assert {"tensorflow", "keras", "python"} <= set(config["versions"])


def test_best_h5_is_saved_only_when_the_monitored_value_improves(finished_run: dict) -> None:
    history = finished_run["history"]
    improving, best = [], None
    for row in history:
        if best is None or row["val_accuracy"] > best:
            best = row["val_accuracy"]
            improving.append(row["epoch"])
    saves = [r["epoch"] for r in json_lines(finished_run["result"].stdout)
             if r["message"] == "saved best.h5"]
    assert saves == improving
    manifest = json.loads((finished_run["run"] / "manifest.json").read_text())
    assert manifest["best_epoch"] == improving[-1]
    assert manifest["best_value"] == pytest.approx(best)
    assert (manifest["status"], manifest["monitor"]) == ("finished", "val_accuracy")


def test_manifest_lists_every_artifact_with_size_and_sha256(finished_run: dict) -> None:
    manifest = json.loads((finished_run["run"] / "manifest.json").read_text())
    assert set(manifest["artifacts"]) >= {"best.h5", "config.json", "history.json", "history.csv"}
    for name, entry in manifest["artifacts"].items():
        data = (finished_run["run"] / name).read_bytes()
        assert entry == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert not [p for p in finished_run["run"].iterdir() if p.name.startswith(".")]


def test_best_h5_loads_in_plain_keras_and_scores_its_epoch(finished_run: dict) -> None:
    scored = score_model(finished_run["run"] / "best.h5", finished_run["npz"])
    manifest = json.loads((finished_run["run"] / "manifest.json").read_text())
    assert scored["accuracy"] == pytest.approx(manifest["best_value"], abs=1e-6)
    assert scored["dtype"] == "float32"


def test_a_finished_run_is_not_trained_again(finished_run: dict) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in finished_run["run"].iterdir()}
    result = run_entrypoint(finished_run["env"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert "already finished" in result.stdout
    assert {p.name: p.stat().st_mtime_ns for p in finished_run["run"].iterdir()} == before
    # Settings that change the result: not done, so not exit 0; each named with both values.
    other = run_entrypoint({**finished_run["env"], "LEARNING_RATE": "0.01",
                            "BACKBONE": "ResNet50"}, timeout=120)
    assert other.returncode == 2, other.stderr
    assert other.stderr.strip().endswith(
        "RUN_ID=tiny already finished with other settings (BACKBONE VGG16 -> ResNet50; "
        "LEARNING_RATE 0.0001 -> 0.01); give a new RUN_ID to train with these, or the run's own "
        "settings (its config.json) to leave it as it is"), other.stderr
    assert {p.name: p.stat().st_mtime_ns for p in finished_run["run"].iterdir()} == before


def test_two_cpu_replicas_train_with_mirrored_strategy(finished_run: dict) -> None:
    config = json.loads((finished_run["run"] / "config.json").read_text())
    assert (config["replicas"], config["global_batch_size"]) == (2, 16)
    assert all(row["images_per_second"] > 0 for row in finished_run["history"])


def test_every_export_is_in_the_manifest_with_its_parity(finished_run: dict) -> None:
    manifest = json.loads((finished_run["run"] / "manifest.json").read_text())
    assert set(manifest["exports"]) == {"savedmodel", "onnx", "litert"}
    for kind, result in manifest["exports"].items():
        assert result["status"] == "ok" and result["max_abs_difference"] <= 1e-3, kind
    assert {"export/savedmodel/1/saved_model.pb", "export/onnx/model.onnx",
            "export/litert/model.tflite", "export/labels.txt"} <= set(manifest["artifacts"])


def test_progress_and_eta_are_on_every_epoch_line(finished_run: dict) -> None:
    epochs = [r for r in json_lines(finished_run["result"].stdout)
              if r["message"].startswith("epoch ") and "val_loss" in r]
    progress = [r["progress"] for r in epochs]
    assert progress == sorted(progress) and progress[0] > 0
    assert all(isinstance(r["eta_seconds"], int) for r in epochs[1:])
    # The finish (the best model's evaluation, three exports) is part of the plan: the last
    # epoch is not the end, and its line says there is time left.
    assert progress[-1] < 1 and epochs[-1]["eta_seconds"] > 0
    finish = [r for r in json_lines(finished_run["result"].stdout)
              if r["message"].startswith("finish: ")]
    assert [r["message"] for r in finish] == ["finish: evaluation done", "finish: exports done"]
    assert progress[-1] < finish[0]["progress"] < finish[1]["progress"] == 1.0
    assert finish[1]["eta_seconds"] == 0


@pytest.mark.parametrize(("name", "min_width"), [("samples.png", 600), ("curves.png", 800)])
def test_pictures_are_real_images_listed_in_the_manifest(finished_run: dict, name: str,
                                                         min_width: int) -> None:
    import numpy as np
    from PIL import Image

    with Image.open(finished_run["run"] / name) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert pixels.shape[1] >= min_width and pixels.shape[0] >= 300
    assert pixels.std() > 10  # not a blank canvas
    assert (pixels < 128).mean() > 0.01  # something is drawn
    manifest = json.loads((finished_run["run"] / "manifest.json").read_text())
    assert name in manifest["artifacts"]

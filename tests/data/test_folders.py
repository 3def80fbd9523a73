"""Image folders as users have them: broken files, macOS leftovers, BAD_IMAGES, and the run's
own split in `trainer evaluate` from S3."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_JOB, S3Server, clean_environ, json_lines, run_entrypoint

from trainer.data.folders import check_image, scan_images
from trainer.data.load import load_dataset
from trainer.errors import DataError

# What a user's folder holds beside its good images; the broken ones by what the scan says.
BROKEN = {
    "cats/truncated.jpg": "truncated or corrupt",
    "cats/empty.jpg": "empty file",
    "dogs/notes.jpg": "not a PNG, JPEG, GIF or BMP image",
}
# Passes the scan (its first and last bytes are a PNG's) but fails to decode: found later.
DECODES_BADLY = "dogs/damaged.png"
IGNORED = ("dogs/._photo.jpg", "cats/.DS_Store", "cats/.thumbs/x.png", "dogs/readme.txt",
           "__MACOSX/cats/._0.png")


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_messy_folder(root: Path, per_class: int = 12) -> Path:
    """Two classes of 12x12 PNGs, easy to tell apart, and every kind of broken file."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for name, level in (("cats", 40), ("dogs", 200)):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(rng.normal(level, 20, (12, 12, 3)), 0, 255).astype(np.uint8)
            (root / name / f"{i}.png").write_bytes(_png(pixels))
    jpeg = io.BytesIO()
    Image.fromarray(np.full((12, 12, 3), 40, np.uint8)).save(jpeg, format="JPEG")
    (root / "cats/truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) // 2])
    (root / "cats/empty.jpg").write_bytes(b"")
    (root / "dogs/notes.jpg").write_text("these are my notes, not a photo\n")
    damaged = bytearray(_png(np.full((12, 12, 3), 200, np.uint8)))
    start = damaged.index(b"IDAT") + 8
    damaged[start:start + 8] = bytes(8)  # the data and its checksum no longer agree
    (root / DECODES_BADLY).write_bytes(bytes(damaged))
    apple_double = b"\x00\x05\x16\x07\x00\x02\x00\x00Mac OS X        " + bytes(60)
    for name in IGNORED:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(apple_double)
    return root


def test_the_scan_finds_each_broken_file_and_ignores_macos_leftovers(tmp_path: Path) -> None:
    root = make_messy_folder(tmp_path / "photos")
    found = scan_images(root, ["cats", "dogs"])
    bad = {str(Path(b.path).relative_to(root)): b.reason for b in found.bad}
    assert set(bad) == set(BROKEN)
    for name, reason in BROKEN.items():
        assert bad[name].startswith(reason), (name, bad[name])
    assert len(found.paths) == 25 and str(root / DECODES_BADLY) in found.paths
    assert found.ignored == 3  # ._photo.jpg, .DS_Store and readme.txt; hidden folders unseen
    assert not any("/." in p or "__MACOSX" in p for p in found.paths)


def test_a_jpeg_with_data_after_its_end_is_not_broken(tmp_path: Path) -> None:
    from PIL import Image

    path = tmp_path / "camera.jpg"
    Image.new("RGB", (16, 16), (10, 20, 30)).save(path)
    path.write_bytes(path.read_bytes() + b"SEFT trailer some phones append" * 4)
    assert check_image(path) is None


def test_bad_images_skip_leaves_them_out_and_fail_names_them(tmp_path: Path) -> None:
    root = make_messy_folder(tmp_path / "photos")
    data = load_dataset(str(root), validation_split=0.25, seed=0)
    assert len(data.train) + len(data.val) == 25
    assert {Path(b.path).name for b in data.bad_images} == {"truncated.jpg", "empty.jpg",
                                                             "notes.jpg"}
    with pytest.raises(DataError) as failed:
        load_dataset(str(root), validation_split=0.25, seed=0, bad_images="fail")
    message = str(failed.value)
    assert "3 broken image file(s)" in message and "BAD_IMAGES=skip" in message
    assert all(str(root / name) in message for name in BROKEN)


@pytest.fixture(scope="module")
def messy_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real run (BAD_IMAGES=skip, the default) on the messy folder, one epoch."""
    base = tmp_path_factory.mktemp("messy")
    root = make_messy_folder(base / "photos")
    env = clean_environ(TINY_JOB, DATASET=str(root), ARTIFACT_URI=str(base / "runs"),
                        RUN_ID="messy", EPOCHS="1", SEED="3", VALIDATION_SPLIT="0.25",
                        LEARNING_RATE="1e-4", WORK_DIR=str(base / "work"))
    result = run_entrypoint(env)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "runs": base / "runs", "run": base / "runs" / "messy",
            "result": result, "env": env}


def test_a_run_skips_broken_images_and_lists_them_in_config(messy_run: dict) -> None:
    config = json.loads((messy_run["run"] / "config.json").read_text())
    listed = config["bad_images"]
    root = messy_run["root"]
    assert len(listed) == 4
    for name, reason in BROKEN.items():
        assert any(entry.startswith(f"{root / name} ({reason}") for entry in listed), name
    assert f"{root / DECODES_BADLY} (failed to decode)" in listed  # found when decoded
    assert config["train_examples"] + config["validation_examples"] == 24
    logged = " ".join(line["message"] for line in json_lines(messy_run["result"].stdout))
    assert "left out 3 broken image file(s)" in logged and "failed to decode" in logged
    metrics = json.loads((messy_run["run"] / "metrics.json").read_text())
    assert metrics["examples"] == config["validation_examples"]


def test_bad_images_fail_exits_3_naming_the_files(tmp_path: Path) -> None:
    root = make_messy_folder(tmp_path / "photos")
    env = clean_environ(TINY_JOB, DATASET=str(root), ARTIFACT_URI=str(tmp_path / "runs"),
                        BAD_IMAGES="fail")
    result = run_entrypoint(env, timeout=120)
    assert result.returncode == 3, result.stderr
    assert all(str(root / name) in result.stderr for name in BROKEN)
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1


def _upload(server: S3Server, bucket: str, folder: Path, prefix: str) -> None:
    client = server.client()
    for path in folder.rglob("*"):
        if path.is_file():
            client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder)}")


def test_trainer_evaluate_reads_an_s3_folder_with_the_runs_own_split(
        messy_run: dict, tmp_path: Path) -> None:
    server = S3Server("rclone", tmp_path / "s3").start()
    try:
        bucket = server.new_bucket()
        _upload(server, bucket, messy_run["root"], "photos")
        # Another SEED and VALIDATION_SPLIT here: the run's own (config.json) must win.
        env = clean_environ(server.env(), SEED="11", VALIDATION_SPLIT="0.5",
                            WORK_DIR=str(tmp_path / "work"))
        result = subprocess.run(
            [str(Path(sys.executable).parent / "trainer"), "evaluate", "messy",
             f"s3://{bucket}/photos", "--artifact-uri", str(messy_run["runs"]), "--to",
             str(tmp_path / "eval")], env=env, capture_output=True, text=True, timeout=300)
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    ours = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    theirs = json.loads((messy_run["run"] / "metrics.json").read_text())
    for key in ("examples", "accuracy", "confusion_matrix", "per_class"):
        assert ours[key] == theirs[key], key

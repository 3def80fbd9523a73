"""What the chief writes besides the epochs' files: config.json kept up to date when images first
fail to decode during training (streamed images are decoded every epoch, not at the start); the
end of a run whose requested export failed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TINY_JOB, clean_environ, trainer_in_process

from trainer.data.load import load_dataset
from trainer.outputs import ChiefOutputs
from trainer.settings import load_settings
from trainer.store.artifacts import run_files
from trainer.store.stores import open_store
from trainer.tracking.scalars import ScalarLog


def test_images_that_fail_to_decode_during_training_join_config_json(tiny_npz: Path,
                                                                      tmp_path: Path) -> None:
    settings = load_settings({"ARTIFACT_URI": str(tmp_path / "runs"), "RUN_ID": "late",
                              "WORK_DIR": str(tmp_path / "work"), "DATASET": str(tiny_npz)})
    artifacts, state_files = run_files(settings, open_store(settings.store_uri))
    outputs = ChiefOutputs(artifacts, state_files, settings, {}, {}, ScalarLog(artifacts))
    found_at_start = ["/data/a.jpg (truncated: its end is missing)"]
    outputs.start({"run_id": "late", "bad_images": found_at_start},
                  load_dataset(str(tiny_npz), validation_split=0.25, seed=0))
    config_file = tmp_path / "runs" / "late" / "config.json"
    outputs.found_bad_images([])  # an epoch without any
    assert json.loads(config_file.read_text())["bad_images"] == found_at_start
    outputs.found_bad_images(["/data/b.jpg", "/data/c.png"])
    outputs.found_bad_images(["/data/d.jpg"])
    config = json.loads(config_file.read_text())
    assert config["bad_images"] == [*found_at_start, "/data/b.jpg (failed to decode)",
                                    "/data/c.png (failed to decode)",
                                    "/data/d.jpg (failed to decode)"]
    assert config["run_id"] == "late"


def test_a_requested_export_that_fails_ends_the_run_non_zero_and_is_not_published(
        tiny_npz: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A LiteRT converter that changes the numbers (as a real one might): the run stores
    everything else, SavedModel included, publishes nothing of LiteRT, says so in its manifest
    (status failed: a re-run retries the export) and exits 1 naming the format and the cause."""
    from trainer.serving import converters, export
    from trainer.serving.converters import ServingModel

    def shifted_litert(source: ServingModel, out_dir: Path, name: str) -> Path:
        changed = ServingModel(source.model, source.class_names, source.image_size,
                               lambda batch: source.preprocess(batch * 0.9))
        return converters.write_litert(changed, out_dir, name)

    monkeypatch.setitem(export.WRITERS, "litert", shifted_litert)
    runs = tmp_path / "runs"
    env = clean_environ(TINY_JOB, DATASET=str(tiny_npz), ARTIFACT_URI=str(runs),
                        RUN_ID="exports", EPOCHS="1", VALIDATION_SPLIT="0.25",
                        WORK_DIR=str(tmp_path / "work"), EXPORT="savedmodel,litert")
    result = trainer_in_process("train", env=env)
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip().splitlines()[-1].removeprefix("error: ")
    assert line.startswith("EXPORT: the litert export failed (litert: differs from best.h5 by "
                           ), line
    assert f"best.h5 and the rest of the run are stored in {runs}/exports/" in line
    run = runs / "exports"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert (manifest["exports"]["savedmodel"]["status"],
            manifest["exports"]["litert"]["status"]) == ("ok", "failed")
    listed = set(manifest["artifacts"])
    assert {"best.h5", "history.json", "metrics.json", "export/labels.txt"} <= listed
    assert any(name.startswith("export/savedmodel/1/") for name in listed)
    assert not [name for name in listed if "litert" in name]
    assert not (run / "export" / "litert").exists()
    listed = trainer_in_process("runs", "--artifact-uri", str(runs), env=env)
    (row,) = listed.stdout.strip().splitlines()[1:]
    assert row.split()[:3] == ["exports", "failed", "1"]  # the manifest's status
    assert row.endswith(f"; exit 1: {line}")  # and why, from its failure.json

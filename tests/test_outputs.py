"""What the chief writes besides the epochs' files: config.json kept up to date when images first
fail to decode during training (streamed images are decoded every epoch, not at the start)."""

from __future__ import annotations

import json
from pathlib import Path

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

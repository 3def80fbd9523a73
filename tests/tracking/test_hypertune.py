"""Vertex AI's tuned metric through the real cloudml-hypertune library; no TensorFlow.

    .venv/bin/python -m pytest tests/tracking/test_hypertune.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainer.tracking.hypertune import TunedMetric


def test_only_on_vertex_and_under_the_platforms_tag(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    assert TunedMetric.from_environ({}, "val_accuracy") is None
    metrics_file = tmp_path / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metrics_file))
    tuned = TunedMetric.from_environ({"CLOUD_ML_JOB_ID": "42"}, "val_loss")
    assert tuned is not None and tuned.tag == "val_loss"
    tagged = TunedMetric.from_environ({"CLOUD_ML_JOB_ID": "42",
                                       "CLOUD_ML_HP_METRIC_TAG": "accuracy"}, "val_loss")
    assert tagged is not None
    tagged.report(0.25, 3)
    tagged.report(None, 4)  # no best epoch yet: nothing to compare
    (line,) = [json.loads(text) for text in metrics_file.read_text().splitlines()]
    assert (line["accuracy"], line["global_step"], line["trial"]) == ("0.25", "3", "0")


def test_an_unwritable_metrics_file_is_one_warning(tmp_path: Path, warnings_logged: list,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(tmp_path / "output.metrics"))
    tuned = TunedMetric.from_environ({"CLOUD_ML_JOB_ID": "42"}, "val_accuracy")
    assert tuned is not None
    (tmp_path / "output.metrics").mkdir()  # a folder where the file should be
    tuned.report(0.5, 1)
    tuned.report(0.6, 2)
    assert [r.getMessage()[:44] for r in warnings_logged] == [
        "the tuned metric val_accuracy could not be w"]


def test_a_metrics_file_whose_folder_cannot_be_made_is_a_warning(
        tmp_path: Path, warnings_logged: list, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", "output.metrics")  # no folder to make
    assert TunedMetric.from_environ({"CLOUD_ML_JOB_ID": "42"}, "val_accuracy") is None
    assert [r.getMessage()[:48] for r in warnings_logged] == [
        "the tuned metric val_accuracy cannot be written "]

"""report.html as a reader sees it: the history table in the contract's column order,
numbers that keep their significant digits, and pictures whose text a laptop's browser shows
readably (in headless Chromium).

    .venv/bin/python -m pytest tests/reports/test_run_page.py     (no TensorFlow)
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import chromium, layout_in_chromium, smallest_font_px, unless_ci

from trainer.reports.plots import (
    confusion_figure,
    curves_figure,
    errors_figure,
    png_bytes,
    samples_figure,
)
from trainer.reports.run_page import PICTURES, build_report, format_value
from trainer.store.artifacts import HISTORY_COLUMNS


class Tables(HTMLParser):
    """Every <table> of a page as rows of cell texts, and the <h2> before each."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self._heading = ""
        self._in: str | None = None
        self._text = ""
        self.feed(page)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "table":
            self.tables[self._heading] = []
        elif tag == "tr":
            self.tables[self._heading].append([])
        if tag in ("td", "th", "h1", "h2"):
            self._in, self._text = tag, ""

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._in == tag:
            self.tables[self._heading][-1].append(self._text)
        elif tag in ("h1", "h2") and self._in == tag:
            self._heading = self._text
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in:
            self._text += data


def _run_folder(folder: Path, learning_rate: float) -> Path:
    rows = [{"epoch": e, "loss": 1.5 / e, "accuracy": 0.5 + e / 10, "val_loss": 1.2 / e,
             "val_accuracy": 0.6 + e / 20, "learning_rate": learning_rate,
             "seconds": 20.123 + e, "images_per_second": 12345.6} for e in (1, 2)]
    # As RunArtifacts.write_json writes it: keys sorted alphabetically.
    (folder / "history.json").write_text(json.dumps(rows, indent=2, sort_keys=True))
    (folder / "config.json").write_text(json.dumps(
        {"settings": {"learning_rate": learning_rate, "backbone": "VGG16", "epochs": 2}},
        sort_keys=True))
    return folder


def test_history_columns_are_in_the_contracts_order(tmp_path: Path) -> None:
    page = build_report(_run_folder(tmp_path, 1e-5), "lr-small",
                        {"status": "finished", "best_epoch": 2, "best_value": 0.7,
                         "monitor": "val_accuracy"})
    history = Tables(page).tables["History"]
    assert history[0] == list(HISTORY_COLUMNS)
    assert history[1][0] == "1" and history[2][0] == "2"


def test_small_and_large_values_keep_their_digits(tmp_path: Path) -> None:
    tables = Tables(build_report(_run_folder(tmp_path, 1e-5), "lr-small"))
    header, first = tables.tables["History"][:2]
    row = dict(zip(header, first, strict=True))
    assert row["learning_rate"] == "1e-05"
    assert row["loss"] == "1.5" and row["val_accuracy"] == "0.65"
    assert row["seconds"] == "21.12" and row["images_per_second"] == "12346"
    assert ["learning_rate", "1e-05"] in tables.tables["Settings"]


@pytest.mark.parametrize(("value", "shown"), [
    (1e-5, "1e-05"), (3e-4, "0.0003"), (0.123456, "0.1235"), (0.95, "0.95"), (0.0, "0"),
    (123.456, "123.5"), (99999.7, "100000"), (7, "7"),
    (float("nan"), "nan"), ("avg", "avg"),
])
def test_format_value(value: object, shown: str) -> None:
    assert format_value(value) == shown


def _pictures(folder: Path) -> dict[str, float]:
    """The run's four pictures as the trainer draws them (8 columns of samples and errors,
    10 classes), written into `folder`; the smallest font of each, in px of the PNG."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(16)]
    names = [f"class_{i}" for i in range(10)]
    history = [{"epoch": e, "loss": 1 / e, "accuracy": e / 4, "val_loss": 1.2 / e,
                "val_accuracy": e / 5} for e in (1, 2, 3)]
    figures = {"curves.png": curves_figure(history, 3, "val_accuracy"),  # type: ignore[arg-type]
               "confusion.png": confusion_figure(rng.integers(0, 40, (10, 10)), names),
               "samples.png": samples_figure(images, [names[i % 10] for i in range(16)]),
               "errors.png": errors_figure(images, ["sunflowers"] * 16, ["dandelion"] * 16)}
    for name, figure in figures.items():
        (folder / name).write_bytes(png_bytes(figure))
        titled = [axis for axis in figure.axes if axis.title.get_text()]
        titles = [axis.title.get_window_extent() for axis in titled]
        assert not any(one.padded(3).overlaps(other) for number, one in enumerate(titles)
                       for other in titles[number + 1:]), f"{name}: titles overlap"
        assert not any(axis.title.get_window_extent().overlaps(other.get_window_extent())
                       for axis in titled for other in titled if other is not axis), \
            f"{name}: a title covers another picture"
    return {name: smallest_font_px(figure) for name, figure in figures.items()}


@unless_ci(chromium() is None, "Debian's chromium is not installed (.ci/run installs it)")
def test_pictures_text_is_readable_at_a_laptop_s_width(tmp_path: Path) -> None:
    """At 1280 px every picture shows at its natural size, its smallest text >= 10 px high,
    and no table starts with an empty header row."""
    fonts = _pictures(_run_folder(tmp_path, 1e-3))
    (tmp_path / "report.html").write_text(build_report(
        tmp_path, "readable", {"status": "finished", "best_epoch": 2, "best_value": 0.7,
                               "monitor": "val_accuracy"}))
    layout = layout_in_chromium(tmp_path / "report.html", width=1280)
    assert layout["width"] == 1280
    assert len(layout["images"]) == len(PICTURES) == len(fonts)
    for (name, _), (natural, shown) in zip(PICTURES, layout["images"], strict=True):
        assert shown == natural >= 600, name  # not shrunk
        assert fonts[name] * shown / natural >= 10, name
    assert layout["empty_header_rows"] == 0
    assert Tables(build_report(tmp_path, "readable")).tables["Run readable"][0] == [
        "status", "not finished"]  # the overview's first row is its first fact

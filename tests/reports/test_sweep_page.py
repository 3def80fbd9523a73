"""A sweep's page as a reader sees it in headless Chromium: each run's row links to that run's
report, and the overlaid curves show at their natural size with a legend that covers no curve.
(`trainer runs/report --sweep` of real runs: tests/test_sweep.py.)

    .venv/bin/python -m pytest tests/reports/test_sweep_page.py     (no TensorFlow)
"""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import unquote, urlparse

from conftest import chromium, layout_in_chromium, smallest_font_px, unless_ci

from trainer.reports.run_page import build_report
from trainer.reports.sweep_page import collect_runs, curves_figure, write_sweep_report
from trainer.store.stores import LocalStore


def _run(root: Path, run_id: str, learning_rate: float, values: list[float],
         finished: bool = True) -> None:
    folder = root / run_id
    folder.mkdir(parents=True)
    history = [{"epoch": e, "loss": v, "accuracy": 1 - v, "val_loss": v, "val_accuracy": 1 - v}
               for e, v in enumerate(values, start=1)]
    (folder / "history.json").write_text(json.dumps(history))
    (folder / "config.json").write_text(json.dumps({"settings": {
        "run_id": run_id, "backbone": "EfficientNetV2B0", "learning_rate": learning_rate,
        "monitor": "val_accuracy"}}))
    if finished:
        (folder / "manifest.json").write_text(json.dumps({
            "status": "finished", "monitor": "val_accuracy", "best_value": 1 - min(values),
            "best_epoch": values.index(min(values)) + 1}))
        (folder / "report.html").write_text(build_report(folder, run_id))


def _sweep(root: Path) -> LocalStore:
    """Four finished runs with their reports, and one still training without one."""
    for index, rate in enumerate((1e-2, 3e-3, 1e-3, 3e-4)):
        _run(root, f"lr-{index}-0000aaa{index}", rate, [0.9, 0.5 - index / 10, 0.4])
    _run(root, "lr-4-0000aaa4", 1e-4, [0.8], finished=False)
    return LocalStore(str(root))


def _linked_files(links: list[str | None]) -> list[Path | None]:
    return [None if link is None else Path(unquote(urlparse(link).path)) for link in links]


@unless_ci(chromium() is None, "Debian's chromium is not installed (.ci/run installs it)")
def test_each_row_links_to_its_run_s_report(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    store = _sweep(root)
    ranked = [run.run_id for run in collect_runs(store, "lr")]
    reports = [root / run_id / "report.html" if (root / run_id / "report.html").is_file()
               else None for run_id in ranked]
    assert reports.count(None) == 1  # the run still training has no report yet
    # The page next to the runs (in the store), and a local copy elsewhere (`--to`).
    for page in (Path(write_sweep_report(store, "lr")),
                 Path(write_sweep_report(store, "lr", tmp_path / "elsewhere" / "lr.html"))):
        layout = layout_in_chromium(page, width=1280)
        assert _linked_files(layout["links"]) == reports, page
        (natural, shown), = layout["images"]
        assert shown == natural >= 1000  # the curves at their natural size, not shrunk
        assert layout["empty_header_rows"] == 0


def test_the_legend_is_readable_and_covers_no_curve(tmp_path: Path) -> None:
    figure = curves_figure(collect_runs(_sweep(tmp_path), "lr"))
    assert smallest_font_px(figure) >= 10  # shown at natural size (above)
    (legend,) = figure.legends
    assert len(legend.get_texts()) == 5
    box = legend.get_window_extent()
    for axis in figure.axes:
        assert not box.overlaps(axis.get_window_extent())

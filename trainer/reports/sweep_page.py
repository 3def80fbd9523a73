"""A sweep's runs side by side: `trainer runs --sweep NAME` and `trainer report --sweep NAME`.

A sweep's runs are the runs `<NAME>-<index>-<digest>` in the store, the newest of each index
(config.json's `created`): an edited grid's re-run gives the combinations that changed new
runs, which replace the old ones here (runs `<NAME>-<index>` of older versions count too).
Their varying settings are those
whose values differ between them (from each run's config.json); runs are ranked by their best
MONITOR value, best first, runs without one last. The page is self-contained: the validation
curves of every run overlaid in one figure, embedded as a PNG.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from trainer.errors import StorageError
from trainer.reports.run_page import STYLE, Link, format_value, table
from trainer.store.failures import read_failure, reason_line, run_status
from trainer.store.files import write_atomic
from trainer.store.stores import Store

if TYPE_CHECKING:
    from matplotlib.figure import Figure

HIDDEN_SETTINGS = ("run_id",)  # differs in every run by construction


@dataclass
class SweepRun:
    run_id: str
    index: int
    status: str
    monitor: str
    best_value: float | None
    best_epoch: int | None
    settings: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None  # why it stopped unfinished (failure.json), with its exit code

    @property
    def epochs(self) -> int:
        return len(self.history)


def _json(store: Store, key: str) -> Any:
    raw = store.read_bytes(key)
    try:
        return None if raw is None else json.loads(raw)
    except ValueError:
        return None


def collect_runs(store: Store, sweep: str) -> list[SweepRun]:
    """The sweep's runs in the store, best first; StorageError when it has none."""
    pattern = re.compile(re.escape(sweep) + r"-(\d+)(?:-[0-9a-f]{8})?")
    newest: dict[int, tuple[tuple[str, str], SweepRun]] = {}
    for run_id in store.list_runs():
        match = pattern.fullmatch(run_id)
        if not match:
            continue
        config = _json(store, f"{run_id}/config.json") or {}
        history = _json(store, f"{run_id}/history.json") or []
        manifest = _json(store, f"{run_id}/manifest.json")
        finished = isinstance(manifest, dict) and manifest.get("status") == "finished"
        failure = None if finished else read_failure(store, run_id)  # also a failed export
        if not config and not history and not isinstance(manifest, dict) and not failure:
            continue
        settings = config.get("settings", {}) if isinstance(config, dict) else {}
        monitor = settings.get("monitor", "val_accuracy")
        if isinstance(manifest, dict):
            run = SweepRun(run_id, int(match.group(1)), manifest.get("status", "?"),
                           manifest.get("monitor", monitor), manifest.get("best_value"),
                           manifest.get("best_epoch"), settings, history,
                           reason_line(failure) if failure else None)
        else:
            best = _best_row(history, monitor)
            run = SweepRun(run_id, int(match.group(1)), run_status(failure),
                           monitor, best[monitor] if best else None,
                           best["epoch"] if best else None, settings, history,
                           reason_line(failure) if failure else None)
        age = (str(config.get("created", "")) if isinstance(config, dict) else "", run_id)
        if run.index not in newest or age > newest[run.index][0]:
            newest[run.index] = (age, run)
    runs = [run for _, run in newest.values()]
    if not runs:
        raise StorageError(f"no runs of sweep {sweep} (run ids {sweep}-<index>-<digest>) in "
                           f"{store.uri}; see `trainer runs`")
    return rank(runs)


def _best_row(history: list[dict[str, Any]], monitor: str) -> dict[str, Any] | None:
    rows = [row for row in history if isinstance(row.get(monitor), (int, float))]
    if not rows:
        return None
    pick = min if _minimises(monitor) else max
    return pick(rows, key=lambda row: row[monitor])


def rank(runs: list[SweepRun]) -> list[SweepRun]:
    """Best first by the first run's MONITOR (max or min), runs without a value last."""
    sign = 1 if runs and _minimises(runs[0].monitor) else -1
    return sorted(runs, key=lambda r: (r.best_value is None,
                                       sign * (r.best_value or 0.0), r.index))


def _minimises(monitor: str) -> bool:
    return monitor.endswith("loss")  # MONITOR's rule: losses minimise, accuracies maximise


def varying_settings(runs: list[SweepRun]) -> list[str]:
    """The settings whose values differ between the runs, in config.json's order."""
    names: dict[str, None] = {}
    for run in runs:
        names.update(dict.fromkeys(run.settings))
    return [name for name in names if name not in HIDDEN_SETTINGS
            and len({json.dumps(run.settings.get(name)) for run in runs}) > 1]


def _variable(name: str) -> str:
    return name.upper()


def sweep_lines(runs: list[SweepRun]) -> list[str]:
    """`trainer runs --sweep`: one line per run, best first, with its varying settings (and
    why a run stopped unfinished)."""
    varying = varying_settings(runs)
    why = any(run.error for run in runs)
    header = ["RUN_ID", "STATUS", "EPOCHS", *map(_variable, varying), "BEST", "BEST_EPOCH",
              *(["WHY"] if why else [])]
    rows = [[run.run_id, run.status, str(run.epochs),
             *(format_value(run.settings.get(name, "")) for name in varying),
             f"{run.monitor}={format_value(run.best_value)}" if run.best_value is not None
             else "-", str(run.best_epoch or "-"), *([run.error or ""] if why else [])]
            for run in runs]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in [header, *rows]]


def curves_figure(runs: list[SweepRun]) -> Figure:
    """Validation accuracy and loss of every run against epoch, overlaid; one legend under
    both plots, where its long labels cover no curve, in a font as large as the axes'."""
    # Here, not at the top: the CLI imports this module, and starts without matplotlib (half a
    # second) so that a bad setting fails at once. The object API needs no backend or pyplot.
    from matplotlib.figure import Figure

    varying = varying_settings(runs)
    figure = Figure(figsize=(12, 4.5 + 0.25 * len(runs)), layout="constrained")
    axes = figure.subplots(1, 2)
    epochs = sorted({row["epoch"] for run in runs for row in run.history if "epoch" in row})
    for axis, metric in zip(axes, ("val_accuracy", "val_loss"), strict=True):
        for number, run in enumerate(runs):
            points = [(row["epoch"], row[metric]) for row in run.history if metric in row]
            if not points:
                continue
            label = run.run_id + "".join(f", {_variable(name)}="
                                         f"{format_value(run.settings.get(name))}"
                                         for name in varying)
            axis.plot(*zip(*points, strict=True), "o-", color=f"C{number % 10}", label=label)
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_title(f"validation {metric.removeprefix('val_')}")
        axis.grid(alpha=0.3)
        if len(epochs) <= 20:
            axis.set_xticks(epochs)
        else:
            axis.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = max((axis.get_legend_handles_labels() for axis in axes),
                          key=lambda pair: len(pair[1]))
    if handles:
        figure.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=10)
    return figure


def report_links(store: Store, runs: list[SweepRun], page: Path | None) -> dict[str, str]:
    """Each run's report.html that exists, as a link from the page: relative to the page next
    to the runs (`page` None), or from the local file `page` to a local store's runs."""
    links = {}
    for run in runs:
        key = f"{run.run_id}/report.html"
        if key not in store.list_keys(key):
            continue
        folder = store.local_run_dir(run.run_id)
        links[run.run_id] = quote(key if page is None or folder is None else
                                  os.path.relpath(folder / "report.html", page.resolve().parent))
    return links


def build_sweep_page(sweep: str, runs: list[SweepRun],
                     reports: dict[str, str] | None = None) -> str:
    """One self-contained page: the runs ranked in a table, each linking to its report (by
    `reports`, run id to href), and their curves overlaid."""
    varying = varying_settings(runs)
    monitor = runs[0].monitor if runs else "best value"
    why = any(run.error for run in runs)
    reports = reports or {}
    header = ["run", "status", "epochs", *map(_variable, varying), f"best {monitor}",
              "best epoch", *(["why"] if why else [])]
    rows = [[Link(run.run_id, reports[run.run_id]) if run.run_id in reports else run.run_id,
             run.status, run.epochs,
             *(run.settings.get(name, "") for name in varying),
             "" if run.best_value is None else run.best_value,
             "" if run.best_epoch is None else run.best_epoch,
             *([run.error or ""] if why else [])] for run in runs]
    from trainer.reports.plots import png_bytes  # matplotlib: see curves_figure

    picture = base64.b64encode(png_bytes(curves_figure(runs))).decode("ascii")
    title = f"Sweep {html.escape(sweep)}"
    parts = [f"<h1>{title}</h1>",
             f"<p>{len(runs)} runs, best {html.escape(monitor)} first; a run's name opens its "
             "report.</p>",
             table(header, rows),
             "<h2>Validation curves</h2>",
             f"<figure><img alt=\"Validation curves of every run\" "
             f"src=\"data:image/png;base64,{picture}\"></figure>"]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{title}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>")


def write_sweep_report(store: Store, sweep: str, destination: Path | None = None) -> str:
    """The comparison page, into the store as `<sweep>.html` next to the runs (or to the local
    file `destination`); returns where it went."""
    runs = collect_runs(store, sweep)
    page = build_sweep_page(sweep, runs, report_links(store, runs, destination)).encode()
    if destination is not None:
        write_atomic(destination, page)
        return str(destination)
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(scratch) / f"{sweep}.html"
        write_atomic(local, page)
        store.put_file(f"{sweep}.html", local)
    return f"{store.uri.rstrip('/')}/{sweep}.html"

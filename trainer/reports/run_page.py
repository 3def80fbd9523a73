"""report.html: one self-contained page per run (images inline, no network), built from the
run's own files, so `trainer report RUN_ID` can rebuild it from the bucket."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any, NamedTuple

from trainer.store.artifacts import HISTORY_COLUMNS

PICTURES = (("curves.png", "Training curves"), ("confusion.png", "Confusion matrix"),
            ("samples.png", "Training samples"), ("errors.png", "Misclassified images"))
# Pictures at their natural size (plots.py picks their fonts for it): the page is wide enough
# for the widest (1200 px) at a laptop's 1280 px; a narrower window scrolls a picture sideways
# rather than shrinking its text out of reach.
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 76em; padding: 0 .5em;
color: #222; } table { border-collapse: collapse; margin: 1em 0; } td, th { border: 1px solid
#ccc; padding: .25em .6em; text-align: right; } th { background: #eef; } td:first-child,
th:first-child { text-align: left; } figure { margin: 1.5em 0; overflow-x: auto; }
figcaption { font-weight: bold; margin-bottom: .3em; }
img { max-width: none; border: 1px solid #ddd; }
"""


def _read_json(folder: Path, name: str) -> Any:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else None


class Link(NamedTuple):
    """A table cell that links to another page."""
    text: str
    href: str


def table(header: list[str] | None, rows: list[list[Any]]) -> str:
    """Rows under a header row; a table of label/value pairs has none (`header` None)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header or [])
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table>{f'<tr>{head}</tr>' if head else ''}{body}</table>"


def _base64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


def _cell(value: Any) -> str:
    if isinstance(value, Link):
        return (f'<a href="{html.escape(value.href)}">{html.escape(value.text)}</a>')
    return html.escape(format_value(value))


def format_value(value: Any) -> str:
    """A number as people read it in a table: four significant digits, so that a learning
    rate of 1e-05 keeps its digits (not 0.0000), and large counts without an exponent."""
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return f"{value:.0f}" if abs(value) >= 1e4 else f"{value:.4g}"
    return str(value)


def history_columns(history: list[dict[str, Any]]) -> list[str]:
    """The contract's column order (epoch first), then any other column the rows carry."""
    present = {key for row in history for key in row}
    extra = [key for row in history for key in row if key not in HISTORY_COLUMNS]
    return [c for c in HISTORY_COLUMNS if c in present] + list(dict.fromkeys(extra))


def build_report(folder: Path, run_id: str, summary: dict[str, Any] | None = None) -> str:
    """The page for the run whose files are in `folder`; parts whose file is missing are left
    out (a run still training has no metrics yet). `summary` (status, best_epoch, best_value,
    monitor) stands in for manifest.json, which is written after the report."""
    config = _read_json(folder, "config.json") or {}
    history = _read_json(folder, "history.json") or []
    metrics = _read_json(folder, "metrics.json")
    manifest = summary or _read_json(folder, "manifest.json") or {}
    parts = [f"<h1>Run {html.escape(run_id)}</h1>"]
    overview = [["status", manifest.get("status", "not finished")],
                ["best epoch", manifest.get("best_epoch", "")],
                [manifest.get("monitor", "best value"), manifest.get("best_value", "")]]
    if metrics:
        overview += [["accuracy (best model)", metrics["accuracy"]]]
        if "top5_accuracy" in metrics:
            overview += [["top-5 accuracy", metrics["top5_accuracy"]]]
        overview += [["evaluated on", f"{metrics['evaluated_on']}, {metrics['examples']} images"]]
    parts.append(table(None, overview))
    if metrics:
        rows = [[name, m["precision"], m["recall"], m["f1"], m["support"]]
                for name, m in metrics["per_class"].items()]
        parts += ["<h2>Per class</h2>",
                  table(["class", "precision", "recall", "F1", "support"], rows)]
    figures = [f"<figure><figcaption>{title}</figcaption><img alt=\"{title}\" "
               f"src=\"data:image/png;base64,{_base64(folder / name)}\"></figure>"
               for name, title in PICTURES if (folder / name).is_file()]
    parts += figures
    if history:
        columns = history_columns(history)
        parts += ["<h2>History</h2>",
                  table(columns, [[row.get(c, "") for c in columns] for row in history])]
    settings = config.get("settings", {})
    if settings:
        parts += ["<h2>Settings</h2>", table(["setting", "value"],
                                              [[k, v] for k, v in sorted(settings.items())])]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>Run {html.escape(run_id)}</title><style>{STYLE}</style></head>"
            f"<body>{''.join(parts)}</body></html>")

"""The tutorial's pictures, rendered headless: a grid of training samples, and training curves.

Each picture is drawn by a `*_figure` function and written at DPI dots per inch. report.html
shows them at their natural size, so a font of `points` is `points * DPI / 72` pixels on screen:
no text is smaller than SMALLEST_FONT points (8 pt at 100 dpi: 11 px, readable on a laptop).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from trainer.store.artifacts import HistoryRow
from trainer.store.files import write_atomic

DPI = 100
SMALLEST_FONT = 8  # points


def samples_figure(images: list[np.ndarray], labels: list[str], columns: int = 8) -> Figure:
    """A grid of training images (uint8, H x W or H x W x C) titled with their class names."""
    rows = -(-len(images) // columns)
    title_lines = max((label.count("\n") + 1 for label in labels), default=1)
    figure = Figure(figsize=(columns * 1.4, rows * (1.4 + 0.2 * title_lines)))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, label in zip(axes.flat, images, labels, strict=False):
        image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        axis.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        axis.set_title(label, fontsize=SMALLEST_FONT)
    return figure


def save_samples(images: list[np.ndarray], labels: list[str], path: Path, columns: int = 8) -> None:
    _write(samples_figure(images, labels, columns), path)


def curves_figure(history: Sequence[HistoryRow], best_epoch: int, monitor: str) -> Figure:
    """Loss and accuracy, training and validation, against epoch; the best epoch marked."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))
    axes = figure.subplots(1, 2)
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.plot(epochs, [row[metric] for row in history],  # type: ignore[literal-required]
                  "o-", label=f"training {metric}")
        axis.plot(epochs, [row[f"val_{metric}"] for row in history],  # type: ignore[literal-required]
                  "s-",
                  label=f"validation {metric}")
        axis.axvline(best_epoch, color="grey", linestyle="--", label=f"best epoch ({monitor})")
        axis.set_xlabel("epoch")
        axis.set_ylabel(metric)
        axis.set_xticks(epochs)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=SMALLEST_FONT + 1)
    return figure


def save_curves(history: Sequence[HistoryRow], best_epoch: int, monitor: str, path: Path) -> None:
    _write(curves_figure(history, best_epoch, monitor), path)


def png_bytes(figure: Figure) -> bytes:
    if figure.get_layout_engine() is None:
        figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=DPI)
    return png.getvalue()


def _write(figure: Figure, path: Path) -> None:
    """As PNG, atomically like every other artifact."""
    write_atomic(path, png_bytes(figure))


def confusion_figure(matrix: np.ndarray, names: list[str]) -> Figure:
    """The confusion matrix, counts in the cells, rows true and columns predicted."""
    side = min(max(4.0, 0.45 * len(names) + 2), 24.0)
    figure = Figure(figsize=(side, side))
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues")
    ticks = range(len(names))
    axis.set_xticks(ticks, names, rotation=90, fontsize=SMALLEST_FONT)
    axis.set_yticks(ticks, names, fontsize=SMALLEST_FONT)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(names) <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=SMALLEST_FONT,
                      color="white" if count > threshold else "black")
    return figure


def save_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    _write(confusion_figure(matrix, names), path)


def errors_figure(images: list[np.ndarray], true_names: list[str], predicted_names: list[str],
                  columns: int = 8) -> Figure:
    """Misclassified images titled `true -> predicted`; a note when there are none."""
    if not images:
        figure = Figure(figsize=(6, 2))
        axis = figure.subplots()
        axis.axis("off")
        axis.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=14)
        return figure
    # On two lines: `true -> predicted` on one is wider than its picture at a readable size.
    titles = [f"{true}\n-> {predicted}"
              for true, predicted in zip(true_names, predicted_names, strict=True)]
    return samples_figure(images, titles, columns)


def save_errors(images: list[np.ndarray], true_names: list[str], predicted_names: list[str],
                path: Path, columns: int = 8) -> None:
    _write(errors_figure(images, true_names, predicted_names, columns), path)

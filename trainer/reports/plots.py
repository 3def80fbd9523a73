"""The tutorial's pictures, rendered headless: a grid of training samples, and training curves."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from trainer.store.artifacts import HistoryRow
from trainer.store.files import write_atomic


def save_samples(images: list[np.ndarray], labels: list[str], path: Path, columns: int = 8) -> None:
    """A grid of training images (uint8, H x W or H x W x C) titled with their class names."""
    rows = -(-len(images) // columns)
    figure = Figure(figsize=(columns * 1.4, rows * 1.6))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, label in zip(axes.flat, images, labels, strict=False):
        image = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        axis.imshow(image, cmap="gray" if image.ndim == 2 else None, interpolation="nearest")
        axis.set_title(label, fontsize=8)
    _write(figure, path)


def save_curves(history: Sequence[HistoryRow], best_epoch: int, monitor: str, path: Path) -> None:
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
        axis.legend(fontsize=8)
    _write(figure, path)


def _write(figure: Figure, path: Path) -> None:
    """As PNG, atomically like every other artifact."""
    figure.tight_layout()
    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    write_atomic(path, png.getvalue())


def save_confusion(matrix: np.ndarray, names: list[str], path: Path) -> None:
    """The confusion matrix, counts in the cells, rows true and columns predicted."""
    side = min(max(4.0, 0.45 * len(names) + 2), 24.0)
    figure = Figure(figsize=(side, side))
    axis = figure.subplots()
    axis.imshow(matrix, cmap="Blues")
    ticks = range(len(names))
    axis.set_xticks(ticks, names, rotation=90, fontsize=7)
    axis.set_yticks(ticks, names, fontsize=7)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if len(names) <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for (row, column), count in np.ndenumerate(matrix):
            axis.text(column, row, str(count), ha="center", va="center", fontsize=7,
                      color="white" if count > threshold else "black")
    _write(figure, path)


def save_errors(images: list[np.ndarray], true_names: list[str], predicted_names: list[str],
                path: Path, columns: int = 8) -> None:
    """Misclassified images titled `true -> predicted`; a note when there are none."""
    if not images:
        figure = Figure(figsize=(6, 2))
        axis = figure.subplots()
        axis.axis("off")
        axis.text(0.5, 0.5, "no misclassified images", ha="center", va="center", fontsize=14)
        _write(figure, path)
        return
    titles = [f"{true} -> {predicted}"
              for true, predicted in zip(true_names, predicted_names, strict=True)]
    save_samples(images, titles, path, columns)

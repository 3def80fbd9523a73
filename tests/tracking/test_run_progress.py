"""Training's progress on a terminal: a bar of the epoch's steps, redrawn in place, that the
epoch's line replaces.

    .venv/bin/python -m pytest tests/tracking/test_run_progress.py     (no TensorFlow)
"""

from __future__ import annotations

import io
import logging
import re

from trainer.logs import TerminalHandler, TextFormatter, get_logger
from trainer.store.artifacts import HistoryRow
from trainer.tracking.progress import Plan
from trainer.tracking.run_progress import RunProgress


def test_on_a_terminal_an_epoch_draws_a_bar_of_its_steps() -> None:
    stream = io.StringIO()
    handler = TerminalHandler(stream)
    handler.setFormatter(TextFormatter())
    logger = get_logger()
    handlers, level = logger.handlers[:], logger.level
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    try:
        progress = RunProgress(Plan(epochs=2, steps_per_epoch=10), None, "r", interval=3600)
        report = progress.steps(1)
        for done in (2, 5, 10):
            report(done, 10)
        row = {"epoch": 1, "loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}
        logger.info("epoch 1/2", extra=progress.epoch_done(HistoryRow(**row)))  # type: ignore[typeddict-item]
    finally:
        logger.handlers[:], logger.level = handlers, level
    bars = re.findall(r"\r\x1b\[Kepoch 1 \[([#.]+)\] +(\d+)% (\d+)/10", stream.getvalue())
    assert [(int(percent), int(done)) for _, percent, done in bars] == [
        (20, 2), (50, 5), (100, 10)]
    # The bar cleared, then the epoch's line alone; nothing drawn after it.
    assert re.search(r"\r\x1b\[K\S+ INFO +epoch 1/2 .*\n$", stream.getvalue())

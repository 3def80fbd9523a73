"""A run's progress where people look: `progress` (0 to 1 over the whole run) and `eta_seconds`
on every progress and epoch log line, a progress line every 30 s within long epochs, and the
TrainJob's status on Kubeflow Trainer (the chief's reporter; trainer.tracking.progress); on a
terminal, a bar of the epoch's steps (trainer.ticker)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from trainer.logs import get_logger, terminal_bar
from trainer.store.artifacts import HistoryRow
from trainer.ticker import bar_text
from trainer.tracking.progress import Plan, Progress, TrainerStatusReporter

PROGRESS_INTERVAL_SECONDS = 30.0
REPORTED_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


class RunProgress:
    def __init__(self, plan: Plan, reporter: TrainerStatusReporter | None, run_id: str,
                 interval: float = PROGRESS_INTERVAL_SECONDS) -> None:
        self.plan = plan
        self.progress = Progress(plan.total)
        self.reporter = reporter
        self.run_id = run_id
        self.interval = interval
        self._metrics: dict[str, float] = {}
        self._finished_units = 0.0

    def steps(self, epoch: int, first: bool = False) -> Callable[[int, int], None]:
        """The loop's callback after each call of steps of `epoch`: with `first`, a line after
        the first call (the time to it is what a user waits before the accelerator works),
        then a line every `interval` seconds."""
        log, bar = get_logger(), terminal_bar()
        last = started = time.monotonic()
        announced = not first

        def report(done: int, steps: int) -> None:
            nonlocal last, announced
            fields = self._update(self.plan.done(epoch - 1, done))
            if bar is not None:  # on a terminal: the epoch's steps, redrawn in place
                bar.show(bar_text({"step": f"epoch {epoch}", "done": done, "total": steps,
                                   "elapsed_seconds": time.monotonic() - started}))
            if not announced:
                announced = True
                log.info("first training steps done", extra={
                    "run_id": self.run_id, "epoch": epoch, "step": done, **fields})
            if time.monotonic() - last >= self.interval and done < steps:
                last = time.monotonic()
                log.info(f"epoch {epoch}: step {done}/{steps}", extra={
                    "run_id": self.run_id, "epoch": epoch, "step": done, **fields})

        return report

    def epoch_done(self, row: HistoryRow) -> dict[str, Any]:
        """The fields for the epoch's log line; the TrainJob gets the epoch's metrics."""
        self._metrics = {name: float(row[name]) for name in REPORTED_METRICS}  # type: ignore[literal-required]
        if (bar := terminal_bar()) is not None:
            bar.show("")  # the epoch's line takes its place
        return self._update(self.plan.done(row["epoch"]))

    def after(self, part: str, work: Callable[..., Any], units: float) -> Callable[..., Any]:
        """`work`, a part of the finish worth `units` of the plan, with a progress line when
        it returns: the run is not done when its last epoch is."""
        def run(*args: Any) -> Any:
            result = work(*args)
            self._finished_units += units
            fields = self._update(self.plan.done(self.plan.epochs) + self._finished_units)
            get_logger().info(f"finish: {part} done", extra={"run_id": self.run_id, **fields})
            return result

        return run

    def close(self) -> None:
        self.progress.update(self.plan.total)
        if self.reporter is not None:
            self.reporter.report(1.0, 0.0, self._metrics)
            self.reporter.close()

    def _update(self, done: float) -> dict[str, Any]:
        fields = self.progress.update(done)
        if self.reporter is not None:
            self.reporter.report(self.progress.fraction, self.progress.eta_seconds, self._metrics)
        return fields

"""When a run stops other than by finishing: SIGTERM from Kubernetes (save, then exit 143), a
peer worker lost mid-run (exit 75, so that the Job retries and the workers resume), a loss that
diverged or a device out of memory (exit 2: the same settings would fail again)."""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator

import tensorflow as tf

from trainer.cluster.specs import Cluster
from trainer.errors import ConfigError, TransientError
from trainer.logs import get_logger
from trainer.settings import Settings

# Seconds of the grace period kept for the process to exit after its last upload.
EXIT_MARGIN_SECONDS = 5.0


class StopRequest(threading.Event):
    """Set by SIGTERM; knows how much of the pod's grace period is left for uploads."""

    def __init__(self, grace_seconds: float) -> None:
        super().__init__()
        self.grace_seconds = grace_seconds
        self.requested_at: float | None = None

    def request(self) -> None:
        self.requested_at = time.monotonic()
        self.set()

    def upload_seconds_left(self) -> float:
        budget = self.grace_seconds - EXIT_MARGIN_SECONDS
        if self.requested_at is not None:
            budget -= time.monotonic() - self.requested_at
        return max(0.0, budget)


def stop_on_sigterm(grace_seconds: float) -> StopRequest:
    """SIGTERM (Kubernetes stopping the pod) asks the loop to save and stop after its steps."""
    stop = StopRequest(grace_seconds)

    def request_stop(signum: int, frame: object) -> None:
        get_logger().warning("SIGTERM received: saving state after the current steps")
        stop.request()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)
    return stop


@contextlib.contextmanager
def peer_loss_is_transient(cluster: Cluster) -> Iterator[None]:
    """A worker lost mid-run (its pod killed, its node gone) breaks the collectives of every
    other: that is exit 75, retried, and the restarted workers resume from the saved state."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.DeadlineExceededError) as error:
        if not cluster.is_multi_worker:
            raise
        lost = ", ".join(cluster.peers_named_in(str(error)))
        raise TransientError(
            f"lost contact with worker(s) {lost or 'of this run'} during training "
            f"({type(error).__name__}); run the Job's workers again with the same RUN_ID to "
            "resume from the last saved state"
        ) from error


def diverged(settings: Settings, epoch: int) -> ConfigError:
    """A loss that is not finite: the epoch is not kept (its weights are spoilt); the state and
    best.h5 from before stay. Retrying the same settings would only diverge again: exit 2."""
    names = "LEARNING_RATE" + (" or PRECISION" if settings.precision == "float16" else "")
    return ConfigError(
        f"the loss became NaN or infinite in epoch {epoch} (LEARNING_RATE="
        f"{settings.learning_rate:g}, PRECISION={settings.precision}); lower {names}, and run "
        "again with a new RUN_ID, or with the same one to resume from the last good epoch")


@contextlib.contextmanager
def out_of_memory_is_a_setting(settings: Settings, image_size: int) -> Iterator[None]:
    """Out of device memory is no bug, and retrying the same sizes cannot help: exit 2."""
    try:
        yield
    except tf.errors.ResourceExhaustedError as error:
        raise ConfigError(
            f"out of device memory with BATCH_SIZE={settings.batch_size} per replica at "
            f"IMAGE_SIZE={image_size}; lower BATCH_SIZE or IMAGE_SIZE") from error

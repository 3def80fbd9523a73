"""When a run stops other than by finishing: SIGTERM from Kubernetes (save, then exit 143), or
a peer worker lost mid-run (exit 75, so that the Job retries and the workers resume)."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator

import tensorflow as tf

from trainer.distribution import Cluster
from trainer.errors import TransientError
from trainer.logs import get_logger


def stop_on_sigterm() -> threading.Event:
    """SIGTERM (Kubernetes stopping the pod) asks the loop to save and stop after its steps."""
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        get_logger().warning("SIGTERM received: saving state after the current steps")
        stop.set()

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
        tasks = sorted({int(i) for i in re.findall(r"/job:worker/replica:0/task:(\d+)",
                                                   str(error)) if int(i) != cluster.index})
        lost = ", ".join(cluster.workers[i] for i in tasks if i < len(cluster.workers))
        raise TransientError(
            f"lost contact with worker(s) {lost or 'of this run'} during training "
            f"({type(error).__name__}); run the Job's workers again with the same RUN_ID to "
            "resume from the last saved state"
        ) from error

"""SIGTERM's stop request and the upload budget it leaves (trainer/control.py), in-process.

    .venv/bin/python -m pytest tests/test_control.py      (imports TensorFlow; a few seconds)
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator

import pytest

from trainer.control import EXIT_MARGIN_SECONDS, stop_on_sigterm
from trainer.settings import load_settings


@pytest.fixture
def sigterm_handler_restored() -> Iterator[None]:
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize("grace", ["12", "600"])
@pytest.mark.usefixtures("sigterm_handler_restored")
def test_after_sigterm_uploads_get_the_grace_period_less_the_margin(grace: str) -> None:
    """TERMINATION_GRACE_SECONDS as the job reads it: a real SIGTERM sets the stop request, and
    the final uploads get the pod's grace period less EXIT_MARGIN_SECONDS, less what has passed
    since the signal (two grace periods, so that a constant budget cannot pass)."""
    seconds = load_settings({"TERMINATION_GRACE_SECONDS": grace}).termination_grace_seconds
    stop = stop_on_sigterm(seconds)
    assert not stop.is_set() and stop.upload_seconds_left() == seconds - EXIT_MARGIN_SECONDS
    signalled = time.monotonic()
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.wait(10)
    left = stop.upload_seconds_left()
    since = time.monotonic() - signalled
    assert seconds - EXIT_MARGIN_SECONDS - since <= left <= seconds - EXIT_MARGIN_SECONDS

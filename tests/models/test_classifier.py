"""The classifier as the job builds it: what a failed ImageNet download tells the user."""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_ports

from trainer.errors import TransientError
from trainer.models.classifier import build_classifier


@pytest.fixture
def info_logged() -> Iterator[list[logging.LogRecord]]:
    """What the trainer's logger says at INFO and above during the test."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("trainer")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_imagenet_weights_out_of_reach_exit_75_saying_how_to_train_offline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        info_logged: list[logging.LogRecord]) -> None:
    """A cluster without internet: the download goes through a proxy that refuses (nothing
    listens on its port), into an empty Keras cache. The attempt is in the job's log, not in
    Keras' plain "Downloading data from" line on stdout."""
    import keras

    keras.config.enable_interactive_logging()  # as a fresh process starts
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path / "keras"))
    # urlopen builds its opener, proxies included, once: one for this test alone.
    monkeypatch.setattr(urllib.request, "_opener", None)
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    for name in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(name, dead)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    with pytest.raises(TransientError) as caught:
        build_classifier("MobileNet", "avg", 32, 3, "imagenet", environ={})
    message = str(caught.value)
    assert caught.value.exit_code == 75
    assert message.startswith("WEIGHTS=imagenet: could not download MobileNet's ImageNet weights")
    assert "Without internet: WEIGHTS=<path or s3:// URI" in message
    assert "BAKE_WEIGHTS=MobileNet" in message and "WEIGHTS=none" in message
    assert "Downloading data from" not in capsys.readouterr().out
    started = [r for r in info_logged
               if r.getMessage() == "downloading MobileNet's ImageNet weights"]
    assert started[0].url.startswith("https://storage.googleapis.com/")

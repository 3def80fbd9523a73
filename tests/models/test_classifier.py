"""The classifier as the job builds it: what a failed ImageNet download tells the user."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import free_ports

from trainer.errors import TransientError
from trainer.models.classifier import build_classifier


def test_imagenet_weights_out_of_reach_exit_75_saying_how_to_train_offline(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A cluster without internet: the download goes through a proxy that refuses (nothing
    listens on its port), into an empty Keras cache."""
    monkeypatch.setattr("keras.src.backend.config._KERAS_DIR", str(tmp_path / "keras"))
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

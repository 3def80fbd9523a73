"""The classifier as the job builds it: a run's best.h5 as WEIGHTS for other classes, and what
an ImageNet download that arrives corrupted or not at all tells the user (served by a real HTTP
server on loopback at the URL keras.applications downloads from, or refused by a proxy)."""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import free_ports, trainer_log

from trainer.errors import DataError, TransientError
from trainer.models.classifier import build_classifier

HTML = b"<!DOCTYPE html><html><body>Sign in to the guest network</body></html>\n"


@pytest.mark.xdist_group("finished_run")
def test_a_runs_best_h5_starts_a_run_with_another_number_of_classes(finished_run: dict
                                                                     ) -> None:
    """The README's way to start from an earlier run: its best.h5 (2 classes) as WEIGHTS of a
    5-class model gives that run's backbone and a fresh head."""
    best = finished_run["run"] / "best.h5"
    trained = keras.models.load_model(best, compile=False)
    assert trained.output_shape == (None, 2)
    model = build_classifier("VGG16", "avg", 32, 5, str(best), {})
    assert model.output_shape == (None, 5)
    backbone = [v for v in model.weights if not v.path.startswith("predictions/")]
    saved = [v for v in trained.weights if not v.path.startswith("predictions/")]
    assert len(backbone) == len(saved) > 20
    for mine, theirs in zip(backbone, saved, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())
    np.testing.assert_array_equal(model.get_layer("predictions").bias.numpy(), np.zeros(5))
    # A whole model of another backbone still does not fit, and says which weight.
    with pytest.raises(DataError, match=r"best.h5 does not fit the vgg19_avg_classifier .*"
                                        r"its backbone has 26 weights, .* has 32"):
        build_classifier("VGG19", "avg", 32, 5, str(best), {})


class _Pages(http.server.BaseHTTPRequestHandler):
    """Answers every request with a 200 and an HTML page, as a captive portal does."""

    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        _Pages.requests.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(HTML)))
        self.end_headers()
        self.wfile.write(HTML)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def portal() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Pages.requests.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def keras_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Keras cache of the test's own: what KERAS_HOME gives a new process."""
    import keras.src.backend.config as config

    (tmp_path / "keras").mkdir()  # Keras falls back to /tmp/.keras where it cannot write
    monkeypatch.setattr(config, "_KERAS_DIR", str(tmp_path / "keras"))
    return tmp_path / "keras" / "models"


def test_a_corrupted_imagenet_download_is_a_data_error_and_is_deleted(
        portal: str, keras_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import keras.src.applications.vgg16 as vgg16

    monkeypatch.setattr(vgg16, "WEIGHTS_PATH_NO_TOP", f"{portal}/vgg16_notop.h5")
    target = keras_cache / "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
    for attempt in (1, 2):
        with pytest.raises(DataError) as caught:
            build_classifier("VGG16", "avg", 32, 3, "imagenet", {})
        message = str(caught.value)
        assert caught.value.exit_code == 3
        assert f"{target} has md5 {hashlib.md5(HTML).hexdigest()}" in message, message
        assert "not the published 6d6bbae143d832006294945121d1f1fc" in message
        assert "deleted, so the next try downloads it again" in message
        assert not target.exists()
        assert len(_Pages.requests) == attempt  # each try downloaded it again


def test_a_download_failure_quotes_its_whole_cause(keras_cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A long URL once cut the cause mid-word at 200 characters ("Name or service not")."""
    import keras.src.applications.vgg16 as vgg16

    closed = free_ports(1)[0]
    url = f"http://127.0.0.1:{closed}/{'weights/' * 30}vgg16_notop.h5"
    monkeypatch.setattr(vgg16, "WEIGHTS_PATH_NO_TOP", url)
    with pytest.raises(TransientError) as caught:
        build_classifier("VGG16", "avg", 32, 3, "imagenet", {})
    message = str(caught.value)
    assert url in message and "Connection refused); the network or the server is down" in (
        message), message


@pytest.fixture
def info_logged() -> Iterator[list[logging.LogRecord]]:
    """What the trainer's logger says at INFO and above during the test."""
    with trainer_log(logging.INFO) as records:
        yield records


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

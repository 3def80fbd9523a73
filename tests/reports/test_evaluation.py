"""What a run leaves to look at: pictures, metrics that match the model, a self-contained
report, TensorBoard scalars, and `trainer evaluate` / `trainer report`."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import clean_environ, trainer_in_process, unless_ci

# One worker runs every test that reads the shared finished run (trained once per worker).
pytestmark = pytest.mark.xdist_group("finished_run")

PICTURES = ("samples.png", "curves.png", "confusion.png", "errors.png")


def _trainer(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).parent / "trainer"), *args], env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_picture(path: Path, min_width: int = 300, min_height: int = 150) -> None:
    from PIL import Image

    with Image.open(path) as image:
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.shape[1] >= min_width and pixels.shape[0] >= min_height, (path, pixels.shape)
    # Not blank: a real drawing has dark and light areas.
    assert pixels.std() > 10 and pixels.min() < 100, (path, pixels.std(), pixels.min())


@pytest.mark.parametrize("name", PICTURES)
def test_each_picture_is_drawn(finished_run: dict, name: str) -> None:
    _assert_picture(finished_run["run"] / name)


def test_metrics_match_the_best_models_own_predictions(finished_run: dict) -> None:
    import keras
    import tensorflow as tf

    from trainer.data.load import load_dataset

    metrics = json.loads((finished_run["run"] / "metrics.json").read_text())
    model = keras.models.load_model(finished_run["run"] / "best.h5", compile=False)
    data = load_dataset(str(finished_run["npz"]), validation_split=0.25, seed=0)
    images = tf.image.grayscale_to_rgb(tf.cast(data.val.images, tf.float32)[..., None])
    images = keras.applications.vgg16.preprocess_input(tf.image.resize(images, (32, 32)))
    predicted = np.argmax(model.predict(images, verbose=0), axis=1)
    labels = data.val.labels
    assert metrics["examples"] == len(labels)
    assert metrics["accuracy"] == pytest.approx(np.mean(predicted == labels))
    for index, name in enumerate(["0", "1"]):
        row = metrics["per_class"][name]
        true_positive = np.sum((predicted == index) & (labels == index))
        assert row["support"] == np.sum(labels == index)
        assert row["precision"] == pytest.approx(
            true_positive / max(np.sum(predicted == index), 1))
        assert row["recall"] == pytest.approx(true_positive / np.sum(labels == index))
        assert metrics["confusion_matrix"][index] == [
            int(np.sum((labels == index) & (predicted == p))) for p in range(2)]
    assert "top5_accuracy" not in metrics  # 2 classes
    manifest = json.loads((finished_run["run"] / "manifest.json").read_text())
    assert {"metrics.json", "report.html", *PICTURES} <= set(manifest["artifacts"])


def test_top5_accuracy_counts_the_five_likeliest_classes() -> None:
    from trainer.reports.evaluation import compute_metrics

    probabilities = np.array([[0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05],
                              [0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05]])
    metrics = compute_metrics(np.array([6, 4]), probabilities, list("abcdefg"))
    assert metrics["accuracy"] == 0.0 and metrics["top5_accuracy"] == 0.5


def test_the_report_is_self_contained(finished_run: dict) -> None:
    page = (finished_run["run"] / "report.html").read_text()
    sources = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)""", page)
    assert len(sources) == len(PICTURES) and all(s.startswith("data:image/png;base64,")
                                                 for s in sources)
    assert not re.search(r"https?://|url\(|@import", page)
    assert "Per class" in page and "tiny" in page and "val_accuracy" in page


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Chromium's own background services, which it calls whatever page it shows.
BROWSER_HOSTS = re.compile(r"https?://([^/]+\.)?(google\.com|googleapis\.com|gvt1\.com)[:/]")


def _render(page: Path, screenshot: Path) -> list[str]:
    """Screenshot `page` headless with every host name unresolvable; the http(s) URLs the
    page asked for (from Chromium's net log)."""
    netlog = page.with_suffix(".netlog.json")
    result = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--host-resolver-rules=MAP * ~NOTFOUND", f"--log-net-log={netlog}",
         f"--screenshot={screenshot}", "--window-size=1200,1600", f"file://{page}"],
        capture_output=True, text=True, timeout=120)
    assert screenshot.is_file(), result.stderr[-2000:]
    urls = set(re.findall(r'"url":"([^"]+)"', netlog.read_text()))
    return sorted(u for u in urls if u.startswith("http") and not BROWSER_HOSTS.match(u))


@unless_ci(_chromium() is None, "Debian's chromium is not installed (.ci/run installs it)")
def test_the_report_renders_in_headless_chromium(finished_run: dict, tmp_path: Path) -> None:
    shutil.copy(finished_run["run"] / "report.html", tmp_path / "report.html")
    assert _render(tmp_path / "report.html", tmp_path / "report.png") == []
    _assert_picture(tmp_path / "report.png", 1000, 1000)
    # The check sees a page that does load something from the network.
    (tmp_path / "leaky.html").write_text('<h1>x</h1><img src="https://cdn.example.org/a.png">')
    assert _render(tmp_path / "leaky.html", tmp_path / "leaky.png") == [
        "https://cdn.example.org/a.png"]


def test_tensorboard_has_every_epochs_scalars(finished_run: dict) -> None:
    import tensorflow as tf

    def scalars(split: str) -> dict[tuple[str, int], float]:
        values = {}
        for file in (finished_run["run"] / "tensorboard" / split).glob("events.out.tfevents.*"):
            for record in tf.data.TFRecordDataset(str(file)):
                event = tf.compat.v1.Event.FromString(record.numpy())
                for value in event.summary.value:
                    values[(value.tag, event.step)] = float(
                        tf.make_ndarray(value.tensor))
        return values

    train, validation = scalars("train"), scalars("validation")
    for row in finished_run["history"]:
        assert train[("loss", row["epoch"])] == pytest.approx(row["loss"], rel=1e-5)
        assert validation[("accuracy", row["epoch"])] == pytest.approx(row["val_accuracy"],
                                                                       rel=1e-5)


def test_trainer_evaluate_agrees_with_the_run(finished_run: dict, tmp_path: Path) -> None:
    env = clean_environ(VALIDATION_SPLIT="0.25")
    npz = str(finished_run["npz"])
    result = trainer_in_process("evaluate", str(finished_run["run"] / "best.h5"), npz, "--to",
                      str(tmp_path / "eval"), env=env)
    assert result.returncode == 0, result.stderr
    ours = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    theirs = json.loads((finished_run["run"] / "metrics.json").read_text())
    assert ours["confusion_matrix"] == theirs["confusion_matrix"]
    for name in ("confusion.png", "errors.png"):
        _assert_picture(tmp_path / "eval" / name)
    everything = trainer_in_process("evaluate", str(finished_run["run"] / "best.h5"), npz,
                          "--split", "all", "--to", str(tmp_path / "all"), env=env)
    assert everything.returncode == 0, everything.stderr
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["examples"] == 80
    other = trainer_in_process("evaluate", str(finished_run["run"] / "best.h5"), "digits", "--to",
                     str(tmp_path / "digits"), env=env)
    assert other.returncode == 3 and "has 10 classes but the model has 2" in other.stderr


def test_trainer_report_rebuilds_a_verifiable_report(finished_run: dict, tmp_path: Path
                                                     ) -> None:
    root = tmp_path / "runs"
    shutil.copytree(finished_run["run"], root / "tiny")
    (root / "tiny" / "report.html").unlink()
    env = clean_environ()
    rebuilt = _trainer("report", "tiny", "--artifact-uri", str(root), env=env)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (root / "tiny" / "report.html").read_text().count("data:image/png;base64,") == 4
    fetched = _trainer("fetch", "tiny", "--artifact-uri", str(root), "--to",
                       str(tmp_path / "fetched"), env=env)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "fetched" / "tiny" / "report.html").is_file()

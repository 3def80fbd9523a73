"""The `trainer` CLI: documented options, and runs / fetch / predict on a real finished run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from conftest import clean_environ, trainer_in_process

from trainer.cli import cli
from trainer.settings import OPTIONS

# One worker runs every test that reads the shared finished run (trained once per worker).
pytestmark = pytest.mark.xdist_group("finished_run")


def _commands() -> list[click.Command]:
    return list(cli.commands.values())


@pytest.mark.parametrize("command", _commands(), ids=lambda c: c.name)
def test_every_option_has_help_and_a_variable(command: click.Command) -> None:
    for param in command.params:
        if not isinstance(param, click.Option) or param.name == "help":
            continue
        assert param.help, f"{command.name} {param.opts} has no help"
        if param.name in ("top", "destination", "split", "sweep", "name", "formats"):
            continue  # per-call choices, not settings of a run
        assert param.envvar or "[env var: " in param.help, f"{param.opts} has no variable"
        if param.envvar:  # a setting of a run: the same flag and variable as in `train`
            option = next(o for o in OPTIONS if o.variable == param.envvar)
            assert option.flag in param.opts, (command.name, param.opts)


def test_train_help_shows_every_setting_with_its_variable_and_default() -> None:
    result = CliRunner().invoke(cli, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    for option in OPTIONS:
        assert option.flag in text and f"env var: {option.variable};" in text


def trainer(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    console_script = Path(sys.executable).parent / "trainer"
    return subprocess.run([str(console_script), *args], capture_output=True,
                          text=True, timeout=300, env=env)


def test_runs_lists_status_epochs_and_best(finished_run: dict) -> None:
    # A setting `runs` does not take, set badly, does not stop it.
    env = {**finished_run["env"], "EPOCHS": "many"}
    result = trainer("runs", "--artifact-uri", str(finished_run["root"]), env=env)
    assert result.returncode == 0, result.stderr
    line = next(li for li in result.stdout.splitlines() if li.startswith("tiny "))
    manifest = json.loads((finished_run["run"] / "manifest.json").read_text())
    assert line.split()[1:3] == ["finished", "3"]
    assert f"val_accuracy={manifest['best_value']:.4f}" in line


def test_fetch_downloads_and_verifies(finished_run: dict, tmp_path: Path) -> None:
    result = trainer("fetch", "tiny", "--to", str(tmp_path), "--artifact-uri",
                     str(finished_run["root"]), env=finished_run["env"])
    assert result.returncode == 0, result.stderr
    fetched = sorted(p.name for p in (tmp_path / "tiny").iterdir())
    assert fetched == sorted(["best.h5", "confusion.png", "config.json", "curves.png",
                              "errors.png", "export", "history.csv", "history.json",
                              "manifest.json", "metrics.json", "report.html", "samples.png",
                              "tensorboard"])
    export = tmp_path / "tiny" / "export"
    assert (export / "savedmodel" / "1" / "saved_model.pb").is_file()
    assert (export / "onnx" / "model.onnx").is_file() and (export / "labels.txt").is_file()
    assert (export / "litert" / "model.tflite").is_file()
    assert list((export / "triton").glob("*/config.pbtxt"))
    assert not (tmp_path / "tiny" / "state").exists()  # resume state stays in the store
    assert (tmp_path / "tiny" / "best.h5").read_bytes() == (
        finished_run["run"] / "best.h5").read_bytes()


def test_fetch_refuses_a_damaged_model(finished_run: dict, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(finished_run["run"], store / "tiny")
    with open(store / "tiny" / "best.h5", "r+b") as f:
        f.seek(1000)
        f.write(b"\x00damaged\x00")
    result = trainer("fetch", "tiny", "--to", str(tmp_path / "out"), "--artifact-uri",
                     str(store), env=finished_run["env"])
    assert result.returncode == 3
    assert "does not match the sha256" in result.stderr
    assert not (tmp_path / "out" / "tiny" / "best.h5").exists()
    # A file fetched late damaged, over an earlier complete copy: nothing partial is left,
    # and the earlier copy stays as it was.
    shutil.copyfile(finished_run["run"] / "best.h5", store / "tiny" / "best.h5")
    earlier = tmp_path / "out" / "tiny"
    earlier.mkdir(parents=True, exist_ok=True)
    (earlier / "best.h5").write_bytes(b"an earlier copy")
    (store / "tiny" / "report.html").write_text("<html>damaged</html>")
    result = trainer("fetch", "tiny", "--to", str(tmp_path / "out"), "--artifact-uri",
                     str(store), env=finished_run["env"])
    assert result.returncode == 3 and "report.html of run tiny does not match" in result.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["tiny"]
    assert [p.name for p in earlier.iterdir()] == ["best.h5"]
    assert (earlier / "best.h5").read_bytes() == b"an earlier copy"


def test_fetch_of_an_unknown_run_says_so(finished_run: dict, tmp_path: Path) -> None:
    result = trainer("fetch", "nope", "--to", str(tmp_path), "--artifact-uri",
                     str(finished_run["root"]), env=finished_run["env"])
    assert result.returncode == 4 and "run nope has no manifest.json" in result.stderr
    result = trainer("fetch", "../etc", "--to", str(tmp_path), env=finished_run["env"])
    assert result.returncode == 2 and "RUN_ID" in result.stderr


def test_predict_names_the_right_class_with_every_kind_of_model(finished_run: dict,
                                                               tmp_path: Path) -> None:
    """Held-out digits whose class is known, through a run id, best.h5, the exported
    SavedModel and the ONNX file: the same, right class names."""
    from PIL import Image

    from trainer.data.load import load_dataset

    val = load_dataset(str(finished_run["npz"]), validation_split=0.25, seed=0).val
    paths = []
    for i, image in enumerate(val.images[:8]):
        paths.append(str(tmp_path / f"digit{i}.png"))
        Image.fromarray(image).save(paths[-1])
    export = finished_run["run"] / "export"
    for model in ("tiny", finished_run["run"] / "best.h5", export / "savedmodel",
                  export / "onnx" / "model.onnx"):
        result = trainer_in_process("predict", str(model), *paths, "--top", "2",
                                    "--artifact-uri", str(finished_run["root"]),
                                    env=finished_run["env"])
        assert result.returncode == 0, result.stderr
        lines = result.stdout.strip().splitlines()
        assert [line.split(": ", 1)[0] for line in lines] == paths
        top = [line.split(": ", 1)[1].split()[0] for line in lines]
        assert top == [str(label) for label in val.labels[:8]], (model, top)
    # An unreadable file among them: its own error row, the others predicted, then exit 3.
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"<html>not an image</html>")
    result = trainer_in_process("predict", str(finished_run["run"] / "best.h5"), paths[0],
                                str(broken), paths[1], env=finished_run["env"])
    assert result.returncode == 3, result.stderr
    first, error, second = [line for line in result.stdout.strip().splitlines()
                            if not line.startswith("{")]  # the JSON log's failure line
    assert first.split(": ")[1].split()[0] == str(val.labels[0])
    assert second.split(": ")[1].split()[0] == str(val.labels[1])
    assert error.startswith(f"{broken}: error: IMAGE {broken} is not a readable JPEG"), error
    assert result.stderr.strip().endswith(
        f"IMAGE: 1 of 3 images could not be read ({broken}); the others are predicted above")



@pytest.mark.parametrize("args, named", [
    (["train", "--epoch", "3"], "trainer train: No such option '--epoch'"),
    (["train", "--epochs"], "trainer train: Option '--epochs' requires an argument"),
    (["trian"], "trainer: No such command 'trian'"),
    (["fetch"], "trainer fetch: Missing argument 'RUN_ID'"),
])
def test_a_usage_error_is_exit_2_with_its_line_where_the_platform_shows_it(
        args: list[str], named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Click's own errors too: SageMaker's FailureReason (output/failure) and Kubernetes'
    termination log get the one line, as for every other non-zero exit."""
    from conftest import sagemaker_layout

    from trainer.cli import main
    from trainer.cluster import platforms

    base = sagemaker_layout(tmp_path)
    termination_log = tmp_path / "termination-log"
    monkeypatch.setattr(platforms, "TERMINATION_LOG", str(termination_log))
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(base))
    assert main(args) == 2
    line = (base / "output" / "failure").read_text()
    assert line.startswith(named) and line.endswith(" -h\n") and line.count("\n") == 1
    assert termination_log.read_text() == line


@pytest.mark.parametrize("flag, variable", [("--learning_rate=0", "LEARNING_RATE"),
                                            ("--BATCH_SIZE=0", "BATCH_SIZE"),
                                            ("--fine_tune_epochs=-1", "FINE_TUNE_EPOCHS")])
def test_vertex_ais_underscore_flags_are_the_settings_flags(
        flag: str, variable: str, capsys: pytest.CaptureFixture) -> None:
    """Vertex AI passes tuned hyperparameters as `--learning_rate=0.01`: the value reaches the
    setting (here an invalid one, so that its own check answers before any training)."""
    from trainer.cli import main

    assert main(["train", flag]) == 2
    assert capsys.readouterr().err.strip().startswith(f"error: {variable}='")


def test_a_bug_is_exit_1_with_its_line_in_the_termination_log(tmp_path: Path) -> None:
    """Exit 1 (a bug, retried by the Job) as Kubernetes shows it: one line on stderr, no
    traceback, and the same line in the termination log (TERMINATION_LOG, else
    /dev/termination-log) that `kubectl describe pod` prints. The bug here: a store with a
    folder where a run's manifest.json should be."""
    (tmp_path / "runs" / "r1" / "manifest.json").mkdir(parents=True)
    log = tmp_path / "termination-log"
    env = clean_environ(TERMINATION_LOG=str(log), LOG_FORMAT="text")
    result = subprocess.run([sys.executable, "-m", "trainer", "runs", "--artifact-uri",
                             str(tmp_path / "runs")], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = log.read_text()
    assert line.startswith("internal error: IsADirectoryError") and line.count("\n") == 1
    assert f"error: {line}" in result.stderr

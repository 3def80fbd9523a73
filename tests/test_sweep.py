"""Sweeps: grid files, the Kubernetes `sweep` overlay resolved pod by pod, a local `trainer
sweep` of two real runs on digits, `trainer runs --sweep` and the comparison page in Chromium.

    .venv/bin/python -m pytest tests/test_sweep.py     (the sweep trains: under flock)

The overlay's generic checks (schema, failure policy, security, credentials) are the ones every
overlay gets in tests/test_k8s.py; here: the Indexed Job, the grid's ConfigMap and what pod i
resolves to.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_environ, unless_ci

from trainer.cluster.specs import tf_config_from_indexed_job
from trainer.errors import ConfigError
from trainer.grid import Grid, combination_digest, load_grid, parse_grid
from trainer.reports.run_page import format_value
from trainer.reports.sweep_page import (
    SweepRun,
    build_sweep_page,
    collect_runs,
    sweep_lines,
    varying_settings,
)
from trainer.settings import load_settings
from trainer.store.stores import LocalStore
from trainer.sweep import run_id_of, sweep_environ

# One worker runs this module: its sweep (two trainings) is made once.
pytestmark = pytest.mark.xdist_group("sweep")

REPO = Path(__file__).resolve().parents[1]
OVERLAY = REPO / "k8s" / "overlays" / "sweep"


# --- grid files ----------------------------------------------------------------------------

def test_grid_combinations_in_the_files_order_last_list_fastest(tmp_path: Path) -> None:
    (tmp_path / "grid.yaml").write_text(
        "BACKBONE: [VGG16, MobileNetV2]\nPOOLING: [avg, max]\nLEARNING_RATE: ['1e-3', 1.0e-4]\n"
        "EPOCHS: 3\n")
    grid = load_grid(tmp_path / "grid.yaml")
    assert len(grid) == 8
    assert grid.combination(0) == {"EPOCHS": "3", "BACKBONE": "VGG16", "POOLING": "avg",
                                   "LEARNING_RATE": "1e-3"}
    assert grid.combination(1)["LEARNING_RATE"] == "0.0001"
    assert [(c["BACKBONE"], c["POOLING"]) for c in grid.combinations()[::2]] == [
        ("VGG16", "avg"), ("VGG16", "max"), ("MobileNetV2", "avg"), ("MobileNetV2", "max")]
    # The same grid as JSON gives the same combinations in the same order.
    (tmp_path / "grid.json").write_text(json.dumps(
        {"BACKBONE": ["VGG16", "MobileNetV2"], "POOLING": ["avg", "max"],
         "LEARNING_RATE": ["1e-3", "0.0001"], "EPOCHS": 3}))
    assert load_grid(tmp_path / "grid.json").combinations() == grid.combinations()


@pytest.mark.parametrize(("content", "message"), [
    ({"BACKBONES": ["VGG16"]}, "BACKBONES is not a setting variable"),
    ({"RUN_ID": ["a", "b"]}, "its RUN_ID is <sweep>-<index>-<digest>"),
    ({"XLA": [True, False]}, "read as a boolean"),
    ({"BACKBONE": []}, "BACKBONE has an empty list"),
    ({"BACKBONE": [["VGG16"]]}, "give a value or a list of values"),
    ([1, 2], "give a mapping of setting variables"),
])
def test_a_wrong_grid_names_the_fault(content: object, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_grid(content)


def test_an_unreadable_grid_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid JSON/YAML"):
        (tmp_path / "bad.json").write_text("{")
        load_grid(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="No such file"):
        load_grid(tmp_path / "missing.yaml")


# --- the environment of a sweep pod ------------------------------------------------------

@pytest.fixture
def grid_file(tmp_path: Path) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text("BACKBONE: [VGG16, MobileNetV2]\nLEARNING_RATE: ['1e-3', '1e-4']\n")
    return path


def test_sweep_environ_applies_combination_i_and_its_run_id(grid_file: Path) -> None:
    pod = {"SWEEP_GRID": str(grid_file), "JOB_COMPLETION_INDEX": "2", "RUN_ID": "lr",
           "JOB_NAME": "lr", "BACKBONE": "ResNet50", "EPOCHS": "5"}
    environ = sweep_environ(pod)
    assert environ["RUN_ID"] == "lr-2-" + combination_digest(
        {"BACKBONE": "MobileNetV2", "LEARNING_RATE": "1e-3"})
    settings = load_settings(environ)
    assert (settings.backbone, settings.learning_rate, settings.epochs) == ("MobileNetV2",
                                                                            1e-3, 5)
    assert sweep_environ(environ) == environ  # applied once, whoever calls it again
    assert sweep_environ({**pod, "SWEEP_NAME": "named"})["RUN_ID"] == environ["RUN_ID"].replace(
        "lr-", "named-")
    assert sweep_environ({"BACKBONE": "VGG16"}) == {"BACKBONE": "VGG16"}
    # Not a multi-node worker: no TF_CONFIG is derived from the Indexed Job's index.
    assert tf_config_from_indexed_job(environ) is None


@pytest.mark.parametrize(("extra", "message"), [
    ({"JOB_COMPLETION_INDEX": "4"}, "has 4 combinations: set the Job's completions"),
    ({"JOB_COMPLETION_INDEX": ""}, "is not a combination index"),
    ({"JOB_COMPLETION_INDEX": "0", "WORKER_COUNT": "2"}, "remove WORKER_COUNT"),
    ({"JOB_COMPLETION_INDEX": "0", "RUN_ID": ""}, "name the sweep"),
    ({"JOB_COMPLETION_INDEX": "0", "SWEEP_NAME": "Bad Name"}, "SWEEP_NAME='Bad Name'"),
])
def test_sweep_environ_refuses_what_cannot_be_a_sweep_pod(grid_file: Path, extra: dict,
                                                           message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        sweep_environ({"SWEEP_GRID": str(grid_file), "RUN_ID": "lr", **extra})


# --- the Kubernetes overlay --------------------------------------------------------------

kubectl = unless_ci(shutil.which("kubectl") is None, "kubectl (with kustomize) is not installed")


def _overlay(**settings: str) -> list[dict]:
    from test_k8s import render

    return render("sweep", **settings)


@kubectl
def test_sweep_overlay_renders_and_validates(tmp_path: Path) -> None:
    from test_k8s import render, validate

    validate(render("sweep"), tmp_path)
    validate(render("sweep", RUN_ID="lr-sweep-1"), tmp_path)


@kubectl
def test_sweep_overlay_is_an_indexed_job_of_one_pod_per_combination() -> None:
    from test_k8s import the_one, trainer_container

    objects = _overlay()
    job = the_one(objects, "Job")["spec"]
    grid = load_grid(OVERLAY / "grid.yaml")
    assert job["completionMode"] == "Indexed"
    assert job["completions"] == len(grid) == 4
    assert 1 <= job["parallelism"] <= job["completions"]
    # The base Job's failure policy, but exits 2, 3, 4 fail one combination alone (what that
    # does: test_k8s_failures.py), and its security, unchanged.
    base = the_one(_single_gpu(), "Job")["spec"]
    policy = copy.deepcopy(base["podFailurePolicy"])
    policy["rules"][0]["action"] = "FailIndex"
    assert job["podFailurePolicy"] == policy and job["backoffLimitPerIndex"] >= 1
    assert job["template"]["spec"]["securityContext"] == base["template"]["spec"][
        "securityContext"]
    container = trainer_container(objects)
    assert container["securityContext"] == trainer_container(_single_gpu())["securityContext"]
    names = {e["name"] for e in container["env"]}
    assert "SWEEP_GRID" in names and "WORKER_COUNT" not in names


def _single_gpu() -> list[dict]:
    from test_k8s import render

    return render("single-gpu")


@kubectl
@pytest.mark.parametrize("run_id", [None, "lr-sweep-1"])
def test_pod_i_resolves_to_combination_i(run_id: str | None, tmp_path: Path) -> None:
    from test_k8s import pod_environ, the_one, trainer_container

    objects = _overlay(**({"RUN_ID": run_id} if run_id else {}))
    job = the_one(objects, "Job")
    name = job["metadata"]["name"]
    assert name == (run_id or "trainer-sweep")
    container = trainer_container(objects)
    configmaps = {c["metadata"]["name"]: c for c in objects if c["kind"] == "ConfigMap"}
    settings = configmaps[container["envFrom"][0]["configMapRef"]["name"]]["data"]

    # The grid file, from the rendered ConfigMap, where the pod would find it.
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    (mount,) = [m for m in container["volumeMounts"]
                if env["SWEEP_GRID"].startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True
    key = env["SWEEP_GRID"][len(mount["mountPath"]) + 1:]
    grid_data = configmaps[volumes[mount["name"]]["configMap"]["name"]]["data"][key]
    (tmp_path / key).write_text(grid_data)
    grid: Grid = load_grid(OVERLAY / "grid.yaml")
    assert load_grid(tmp_path / key) == grid

    for index in range(job["spec"]["completions"]):
        pod = {**settings, **pod_environ(container, name, index),
               "SWEEP_GRID": str(tmp_path / key)}
        resolved = load_settings(sweep_environ(pod))
        # The ConfigMap's settings and the container's own values, under combination i's.
        literal = {k: v for k, v in env.items() if v is not None and k != "SWEEP_GRID"}
        expected = load_settings({**settings, **literal, **grid.combination(index),
                                  "RUN_ID": run_id_of(name, index, grid.combination(index))})
        assert resolved == expected
        assert re.fullmatch(rf"{name}-{index}-[0-9a-f]{{8}}", resolved.run_id)
        assert tf_config_from_indexed_job(sweep_environ(pod)) is None
    assert len({load_settings(sweep_environ({**settings, **pod_environ(
        container, name, i), "SWEEP_GRID": str(tmp_path / key)})).learning_rate
        for i in range(len(grid))}) == 2


def test_a_sweep_pod_trains_its_combination_under_its_own_run_id(tmp_path: Path) -> None:
    """`trainer train` in a sweep pod (SWEEP_GRID, the Indexed Job's JOB_COMPLETION_INDEX and
    the Job's RUN_ID, as the overlay renders them): each pod takes its own combination's values
    and RUN_ID. Seen without training: combination 1's BACKBONE is invalid (exit 2 naming it);
    combination 0's is valid, so the missing DATASET fails it (exit 3) under its own RUN_ID,
    lr-0-<digest>."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("BACKBONE: [VGG16, NoSuchNet]\n")
    runs = tmp_path / "runs"

    def pod(index: int) -> subprocess.CompletedProcess:
        env = clean_environ(SWEEP_GRID=str(grid), JOB_COMPLETION_INDEX=str(index), RUN_ID="lr",
                            DATASET=str(tmp_path / "missing.npz"), ARTIFACT_URI=str(runs),
                            LOG_FORMAT="text")
        return subprocess.run([sys.executable, "-m", "trainer", "train"], env=env,
                              capture_output=True, text=True, timeout=120)

    second = pod(1)
    assert second.returncode == 2 and "BACKBONE='NoSuchNet'" in second.stderr, second.stderr
    first = pod(0)
    assert first.returncode == 3 and "missing.npz" in first.stderr, first.stderr
    (run_id,) = [p.name for p in runs.iterdir()]  # <sweep>-<index>-<digest of its values>
    assert re.fullmatch(r"lr-0-[0-9a-f]{8}", run_id)
    assert run_id == run_id_of("lr", 0, load_grid(grid).combination(0))
    assert (runs / run_id / "failure.json").is_file()


# --- comparing a sweep's runs (no training) -------------------------------------------------

def _fake_run(store: Path, run_id: str, learning_rate: float, values: list[float],
              finished: bool = True, monitor: str = "val_loss",
              created: str = "2026-12-05T22:00:00Z") -> None:
    folder = store / run_id
    folder.mkdir(parents=True)
    history = [{"epoch": e, "loss": v, "accuracy": 0.5, "val_loss": v, "val_accuracy": 1 - v,
                "learning_rate": learning_rate, "seconds": 1.0, "images_per_second": 10.0}
               for e, v in enumerate(values, start=1)]
    (folder / "history.json").write_text(json.dumps(history, sort_keys=True))
    (folder / "config.json").write_text(json.dumps({"settings": {
        "run_id": run_id, "backbone": "VGG16", "learning_rate": learning_rate,
        "monitor": monitor, "epochs": 3}, "created": created}))
    if finished:
        best = min(values)
        (folder / "manifest.json").write_text(json.dumps({
            "status": "finished", "monitor": monitor, "best_value": best,
            "best_epoch": values.index(best) + 1}))


def test_sweep_runs_are_ranked_by_best_value_with_their_varying_settings(tmp_path: Path
                                                                         ) -> None:
    _fake_run(tmp_path, "lr-0", 1e-2, [0.9, 0.8, 0.85])
    _fake_run(tmp_path, "lr-1", 1e-3, [0.7, 0.4, 0.3])
    _fake_run(tmp_path, "lr-2", 1e-5, [0.95, 0.6], finished=False)
    _fake_run(tmp_path, "lr-other-0", 1e-3, [0.1])  # another sweep's run
    _fake_run(tmp_path, "lr-3x", 1e-3, [0.1])  # not <sweep>-<index>
    runs = collect_runs(LocalStore(str(tmp_path)), "lr")
    assert [r.run_id for r in runs] == ["lr-1", "lr-2", "lr-0"]  # val_loss: lowest first
    assert [r.status for r in runs] == ["finished", "running", "finished"]
    assert (runs[1].best_value, runs[1].best_epoch) == (0.6, 2)  # from its history so far
    assert varying_settings(runs) == ["learning_rate"]
    lines = sweep_lines(runs)
    assert lines[0].split() == ["RUN_ID", "STATUS", "EPOCHS", "LEARNING_RATE", "BEST",
                                "BEST_EPOCH"]
    assert lines[1].split() == ["lr-1", "finished", "3", "0.001", "val_loss=0.3", "3"]
    assert lines[2].split() == ["lr-2", "running", "2", "1e-05", "val_loss=0.6", "2"]
    page = build_sweep_page("lr", runs)
    assert page.count("data:image/png;base64,") == 1 and "1e-05" in page
    assert not re.search(r"https?://", page)
    with pytest.raises(Exception, match="no runs of sweep nope"):
        collect_runs(LocalStore(str(tmp_path)), "nope")


def test_a_combination_s_run_id_follows_its_settings() -> None:
    """Its digest is of the values as parsed, so only a changed value gives a new run id."""
    one = run_id_of("lr", 1, {"BACKBONE": "VGG16", "LEARNING_RATE": "1e-3"})
    assert re.fullmatch(r"lr-1-[0-9a-f]{8}", one)
    assert run_id_of("lr", 1, {"LEARNING_RATE": "0.001", "BACKBONE": "vgg16"}) == one
    assert run_id_of("lr", 1, {"BACKBONE": "VGG16", "LEARNING_RATE": "3e-4"}) != one
    assert run_id_of("lr", 1, {"BACKBONE": "VGG16", "LEARNING_RATE": "1e-3", "SEED": "1"}
                     ) != one


def test_an_edited_grid_s_runs_replace_the_old_ones_of_their_index(tmp_path: Path) -> None:
    _fake_run(tmp_path, "lr-0-0000aaaa", 1e-2, [0.9])
    _fake_run(tmp_path, "lr-1-0000bbbb", 1e-3, [0.7])
    _fake_run(tmp_path, "lr-1-0000cccc", 3e-4, [0.8], created="2026-12-05T23:00:00Z")
    runs = collect_runs(LocalStore(str(tmp_path)), "lr")
    assert sorted(r.run_id for r in runs) == ["lr-0-0000aaaa", "lr-1-0000cccc"]


def test_format_in_the_page_matches_the_run_report() -> None:
    run = SweepRun("a-0", 0, "finished", "val_accuracy", 0.95, 1, {"learning_rate": 1e-5})
    other = SweepRun("a-1", 1, "finished", "val_accuracy", 0.5, 1, {"learning_rate": 1e-3})
    page = build_sweep_page("a", [run, other])
    assert f"<td>{format_value(1e-5)}</td>" in page and "<td>0.95</td>" in page


# --- a real local sweep of two runs ------------------------------------------------------------

def trainer(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c",
                           "import sys; from trainer.cli import main; sys.exit(main())", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`trainer sweep` of two learning rates on digits, one short epoch each (80% held out for
    validation: a few steps of training each)."""
    folder = tmp_path_factory.mktemp("sweep")
    grid = folder / "lr.json"
    grid.write_text(json.dumps({"DATASET": "digits", "EPOCHS": 1, "IMAGE_SIZE": 32,
                                "BACKBONE": "VGG16", "WEIGHTS": "none", "BATCH_SIZE": 64,
                                "VALIDATION_SPLIT": "0.8",
                                "LEARNING_RATE": ["1e-3", "1e-4"]}))
    env = clean_environ(ARTIFACT_URI=str(folder / "runs"), LOG_FORMAT="json",
                        WORK_DIR=str(folder / "work"), EXPORT="none")
    result = trainer("sweep", str(grid), "--name", "lr", env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"grid": grid, "env": env, "root": folder / "runs", "result": result,
            "folder": folder}


def test_a_local_sweep_trains_each_combination_as_its_own_run(swept: dict) -> None:
    root = swept["root"]
    run_ids = _run_ids(root)
    assert [run_id[:5] for run_id in run_ids] == ["lr-0-", "lr-1-"]
    for run_id, rate in zip(run_ids, (1e-3, 1e-4), strict=True):
        config = json.loads((root / run_id / "config.json").read_text())
        assert config["settings"]["learning_rate"] == rate
        assert config["settings"]["run_id"] == run_id
        assert json.loads((root / run_id / "manifest.json").read_text())["status"] == "finished"
    # Again: both are finished, nothing trains.
    again = trainer("sweep", str(swept["grid"]), "--name", "lr", env=swept["env"])
    assert again.returncode == 0, again.stderr
    skipped = [json.loads(line) for line in again.stdout.splitlines()
               if line.startswith("{") and "already finished" in line]
    assert [line["run_id"] for line in skipped] == run_ids


def _run_ids(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def test_trainer_runs_lists_the_sweep_side_by_side(swept: dict) -> None:
    result = trainer("runs", "--sweep", "lr", "--artifact-uri", str(swept["root"]),
                     env=swept["env"])
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.strip().splitlines()
    assert header.split() == ["RUN_ID", "STATUS", "EPOCHS", "LEARNING_RATE", "BEST",
                              "BEST_EPOCH"]
    assert sorted(row.split()[0] for row in rows) == _run_ids(swept["root"])
    best = [float(row.split()[4].split("=")[1]) for row in rows]
    assert best == sorted(best, reverse=True)  # val_accuracy: best first


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@unless_ci(_chromium() is None, "Debian's chromium is not installed (.ci/run installs it)")
def test_the_sweep_page_in_headless_chromium(swept: dict, tmp_path: Path) -> None:
    result = trainer("report", "--sweep", "lr", "--artifact-uri", str(swept["root"]),
                     env=swept["env"])
    assert result.returncode == 0, result.stderr
    page = swept["root"] / "lr.html"
    assert result.stdout.strip() == str(page)
    # What the browser shows, after it decoded the images: the page with one script added.
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", (
        "<script>window.addEventListener('load', () => { document.body.dataset.images = "
        "[...document.images].map(i => i.naturalWidth + 'x' + i.naturalHeight).join(' '); "
        "});</script></body>")))
    dom = subprocess.run(
        [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-background-networking", "--disable-component-update",
         "--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=5000", "--dump-dom",
         f"file://{probe}"], capture_output=True, text=True, timeout=120).stdout
    (width, height), = [tuple(map(int, size.split("x"))) for size in
                        re.findall(r'data-images="([^"]*)"', dom)[0].split()]
    assert width >= 800 and height >= 300  # the overlaid curves, decoded
    headers = re.findall(r"<th>([^<]*)</th>", dom)
    assert headers == ["run", "status", "epochs", "LEARNING_RATE", "best val_accuracy",
                       "best epoch"]
    rows = re.findall(r'<tr><td><a href="(lr-\d)-[0-9a-f]{8}/report.html">\1-[0-9a-f]{8}</a>'
                      r"</td><td>finished</td><td>1</td><td>([^<]*)</td><td>([^<]*)</td>", dom)
    assert sorted(rows) == [("lr-0", "0.001", rows[0 if rows[0][0] == "lr-0" else 1][2]),
                            ("lr-1", "0.0001", rows[0 if rows[0][0] == "lr-1" else 1][2])]
    best = [float(value) for _, _, value in rows]
    assert best == sorted(best, reverse=True)  # val_accuracy: best first
    # Or to a local file.
    local = trainer("report", "--sweep", "lr", "--to", str(tmp_path / "lr.html"),
                    "--artifact-uri", str(swept["root"]), env=swept["env"])
    assert local.returncode == 0
    # The same page, its links relative to where it was written: each still opens the run's
    # report.
    links = re.findall(r'<a href="([^"]+)">', (tmp_path / "lr.html").read_text())
    assert len(links) == 2 and all((tmp_path / link).resolve().is_file() for link in links)
    assert re.sub(r'href="[^"]+"', "", (tmp_path / "lr.html").read_text()) == re.sub(
        r'href="[^"]+"', "", page.read_text())


def test_a_sweep_of_an_edited_grid_trains_what_changed(swept: dict) -> None:
    """(This module's last test: it adds a run to the sweep.) The second learning rate edited:
    the first combination is skipped, the second trains as a new run, and the sweep's listing
    shows the current grid."""
    before = _run_ids(swept["root"])
    edited = swept["folder"] / "edited" / "lr.json"
    edited.parent.mkdir()
    grid = json.loads(swept["grid"].read_text())
    edited.write_text(json.dumps({**grid, "LEARNING_RATE": ["1e-3", "3e-4"]}))
    again = trainer("sweep", str(edited), "--name", "lr", env=swept["env"])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    skipped = [json.loads(line)["run_id"] for line in again.stdout.splitlines()
               if line.startswith("{") and "already finished" in line]
    (new,) = set(_run_ids(swept["root"])) - set(before)
    assert skipped == before[:1] and new.startswith("lr-1-")
    config = json.loads((swept["root"] / new / "config.json").read_text())
    assert config["settings"]["learning_rate"] == 3e-4
    listed = trainer("runs", "--sweep", "lr", "--artifact-uri", str(swept["root"]),
                     env=swept["env"])
    assert sorted(row.split()[0] for row in listed.stdout.strip().splitlines()[1:]) == [
        before[0], new]

"""Sweeps: a grid of settings, one run per combination, locally or as a Kubernetes Indexed Job.

    trainer sweep lr.yaml --name lr-sweep    # lr-sweep-0-<digest>, ... one after another
    trainer runs --sweep lr-sweep            # side by side, best first
    trainer report --sweep lr-sweep          # one HTML page comparing them

A grid file (JSON, or YAML) maps setting variables to values. A list is a dimension of the grid;
any other value is the same for every combination:

    BACKBONE: [VGG16, MobileNetV2]
    LEARNING_RATE: ["1e-3", "1e-4"]
    DATASET: digits
    EPOCHS: 3

The combinations are the product of the lists in the file's order, the last varying fastest:
here 0 = VGG16 1e-3, 1 = VGG16 1e-4, 2 = MobileNetV2 1e-3, 3 = MobileNetV2 1e-4. Combination i
is run `<sweep>-<i>-<digest>` (RUN_ID), the digest of its own grid settings; the grid's values
beat the environment's. A re-run skips the finished ones, so a sweep that stopped is continued
by running it again, and a grid edited since trains the combinations whose settings changed.

On Kubernetes (k8s/overlays/sweep) pod i of an Indexed Job resolves its settings with
`sweep_environ` from two variables of its own and the index Kubernetes sets:
- SWEEP_GRID: the grid file's path (a ConfigMap mounted as a file);
- SWEEP_NAME: the sweep's name; default RUN_ID, which the manifests set to the Job's name;
- JOB_COMPLETION_INDEX: the combination, 0 to completions - 1.
A sweep's pods are single-worker runs: WORKER_COUNT (multi-node) must not be set with SWEEP_GRID.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError, Terminated, TrainerError
from trainer.grid import Grid, combination_digest, load_grid
from trainer.job import check_same_settings, finished
from trainer.logs import get_logger
from trainer.settings import load_settings
from trainer.store.stores import open_store

GRID_VARIABLE = "SWEEP_GRID"
NAME_VARIABLE = "SWEEP_NAME"
INDEX_VARIABLE = "JOB_COMPLETION_INDEX"
STOPPED = (130, 143)


def run_id_of(sweep: str, index: int, combination: Mapping[str, str]) -> str:
    """`<sweep>-<index>-<digest>`: a combination whose settings change gets a new run, so an
    edited grid trains what changed instead of finding an old run "already finished"."""
    return f"{sweep}-{index}-{combination_digest(combination)}"


def check_name(sweep: str, variable: str = NAME_VARIABLE) -> str:
    """A sweep name that makes valid RUN_IDs `<sweep>-<index>-<digest>` (RUN_ID's rules)."""
    try:
        valid = len(sweep) <= 110 and load_settings({"RUN_ID": f"{sweep}-0-00000000"}).run_id
    except ConfigError:
        valid = False
    if not valid:
        raise ConfigError(f"{variable}={sweep!r} is invalid: use at most 110 characters of a-z, "
                          "0-9, '.', '_' and '-', starting with a letter or digit")
    return sweep


def default_name(grid_path: str | Path) -> str:
    """The grid file's name without its extension, as a sweep name."""
    stem = re.sub(r"[^a-z0-9._-]+", "-", Path(grid_path).stem.lower()).strip("-.")
    return check_name(stem, "the grid file's name (give --name)")


def combination_environ(environ: Mapping[str, str], grid: Grid, sweep: str,
                        index: int) -> dict[str, str]:
    """The environment of combination `index`: the grid's settings over `environ`, RUN_ID
    `<sweep>-<index>-<digest>`, and the sweep's own variables removed (not applied twice)."""
    result = {k: v for k, v in environ.items() if k not in (GRID_VARIABLE, NAME_VARIABLE)}
    result.update(grid.combination(index))
    result["RUN_ID"] = run_id_of(sweep, index, grid.combination(index))
    return result


def sweep_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment a sweep pod trains with: unchanged without SWEEP_GRID; with it,
    combination JOB_COMPLETION_INDEX's settings and RUN_ID applied (see the module's doc)."""
    grid_path = environ.get(GRID_VARIABLE, "").strip()
    if not grid_path:
        return dict(environ)
    if environ.get("WORKER_COUNT", "").strip():
        raise ConfigError(f"{GRID_VARIABLE} and WORKER_COUNT are both set: a sweep's runs are "
                          "single-worker; remove WORKER_COUNT from the sweep's Job")
    raw_index = environ.get(INDEX_VARIABLE, "").strip()
    if not raw_index.isdigit():
        raise ConfigError(f"{GRID_VARIABLE} is set but {INDEX_VARIABLE}={raw_index!r} is not a "
                          "combination index (an Indexed Job sets it); to run a grid on one "
                          "machine use `trainer sweep GRID`")
    grid = load_grid(grid_path)
    index = int(raw_index)
    if index >= len(grid):
        raise ConfigError(f"{INDEX_VARIABLE}={index} but {grid_path} has {len(grid)} combinat"
                          "ions: set the Job's completions to the number of combinations")
    name = environ.get(NAME_VARIABLE, "").strip() or environ.get("RUN_ID", "").strip()
    if not name:
        raise ConfigError(f"{GRID_VARIABLE} is set without {NAME_VARIABLE} or RUN_ID: name the "
                          "sweep")
    return combination_environ(environ, grid, check_name(name), index)


@dataclass
class Outcome:
    run_id: str
    exit_code: int  # 0 trained or already finished


def plan_sweep(grid_path: str | Path, name: str | None,
               environ: Mapping[str, str]) -> tuple[str, list[dict[str, str]]]:
    """The sweep's name and each combination's environment, every one checked by
    load_settings before anything trains."""
    grid = load_grid(grid_path)
    sweep = check_name(name) if name else default_name(grid_path)
    plan = [combination_environ(environ, grid, sweep, i) for i in range(len(grid))]
    for index, env in enumerate(plan):
        try:
            load_settings(env)
        except ConfigError as error:
            raise ConfigError(f"sweep {sweep}, combination {index} "
                              f"({_describe(grid.combination(index), grid)}): {error}") from None
    return sweep, plan


def run_sweep(grid_path: str | Path, name: str | None,
              environ: Mapping[str, str]) -> list[Outcome]:
    """Run every combination, one after another, each as `trainer train` in its own process;
    finished runs are skipped. SIGTERM or Ctrl-C stop the sweep after the current run saved
    its state; other failures are reported at the end (the exit code of the first)."""
    log = get_logger()
    grid = load_grid(grid_path)
    sweep, plan = plan_sweep(grid_path, name, environ)
    log.info(f"sweep {sweep}: {len(plan)} combinations", extra={
        "sweep": sweep, "combinations": len(plan), "grid": str(grid_path)})
    outcomes: list[Outcome] = []
    child: list[subprocess.Popen] = []
    stop = threading.Event()
    previous = _forward_sigterm(child, stop)
    try:
        for index, env in enumerate(plan):
            run_id = env["RUN_ID"]
            if stop.is_set():
                raise Terminated(f"sweep {sweep} stopped by SIGTERM before {run_id}; run it "
                                 "again to continue (finished runs are skipped)")
            described = _describe(grid.combination(index), grid)
            if _finished(env):
                log.info(f"sweep {sweep}: {run_id} already finished; skipped",
                         extra={"sweep": sweep, "run_id": run_id})
                outcomes.append(Outcome(run_id, 0))
                continue
            log.info(f"sweep {sweep}: run {index + 1}/{len(plan)}: {run_id} ({described})",
                     extra={"sweep": sweep, "run_id": run_id, "index": index})
            # `trainer train` itself, under this interpreter (trainer/__main__.py).
            child[:] = [subprocess.Popen([sys.executable, "-m", "trainer", "train"], env=env)]
            code = child[0].wait()
            child.clear()
            outcomes.append(Outcome(run_id, code))
            if code in STOPPED:
                raise Terminated(f"sweep {sweep} stopped during {run_id}; run it again to "
                                 "continue (finished runs are skipped)")
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    failed = [o for o in outcomes if o.exit_code]
    if failed:
        error = TrainerError(
            f"sweep {sweep}: {len(failed)} of {len(plan)} runs failed: "
            + ", ".join(f"{o.run_id} (exit {o.exit_code})" for o in failed)
            + "; their logs above say why; run the sweep again to retry them")
        error.exit_code = failed[0].exit_code
        raise error
    log.info(f"sweep {sweep}: all {len(plan)} runs finished; compare them with `trainer runs "
             f"--sweep {sweep}` and `trainer report --sweep {sweep}`", extra={"sweep": sweep})
    return outcomes


def _describe(combination: Mapping[str, str], grid: Grid) -> str:
    return ", ".join(f"{k}={combination[k]}" for k in grid.varying) or "no varying setting"


def _finished(environ: Mapping[str, str]) -> bool:
    """Finished with these settings. One finished with others (of the environment: the grid's
    are in its run id) is left to `trainer train`, which refuses it naming them (exit 2)."""
    settings = load_settings(environ)
    store = open_store(settings.artifact_uri, settings.s3_endpoint_url,
                       settings.s3_addressing_style)
    if not finished(store, settings.run_id):
        return False
    try:
        check_same_settings(store, settings)
    except ConfigError:
        return False
    return True


def _forward_sigterm(child: list[subprocess.Popen], stop: threading.Event) -> Any:
    """SIGTERM to the sweep goes to the run in progress, which saves its state and exits 143;
    no other run starts."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def forward(signum: int, frame: Any) -> None:
        stop.set()
        for process in child:
            process.send_signal(signal.SIGTERM)

    return signal.signal(signal.SIGTERM, forward)

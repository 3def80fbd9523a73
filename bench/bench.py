"""Benchmarks, written to BENCHMARKS.md: each figure a ratio of two things measured side by side
in this one invocation, on this machine.

    make bench                 # or: .venv/bin/python bench/bench.py   (about 17 min on 2 cores)
    .venv/bin/python bench/bench.py --only race,startup    # some sections, for development
    .venv/bin/python bench/bench.py --render results.json  # BENCHMARKS.md again from a run

Sections (bench/report.py writes them): the race against the tutorial's `model.fit` (bench/
tutorial.py), with XLA; pipeline efficiency and a profile of the loop (bench/speed.py); upload
overhead into S3 on loopback; the finish phase by parts, and the race at the defaults (exports on); start-up against a bare script (bench/bare_start.py); BatchNorm
across two workers; export time per format; an S3 prefix of 2,000 objects (bench/s3_prefix.py);
float32 against bfloat16; the GPU estimate (bench/gpu.sh measures it on a GPU node).
Every run is a process of its own, timed here from its start to its exit (bench/runner.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from report import render  # noqa: E402 - bench/ on the path above
from runner import (  # noqa: E402
    PYTHON,
    REPO,
    Run,
    S3Server,
    base_environ,
    cpu,
    run_job,
    run_process,
    run_workers,
)

# The race, as `make run` trains (VGG16 on digits at 32x32) with the settings; the job's
# defaults otherwise (STEPS_PER_CALL=10, VALIDATION_SPLIT=0.1, SEED=0, PRECISION=auto, XLA=auto).
RACE = {"DATASET": "digits", "BACKBONE": "VGG16", "WEIGHTS": "none", "IMAGE_SIZE": "32",
        "EPOCHS": "3", "BATCH_SIZE": "64", "LEARNING_RATE": "1e-4", "AUGMENT": "none",
        "EXPORT": "none", "LOG_FORMAT": "json"}
# Start-up and BatchNorm: MobileNetV2 (it has BatchNorm) at 32x32 on digits.
MOBILE = {**RACE, "BACKBONE": "MobileNetV2", "LEARNING_RATE": "1e-3"}
PIPELINE = ("MobileNetV2", 32, 32)  # backbone, size, batch


def _script(name: str, *args: object) -> Run:
    return run_process([PYTHON, str(REPO / "bench" / name), *map(str, args)], base_environ())


def _speed(*args: object) -> dict[str, Any]:
    run = _script("speed.py", *args)
    return run.lines[-1]


def _job(work: Path, run_id: str, **settings: str) -> Run:
    env = base_environ(**{**RACE, "ARTIFACT_URI": str(work / "runs"), "RUN_ID": run_id,
                          "WORK_DIR": str(work / "work" / run_id), **settings})
    return run_job(env)


def _fresh(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def _summary(run: Run) -> dict[str, Any]:
    """What the report needs of a job or script run."""
    return {"wall": run.wall, "cpu": run.cpu, "peak_mb": run.peak_mb, "lines": run.lines,
            **run.extra}


def race(work: Path, results: dict[str, Any]) -> None:
    """The tutorial, then the job (local folder, XLA=auto), one after the other."""
    results["tutorial"] = _summary(_script("tutorial.py", RACE["EPOCHS"], RACE["BATCH_SIZE"],
                                           RACE["LEARNING_RATE"], _fresh(work / "tutorial")))
    results["job"] = _summary(_job(work, "race"))


def finish(work: Path, results: dict[str, Any]) -> None:
    """The race's job at the user's defaults (EXPORT=savedmodel): each part of the finish timed
    from its `finish part ... done` line, against a training epoch; then the same run restarted
    with only its manifest missing (every part recorded: no model, no dataset, no TensorFlow)."""
    results["finish"] = _summary(_job(work, "finish", EXPORT="savedmodel"))
    (work / "runs" / "finish" / "manifest.json").unlink()
    results["finish_restart"] = _summary(_job(work, "finish", EXPORT="savedmodel"))


def xla(work: Path, results: dict[str, Any]) -> None:
    """The job with XLA=on, one epoch only: its steps measured about 7x slower on this CPU."""
    results["job_xla"] = _summary(_job(work, "xla", XLA="on", EPOCHS="1"))


def upload(work: Path, results: dict[str, Any]) -> None:
    """The same job into rclone's and moto's S3 servers on loopback, then into the local
    folder again (the race's job was the first local run): local, rclone, moto, local; then
    the tutorial again."""
    for kind in ("rclone", "moto"):
        server = S3Server(kind, work / f"s3-{kind}")
        try:
            before = server.cpu_seconds()
            run = _job(work, kind, ARTIFACT_URI="s3://bench/runs", **server.env())
            run.extra["server_cpu"] = server.cpu_seconds() - before
        finally:
            server.stop()
        results[f"upload_{kind}"] = _summary(run)
    results["job_again"] = _summary(_job(work, "race-again"))
    # The race once more, in the other order, so that a drift of the machine shows.
    results["tutorial_again"] = _summary(_script(
        "tutorial.py", RACE["EPOCHS"], RACE["BATCH_SIZE"], RACE["LEARNING_RATE"],
        _fresh(work / "tutorial-again")))


def precision(work: Path, results: dict[str, Any]) -> None:
    """The race's job ran with PRECISION=auto; here the other precision, same settings."""
    chosen = next(row["precision"] for row in results["job"]["lines"] if "precision" in row)
    other = "float32" if chosen == "mixed_bfloat16" else "bfloat16"
    results["precision_other"] = _summary(_job(work, "precision", PRECISION=other))


def startup(work: Path, results: dict[str, Any]) -> None:
    """Process start to the first optimizer step: the job (one step per call, so its first
    call is one step) against a bare script, MobileNetV2 at 32x32, batch 64 each."""
    results["startup_job"] = _summary(_job(work, "startup", **{**MOBILE, "EPOCHS": "1",
                                                                "STEPS_PER_CALL": "1"}))
    results["startup_bare"] = _summary(_script("bare_start.py", MOBILE["BATCH_SIZE"]))


def batchnorm(work: Path, results: dict[str, Any]) -> None:
    """Two workers on loopback, BATCH_NORM_SYNC=step against save."""
    for mode in ("step", "save"):
        def env_of(index: int, mode: str = mode) -> dict[str, str]:
            return base_environ(**{**MOBILE, "EPOCHS": "3", "BATCH_SIZE": "32",
                                   "BATCH_NORM_SYNC": mode, "RUN_ID": f"bn-{mode}",
                                   "ARTIFACT_URI": str(work / f"bn-{mode}-{index}"),
                                   "WORK_DIR": str(work / "work" / f"bn-{mode}-{index}")})

        runs = run_workers(env_of)
        results[f"bn_{mode}"] = [_summary(run) for run in runs]
    results["bn_one_device"] = _speed("batchnorm", "MobileNetV2", 32, 64)


def export(work: Path, results: dict[str, Any]) -> None:
    results["export"] = _speed("export", work / "runs" / "race" / "best.h5", work / "export")


def prefix(work: Path, results: dict[str, Any]) -> None:
    results["prefix"] = _script("s3_prefix.py", "rclone").lines[-1]


def streaming(work: Path, results: dict[str, Any]) -> None:
    results["streaming"] = _script("streaming.py").lines[-1]


def flops(work: Path, results: dict[str, Any]) -> None:
    results["flops_resnet50"] = _speed("flops", "ResNet50", 224)
    results["flops_vgg16"] = _speed("flops", "VGG16", 32)


def pipeline(work: Path, results: dict[str, Any]) -> None:
    results["pipeline"] = _speed("pipeline", *PIPELINE)


def profile(work: Path, results: dict[str, Any]) -> None:
    results["profile"] = _speed("profile", RACE["BACKBONE"], RACE["IMAGE_SIZE"],
                                RACE["BATCH_SIZE"])


# In this order: the race's job leaves best.h5 for the export and the first local run for
# the upload comparison; each comparison's runs follow each other.
STEPS: dict[str, Callable[[Path, dict[str, Any]], None]] = {
    "race": race, "finish": finish, "upload": upload, "xla": xla, "precision": precision, "startup": startup,
    "batchnorm": batchnorm, "pipeline": pipeline, "profile": profile, "export": export,
    "prefix": prefix, "streaming": streaming, "flops": flops}


def _version(*names: str) -> str:
    for name in names:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma list of " + ", ".join(STEPS))
    parser.add_argument("--render", type=Path, help="a results.json to render again")
    parser.add_argument("--results", type=Path, default=REPO / "runs" / "bench-results.json",
                        help="where to keep the raw results (default: runs/bench-results.json)")
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    args = parser.parse_args()
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        chosen = args.only.split(",") if args.only else list(STEPS)
        if {"upload", "precision", "export", "finish"} & set(chosen):
            chosen = ["race", *[name for name in chosen if name != "race"]]
        results = {"machine": {**cpu(), "python": platform.python_version(),
                               "tensorflow": _version("tensorflow", "tensorflow-cpu"),
                               "keras": _version("keras"),
                               "date": time.strftime("%Y-%m-%d")},
                   "seconds": {}, "sections": chosen}
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bench-") as folder:
            for name in [step for step in STEPS if step in chosen]:
                began = time.monotonic()
                print(f"bench: {name} ...", file=sys.stderr, flush=True)
                STEPS[name](Path(folder), results)
                results["seconds"][name] = time.monotonic() - began
                args.results.parent.mkdir(parents=True, exist_ok=True)
                args.results.write_text(json.dumps(results, indent=1))  # so far
                print(f"bench: {name} took {results['seconds'][name]:.0f} s", file=sys.stderr,
                      flush=True)
        results["seconds"]["total"] = time.monotonic() - started
        args.results.parent.mkdir(parents=True, exist_ok=True)
        args.results.write_text(json.dumps(results, indent=1))
    text = render(results)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()

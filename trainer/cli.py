"""The `trainer` command line.

    trainer train --dataset digits --backbone VGG16 --weights none --epochs 3
    trainer runs --artifact-uri s3://bucket/runs
    trainer fetch RUN_ID --to ./models
    trainer predict RUN_ID image.png
    trainer sweep grid.yaml --name lr; trainer runs --sweep lr; trainer report --sweep lr
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

import click

from trainer.errors import INTERNAL_ERROR, TrainerError
from trainer.settings import OPTIONS, Settings, load_settings

TERMINATION_LOG = "/dev/termination-log"


def _settings_options(command: click.Command) -> click.Command:
    """One flag per setting, e.g. --batch-size for BATCH_SIZE, resolved by load_settings."""
    for option in reversed(OPTIONS):
        default = option.default
        shown = "none" if default in (None, "") else default
        if option.field == "run_id":
            shown = "generated"
        command = click.option(
            option.flag, option.field, default=None, metavar="TEXT",
            help=f"{option.help} [env var: {option.variable}; default: {shown}]",
        )(command)
    return command


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Train keras.applications image classifiers, and fetch and use what they learned."""


@cli.command()
@_settings_options
def train(**flags: str | None) -> None:
    """Run the training job (the container runs the same with `python entrypoint.py`)."""
    settings = load_settings(os.environ, flags)
    _configure(settings)
    from trainer.job import run_job

    run_job(settings)


@cli.command()
@click.option("--artifact-uri", envvar="ARTIFACT_URI", show_envvar=True, default="./runs",
              show_default=True, help="Where runs are stored: a local folder or s3://bucket[/prefix].")
@click.option("--sweep", envvar="SWEEP_NAME", show_envvar=True, default=None,
              help="Only this sweep's runs (<NAME>-<index>), side by side with their varying "
              "settings, best first.")
def runs(artifact_uri: str, sweep: str | None) -> None:
    """List runs: id, status, epochs done, best value."""
    if sweep:
        from trainer.sweep_report import collect_runs, sweep_lines

        for line in sweep_lines(collect_runs(_store(artifact_uri), sweep)):
            click.echo(line)
        return
    from trainer.runs import list_runs

    for line in list_runs(_store(artifact_uri)):
        click.echo(line)


@cli.command()
@click.argument("run_id")
@click.option("--to", "destination", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Folder to download into; files go to DIR/RUN_ID/.")
@click.option("--artifact-uri", envvar="ARTIFACT_URI", show_envvar=True, default="./runs",
              show_default=True, help="Where runs are stored: a local folder or s3://bucket[/prefix].")
def fetch(run_id: str, destination: str, artifact_uri: str) -> None:
    """Download a run's best.h5 and metadata, verified against its manifest's sha256."""
    from trainer.runs import fetch_run

    folder = fetch_run(_store(artifact_uri), _checked_run_id(run_id), Path(destination))
    click.echo(f"{folder / 'best.h5'}")


@cli.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--top", default=3, show_default=True, type=click.IntRange(1, 100),
              help="How many classes to show per image.")
@click.option("--artifact-uri", envvar="ARTIFACT_URI", show_envvar=True, default="./runs",
              show_default=True, help="Where runs are stored, when MODEL is a run id.")
def predict(model: str, images: tuple[str, ...], top: int, artifact_uri: str) -> None:
    """Top classes of IMAGES, by class name; MODEL is a run id or an .h5 path."""
    _configure(load_settings({"LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING")}))
    from trainer.predict import predict_images, resolve_model

    path = resolve_model(model, _store(artifact_uri))
    for image, ranked in predict_images(path, [Path(i) for i in images], top):
        click.echo(f"{image}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))


@cli.command()
@click.argument("model")
@click.argument("dataset")
@click.option("--to", "destination", type=click.Path(file_okay=False), default="evaluation",
              show_default=True, help="Folder for metrics.json, confusion.png and errors.png.")
@click.option("--split", type=click.Choice(["val", "all"]), default="val", show_default=True,
              help="val: the dataset's validation or test split (else VALIDATION_SPLIT of its "
              "images, as training holds out); all: every image.")
@click.option("--artifact-uri", envvar="ARTIFACT_URI", show_envvar=True, default="./runs",
              show_default=True, help="Where runs are stored, when MODEL is a run id.")
def evaluate(model: str, dataset: str, destination: str, split: str, artifact_uri: str) -> None:
    """Metrics and pictures of MODEL (a run id or an .h5) on DATASET (anything DATASET takes)."""
    settings = load_settings({**os.environ, "DATASET": dataset,
                              "LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING")})
    _configure(settings)
    from trainer.predict import evaluate_model, resolve_model

    path = resolve_model(model, _store(artifact_uri))
    metrics = evaluate_model(path, settings, split, Path(destination))
    click.echo(f"accuracy {metrics['accuracy']:.4f} on {metrics['examples']} images; "
               f"metrics.json, confusion.png and errors.png in {destination}")


@cli.command()
@click.argument("run_id", required=False)
@click.option("--artifact-uri", envvar="ARTIFACT_URI", show_envvar=True, default="./runs",
              show_default=True, help="Where runs are stored: a local folder or s3://bucket[/prefix].")
@click.option("--sweep", envvar="SWEEP_NAME", show_envvar=True, default=None,
              help="Instead of RUN_ID: one page comparing this sweep's runs, stored as "
              "<NAME>.html next to them.")
@click.option("--to", "destination", type=click.Path(dir_okay=False), default=None,
              help="With --sweep: write the page to this local file instead.")
def report(run_id: str | None, artifact_uri: str, sweep: str | None,
           destination: str | None) -> None:
    """Rebuild a run's report.html from its files, in the store; or compare a sweep's runs."""
    if run_id is None:
        if not sweep:
            raise click.UsageError("give a RUN_ID, or --sweep NAME")
        from trainer.sweep import check_name
        from trainer.sweep_report import write_sweep_report

        click.echo(write_sweep_report(_store(artifact_uri), check_name(sweep, "--sweep"),
                                      Path(destination) if destination else None))
        return
    from trainer.runs import rebuild_report

    click.echo(rebuild_report(_store(artifact_uri), _checked_run_id(run_id)))


@cli.command()
@click.argument("grid", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", envvar="SWEEP_NAME", show_envvar=True, default=None,
              help="The sweep's name; its runs are <NAME>-<index>. Default: GRID's file name "
              "without extension.")
def sweep(grid: str, name: str | None) -> None:
    """Run every combination of a grid of settings, one after another.

    GRID is a JSON or YAML file that maps setting variables to a list of values (a dimension of
    the grid) or to one value (the same in every run), e.g. {"BACKBONE": ["VGG16",
    "MobileNetV2"], "LEARNING_RATE": ["1e-3", "1e-4"], "EPOCHS": 3}. Combination i (in the
    file's order, the last list varying fastest) runs as RUN_ID <NAME>-<i>; other settings come
    from the environment. Finished runs are skipped, so running it again continues a sweep.
    """
    _configure(load_settings(os.environ))
    from trainer.sweep import run_sweep

    run_sweep(grid, name, os.environ)


def _store(artifact_uri: str):  # noqa: ANN202 - a Store
    from trainer.storage import open_store

    settings = load_settings({**os.environ, "ARTIFACT_URI": artifact_uri})
    return open_store(settings.artifact_uri, settings.s3_endpoint_url, settings.s3_addressing_style)


def _checked_run_id(run_id: str) -> str:
    from trainer.settings import _run_id

    return _run_id("RUN_ID", run_id)


def _configure(settings: Settings) -> None:
    from trainer.logs import setup_logging

    setup_logging(settings.log_level, settings.log_format)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the contract's exit code; the caller exits with it."""
    debug = os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"
    try:
        result = cli.main(args=list(argv) if argv is not None else None, prog_name="trainer",
                          standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as stop:
        return stop.exit_code
    except click.ClickException as error:
        error.show()
        return 2
    except (click.Abort, KeyboardInterrupt):
        return 130
    except TrainerError as error:
        return _fail(str(error), error.exit_code, debug)
    except Exception as error:  # noqa: BLE001 - every bug becomes exit 1 with one line
        detail = " ".join(str(error).split())[:300]
        return _fail(f"internal error: {type(error).__name__}: {detail}; rerun with "
                     "LOG_LEVEL=DEBUG for the traceback and report it", INTERNAL_ERROR, debug)


def _fail(message: str, code: int, debug: bool) -> int:
    line = " ".join(message.split())
    if debug:
        traceback.print_exc()
    logger = logging.getLogger("trainer")
    if logger.handlers:  # the JSON log line for log tools; stderr gets the plain line below
        logger.error(line, extra={"exit_code": code})
    print(f"error: {line}", file=sys.stderr, flush=True)
    try:
        with open(TERMINATION_LOG, "w") as f:
            f.write(line + "\n")
    except OSError:
        pass
    return code

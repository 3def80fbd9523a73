"""The `trainer` command line.

    trainer train --dataset digits --backbone VGG16 --weights none --epochs 3
    trainer runs --artifact-uri s3://bucket/runs
    trainer fetch RUN_ID --to ./models
    trainer predict RUN_ID image.png
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
def runs(artifact_uri: str) -> None:
    """List runs: id, status, epochs done, best value."""
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


@cli.command("export")
@click.argument("model")
@click.option("--format", "formats", envvar="EXPORT", show_envvar=True, default="savedmodel",
              show_default=True, help="none, or a comma list of savedmodel, onnx, litert.")
@click.option("--to", "destination", type=click.Path(file_okay=False), default=None,
              help="Folder for the exports.  [default: export/ beside MODEL.h5, or RUN_ID/export]")
@click.option("--artifact-uri", envvar="ARTIFACT_URI", show_envvar=True, default="./runs",
              show_default=True, help="Where runs are stored, when MODEL is a run id.")
def export_command(model: str, formats: str, destination: str | None, artifact_uri: str) -> int:
    """Serving exports of a run (RUN_ID) or MODEL.h5, each checked against it (exit 1 if any
    differs)."""
    _configure(load_settings({"LOG_LEVEL": os.environ.get("LOG_LEVEL", "WARNING")}))
    from trainer.errors import ConfigError
    from trainer.export import check_export_runtimes, export_model, parse_formats
    from trainer.predict import resolve_model

    chosen = parse_formats(formats, "--format")
    check_export_runtimes(chosen)
    is_file = model.endswith(".h5") or Path(model).is_file()
    path = resolve_model(model if is_file else _checked_run_id(model), _store(artifact_uri))
    if path.suffix != ".h5":
        raise ConfigError(f"MODEL {model} is not an .h5 file or a run id")
    name = model if not is_file else (path.parent.name if path.stem == "best" else path.stem)
    out = Path(destination) if destination else (
        path.parent / "export" if is_file else Path(model) / "export")
    results = export_model(path, out, chosen, name="".join(
        c if c.isalnum() or c in "._-" else "_" for c in name) or "classifier")
    click.echo(f"exports of {model} in {out}")
    for kind, result in results.items():
        difference = result["max_abs_difference"]
        shown = "-" if difference is None else f"{difference:.2g}"
        places = [str(out / Path(f).parent) if f.endswith(("saved_model.pb", "config.pbtxt"))
                  else str(out / f) for f in result["files"]
                  if f.endswith(("saved_model.pb", "config.pbtxt", "model.tflite"))
                  or f.startswith("onnx/")]
        click.echo(f"{kind:<11} {result['status']:<7} max abs difference {shown:<8} "
                   + (result.get("error") or " ".join(places)))
    return 0 if all(r["status"] == "ok" for r in results.values()) else INTERNAL_ERROR


@cli.command()
@click.argument("run_id")
@click.option("--artifact-uri", envvar="ARTIFACT_URI", show_envvar=True, default="./runs",
              show_default=True, help="Where runs are stored: a local folder or s3://bucket[/prefix].")
def report(run_id: str, artifact_uri: str) -> None:
    """Rebuild a run's report.html from its files, in the store."""
    from trainer.runs import rebuild_report

    click.echo(rebuild_report(_store(artifact_uri), _checked_run_id(run_id)))


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

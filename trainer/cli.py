"""The `trainer` command line.

    trainer train --dataset digits --backbone VGG16 --weights none --epochs 3
    trainer runs --artifact-uri s3://bucket/runs
    trainer fetch RUN_ID --to ./models
    trainer predict RUN_ID image.png
    trainer evaluate RUN_ID ./photos
    trainer report RUN_ID
    trainer sweep grid.yaml --name lr; trainer runs --sweep lr; trainer report --sweep lr

`train` takes every setting (a flag, else its variable, else the default); the other commands
take only the few settings they use, so an unrelated bad variable does not stop them.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from trainer.cluster.platforms import record_failure
from trainer.data.load import fetch_dataset, remote_dataset
from trainer.data.shards import default_cache_bytes
from trainer.data.tfrecords import Remote
from trainer.errors import (
    INTERNAL_ERROR,
    SIGINT_EXIT,
    SIGINT_LINE,
    ConfigError,
    DataError,
    TrainerError,
    internal_error_line,
)
from trainer.flags import (
    OPTIONS_BY_FIELD,
    flag_spelling,
    open_run_store,
    setting,
    settings_options,
    store_options,
)
from trainer.job import run_job
from trainer.logs import filter_native_logs, setup_logging
from trainer.redaction import redact
from trainer.reports.sweep_page import collect_runs, sweep_lines, write_sweep_report
from trainer.runs import fetch_run, list_runs, rebuild_report, resolve_model
from trainer.serving.formats import check_export_runtimes, parse_formats
from trainer.settings import check_run_id, default_of, load_settings
from trainer.sweep import check_name, run_sweep, sweep_environ
from trainer.ticker import progress_ticker


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Train keras.applications image classifiers, and fetch and use what they learned."""


@cli.command(context_settings={"token_normalize_func": flag_spelling})
@settings_options
def train(**flags: str | None) -> None:
    """Run the training job (the container runs the same with `python entrypoint.py`)."""
    # A pod of the sweep overlay: its completion index picks its combination of the grid.
    environ = sweep_environ(os.environ)
    settings = load_settings(environ, flags)
    setup_logging(settings.log_level, settings.log_format)
    run_job(settings, environ)


@cli.command()
@click.option("--sweep", default=None,
              help="Only this sweep's runs (<NAME>-<index>-<digest>, the newest of each index), "
              "side by side with their varying settings, best first.")
@store_options
def runs(sweep: str | None, **options: Any) -> None:
    """List runs: id, status, epochs done, best value."""
    store = open_run_store(options)
    if sweep:
        for line in sweep_lines(collect_runs(store, sweep)):
            click.echo(line)
        return
    for line in list_runs(store):
        click.echo(line)


@cli.command()
@click.argument("run_id")
@click.option("--to", "destination", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Folder to download into; files go to DIR/RUN_ID/.")
@store_options
def fetch(run_id: str, destination: str, **options: Any) -> None:
    """Download a run's best.h5 and metadata, verified against its manifest's sha256."""
    folder = fetch_run(open_run_store(options), check_run_id(run_id), Path(destination))
    click.echo(f"{folder / 'best.h5'}")


@cli.command()
@click.argument("model")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--top", default=3, show_default=True, type=click.IntRange(1, 100),
              help="How many classes to show per image.")
@store_options
def predict(model: str, images: tuple[str, ...], top: int, **options: Any) -> None:
    """Top classes of IMAGES, by class name; MODEL is a run id, an .h5 path, an exported
    SavedModel folder or an ONNX file."""
    from trainer.serving.predict import predict_images  # TensorFlow

    path = resolve_model(model, open_run_store(options))
    unreadable = []
    for image, ranked in predict_images(path, [Path(i) for i in images], top):
        if isinstance(ranked, DataError):  # a row of its own; the others are predicted
            unreadable.append(image)
            click.echo(f"{image}: error: {ranked}")
        else:
            click.echo(f"{image}: " + ", ".join(f"{name} {p:.3f}" for name, p in ranked))
    if unreadable:
        raise DataError(f"IMAGE: {len(unreadable)} of {len(images)} images could not be read "
                        f"({', '.join(unreadable)}); the others are predicted above")


@cli.command()
@click.argument("model")
@click.argument("dataset")
@click.option("--to", "destination", type=click.Path(file_okay=False), default="evaluation",
              show_default=True, help="Folder for metrics.json, confusion.png and errors.png.")
@click.option("--split", type=click.Choice(["val", "all"]), default="val", show_default=True,
              help="val: the dataset's validation or test split (else VALIDATION_SPLIT of its "
              "images, as training holds out; a run's own SEED and VALIDATION_SPLIT when MODEL "
              "is a run); all: every image.")
@setting("validation_split")
@setting("seed")
@setting("dataset_mirror")
@setting("bad_images")
@setting("dataset_format")
@setting("data_cache_bytes")
@setting("work_dir", help="Local folder where an s3:// DATASET is fetched (or streamed).")
@store_options
def evaluate(model: str, dataset: str, destination: str, split: str, validation_split: float,
             seed: int, dataset_mirror: str | None, bad_images: Any, dataset_format: str | None,
             data_cache_bytes: int | None, work_dir: str, **options: Any) -> None:
    """Metrics and pictures of MODEL (a run id or an .h5) on DATASET (anything DATASET takes)."""
    from trainer.reports.evaluation import evaluate_model  # TensorFlow

    dataset = OPTIONS_BY_FIELD["dataset"].parse("DATASET", dataset)
    endpoint, style = options["s3_endpoint_url"], options["s3_addressing_style"]
    path = resolve_model(model, open_run_store(options))
    remote = Remote(endpoint, style, str(Path(work_dir) / "stream-cache" / "evaluate"),
                    data_cache_bytes or default_cache_bytes(work_dir),
                    default_of(OPTIONS_BY_FIELD["upload_timeout"]))
    streamed = remote_dataset(dataset, remote, validation_split=validation_split, seed=seed,
                              dataset_format=dataset_format)
    local = dataset if streamed else fetch_dataset(dataset, Path(work_dir) / "datasets",
                                                   endpoint, style)
    metrics = evaluate_model(path, local, split, Path(destination),
                             validation_split=validation_split, seed=seed, mirror=dataset_mirror,
                             bad_images=bad_images, remote=remote, dataset_format=dataset_format)
    click.echo(f"accuracy {metrics['accuracy']:.4f} on {metrics['examples']} images; "
               f"metrics.json, confusion.png and errors.png in {destination}")


@cli.command("export")
@click.argument("model")
@click.option("--format", "formats", default="savedmodel", show_default=True,
              help="none, or a comma list of savedmodel, onnx, litert.")
@click.option("--to", "destination", type=click.Path(file_okay=False), default=None,
              help="Folder for the exports.  [default: export/ beside MODEL.h5, or RUN_ID/export]")
@store_options
def export_command(model: str, formats: str, destination: str | None, **options: Any) -> None:
    """Serving exports of a run (RUN_ID) or MODEL.h5, each checked against it (exit 1 if any
    differs)."""
    from trainer.serving.export import export_model, export_steps  # TensorFlow

    chosen = parse_formats(formats, "--format")
    check_export_runtimes(chosen)
    is_file = model.endswith(".h5") or Path(model).is_file()
    path = resolve_model(model if is_file else check_run_id(model), open_run_store(options))
    if path.suffix != ".h5":
        raise ConfigError(f"MODEL {model} is not an .h5 file or a run id")
    name = model if not is_file else (path.parent.name if path.stem == "best" else path.stem)
    out = Path(destination) if destination else (
        path.parent / "export" if is_file else Path(model) / "export")
    with progress_ticker("export", str(out), total=export_steps(chosen)) as ticker:
        results = export_model(path, out, chosen, name="".join(
            c if c.isalnum() or c in "._-" else "_" for c in name) or "classifier", ticker=ticker)
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
    failed = [kind for kind, result in results.items() if result["status"] != "ok"]
    if failed:
        raise TrainerError(f"the {', '.join(failed)} export(s) of {model} failed their check "
                           "(above); see the error beside each, or export the other formats")


@cli.command()
@click.argument("run_id", required=False)
@click.option("--sweep", default=None,
              help="Instead of RUN_ID: one page comparing this sweep's runs, stored as "
              "<NAME>.html next to them.")
@click.option("--to", "destination", type=click.Path(dir_okay=False), default=None,
              help="With --sweep: write the page to this local file instead.")
@store_options
def report(run_id: str | None, sweep: str | None, destination: str | None,
           **options: Any) -> None:
    """Rebuild a run's report.html from its files, in the store; or compare a sweep's runs."""
    if run_id is None:
        if not sweep:
            raise click.UsageError("give a RUN_ID, or --sweep NAME")
        click.echo(write_sweep_report(open_run_store(options), check_name(sweep, "--sweep"),
                                      Path(destination) if destination else None))
        return
    click.echo(rebuild_report(open_run_store(options), check_run_id(run_id)))


@cli.command()
@click.argument("grid", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", default=None,
              help="The sweep's name; its runs are <NAME>-<index>-<digest>. Default: GRID's file "
              "name without extension.")
def sweep(grid: str, name: str | None) -> None:
    """Run every combination of a grid of settings, one after another.

    GRID is a JSON or YAML file that maps setting variables to a list of values (a dimension of
    the grid) or to one value (the same in every run), e.g. {"BACKBONE": ["VGG16",
    "MobileNetV2"], "LEARNING_RATE": ["1e-3", "1e-4"], "EPOCHS": 3}. Combination i (in the
    file's order, the last list varying fastest) runs as RUN_ID <NAME>-<i>-<digest of its
    settings>; other settings come from the environment. Finished runs are skipped, so running
    it again continues a sweep, and after an edit of GRID trains the combinations that changed.
    """
    settings = load_settings(os.environ)
    setup_logging(settings.log_level, settings.log_format)
    run_sweep(grid, name, os.environ)


def entry(argv: Sequence[str] | None = None) -> int:
    """main() for a process of its own (the console script, entrypoint.py, python -m trainer):
    TensorFlow's C++ logs filtered off stderr unless LOG_LEVEL=DEBUG asks for them."""
    args = list(argv) if argv is not None else sys.argv[1:]
    debug = os.environ.get("LOG_LEVEL", "").upper() == "DEBUG" or any(
        arg.upper() in ("--LOG-LEVEL=DEBUG", "DEBUG") for arg in args)
    if not debug:
        filter_native_logs()
    return main(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the contract's exit code (the caller exits with it). Every non-zero
    exit leaves its one line where the platform shows it (`_record`)."""
    debug = os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"
    args = list(argv) if argv is not None else sys.argv[1:]
    try:
        result = cli.main(args=args, prog_name="trainer", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except click.exceptions.Exit as stop:
        if stop.exit_code:
            _record(f"trainer exited {stop.exit_code}")
        return stop.exit_code
    except click.ClickException as error:
        error.show()  # the usage and click's own message; then one line naming the command
        context = getattr(error, "ctx", None)  # None for some of the parser's errors
        command = context.command_path if context is not None else " ".join(
            ["trainer", *[name for name in args[:1] if name in cli.commands]])
        return _record(f"{command}: {error.format_message().rstrip('.')}; see {command} -h", 2)
    except (click.Abort, KeyboardInterrupt):
        return _record(SIGINT_LINE, SIGINT_EXIT)
    except TrainerError as error:
        return _fail(str(error), error.exit_code, debug)
    except Exception as error:  # noqa: BLE001 - every bug becomes exit 1 with one line
        return _fail(internal_error_line(error), INTERNAL_ERROR, debug)


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    line = redact(" ".join(message.split()))
    logger = logging.getLogger("trainer")
    if logger.handlers:  # the JSON log line for log tools; stderr gets the plain line below
        logger.error(line, extra={"exit_code": code})
    print(f"error: {line}", file=sys.stderr, flush=True)
    return _record(line, code)


def _record(message: str, code: int = INTERNAL_ERROR) -> int:
    record_failure(redact(" ".join(message.split())), os.environ)
    return code

"""The `trainer` command's options for settings: each the same flag, variable, help and
validation as the setting itself (trainer/options.py), so a command cannot drift from `train`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from trainer.logs import setup_logging
from trainer.settings import OPTIONS, default_of, shown_default
from trainer.store.stores import Store, open_store

OPTIONS_BY_FIELD = {option.field: option for option in OPTIONS}
F = TypeVar("F", bound=Callable[..., Any])


def flag_spelling(token: str) -> str:
    """`--learning_rate` as `--learning-rate`: Vertex AI passes tuned hyperparameters as
    `--name=value`, and Google's samples name them with underscores."""
    return token.replace("_", "-").lower()


def settings_options(command: F) -> F:
    """One flag per setting, e.g. --batch-size for BATCH_SIZE, resolved by load_settings."""
    for option in reversed(OPTIONS):
        command = click.option(
            option.flag, option.field, default=None, metavar="TEXT",
            help=f"{option.help} [env var: {option.variable}; "
                 f"default: {shown_default(option)}]",
        )(command)
    return command


def setting(field: str, default: Any = None, help: str | None = None) -> Callable[[F], F]:
    """A command's option for one setting: the same flag, variable and validation as in
    `trainer train`, and the same default unless `default` is given."""
    option = OPTIONS_BY_FIELD[field]
    fallback = default_of(option) if default is None else default

    def parse(context: click.Context, parameter: click.Parameter, text: str | None) -> Any:
        return fallback if text in (None, "") else option.parse(option.variable, text)

    return click.option(option.flag, field, envvar=option.variable, show_envvar=True,
                        default=None, callback=parse, metavar="TEXT",
                        help=f"{help or option.help} [default: "
                             f"{shown_default(option) if default is None else default}]")


def store_options(command: F) -> F:
    """Where runs are kept: --artifact-uri, and the S3 endpoint and addressing style."""
    for decorate in reversed((setting("artifact_uri"), setting("s3_endpoint_url"),
                              setting("s3_addressing_style"), setting("log_level", "WARNING"))):
        command = decorate(command)
    return command


def open_run_store(options: dict[str, Any]) -> Store:
    setup_logging(options.pop("log_level"))
    return open_store(options.pop("artifact_uri"), options.pop("s3_endpoint_url"),
                      options.pop("s3_addressing_style"))

"""Errors that carry the contract's exit codes; only the entrypoints turn them into an exit."""

from __future__ import annotations

import socket
import urllib.error


class TrainerError(Exception):
    """A failure the user can act on: `str(error)` is the one line to print."""

    exit_code = 1


class ConfigError(TrainerError):
    """Invalid configuration: retrying cannot help."""

    exit_code = 2


class DataError(TrainerError):
    """The dataset (or a weights file) is missing, unreadable, empty or unusable."""

    exit_code = 3


class StorageError(TrainerError):
    """Storage refused the request: no such bucket, access denied, invalid credentials."""

    exit_code = 4


class TransientError(TrainerError):
    """Storage or network unreachable after retries: a retry later may succeed."""

    exit_code = 75


class UploadsUnfinished(TransientError):
    """Storage stayed unreachable for UPLOAD_TIMEOUT: the files are kept locally."""


class ExportFailed(TrainerError):
    """A serving export that EXPORT asked for failed (its converter or its check): the run's
    other artifacts are stored, the broken export is not. Exit 1, as for a bug: every backbone
    that builds is meant to export to every format; a retry runs the export again."""

    exit_code = 1


class Terminated(TrainerError):
    """Stopped by SIGTERM after saving the state a restart resumes from."""

    exit_code = 143


INTERNAL_ERROR = 1
SIGINT_EXIT = 130  # Ctrl-C, as a shell reports it
SIGINT_LINE = "interrupted (SIGINT); run the same command again to resume"


def internal_error_line(error: BaseException) -> str:
    """The one line of a bug (exit 1)."""
    return (f"internal error: {type(error).__name__}: {first_line(error)}; rerun with "
            "LOG_LEVEL=DEBUG for the traceback and report it")


def first_line(error: BaseException) -> str:
    """The cause to quote in a failure line: the error's first non-empty line, whole (a cut
    at N characters leaves "Name or service not"), else its class name."""
    for line in str(error).splitlines():
        if line.strip():
            return " ".join(line.split())
    return type(error).__name__


def is_network_outage(error: BaseException) -> bool:
    """Whether a download failed for the network's sake (a name not resolved, a refused or
    reset connection, a timeout, a server error): worth retrying later, unlike a missing file
    (HTTP 404, no such local path) or a checksum that does not match."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, urllib.error.HTTPError):
            return current.code >= 500 or current.code in (408, 429)
        if isinstance(current, urllib.error.URLError):
            return not isinstance(current.reason, (FileNotFoundError, PermissionError))
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        current = current.__cause__ or current.__context__
    return False

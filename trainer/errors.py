"""Errors that carry the contract's exit codes; only the entrypoints turn them into an exit."""

from __future__ import annotations


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


class Terminated(TrainerError):
    """Stopped by SIGTERM after saving the state a restart resumes from."""

    exit_code = 143


INTERNAL_ERROR = 1

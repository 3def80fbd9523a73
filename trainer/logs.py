"""Logging: JSON lines (python-json-logger) off a terminal, readable text on one.

Fields passed as `extra=` (run_id, epoch, metrics) become JSON keys, or `key=value` in text.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

from pythonjsonlogger.json import JsonFormatter

from trainer.redaction import redact

LOGGER_NAME = "trainer"
_STANDARD_FIELDS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD_FIELDS}
        extras.pop("run_id", None)
        if extras:
            text += "  " + " ".join(f"{k}={_short(v)}" for k, v in extras.items())
        return text


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Redacting(logging.Filter):
    """Credentials that a URL or a header carries never reach a log line (trainer.redaction)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = None
        for name, value in vars(record).items():
            if name not in _STANDARD_FIELDS and isinstance(value, str):
                setattr(record, name, redact(value))
        return True


def setup_logging(level: str = "INFO", log_format: str | None = None) -> logging.Logger:
    """Configure the `trainer` logger on stdout and quiet TensorFlow unless DEBUG."""
    if log_format is None:
        log_format = "text" if sys.stdout.isatty() else "json"
    handler = logging.StreamHandler(sys.stdout)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            timestamp=False,
        ))
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(Redacting())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    quiet_libraries(debug=level == "DEBUG")
    return logger


def quiet_libraries(debug: bool) -> None:
    """TensorFlow's C++ chatter, absl and Keras warnings, unless LOG_LEVEL=DEBUG."""
    if debug:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save\\(\\)`.*")
    warnings.filterwarnings("ignore", message=".*legacy.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="keras")
    for name in ("tensorflow", "absl", "h5py", "matplotlib", "botocore", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)

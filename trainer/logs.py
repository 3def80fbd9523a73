"""Logging: JSON lines (python-json-logger) off a terminal, readable text on one.

Fields passed as `extra=` (run_id, epoch, metrics) become JSON keys, or `key=value` in text.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

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


class TerminalHandler(logging.StreamHandler):
    """Text lines on a terminal, with a progress bar (trainer.ticker) on the line below them:
    redrawn in place with a carriage return, cleared before each log line and drawn after it."""

    bar = ""

    def show(self, bar: str) -> None:
        """Draw `bar` (cut to the terminal's width) in place of the last; "" clears it."""
        with self.lock:  # type: ignore[union-attr] # made by Handler.__init__
            self.bar = bar[:shutil.get_terminal_size().columns - 1]
            self.stream.write("\r\x1b[K" + self.bar)
            self.flush()

    def emit(self, record: logging.LogRecord) -> None:
        if self.bar:
            self.stream.write("\r\x1b[K")
        super().emit(record)
        if self.bar:
            self.stream.write(self.bar)
            self.flush()


def terminal_bar() -> TerminalHandler | None:
    """The handler that draws progress bars, when the log is text on a terminal."""
    return next((h for h in get_logger().handlers if isinstance(h, TerminalHandler)), None)


def setup_logging(level: str = "INFO", log_format: str | None = None) -> logging.Logger:
    """Configure the `trainer` logger on stdout and quiet TensorFlow unless DEBUG; text on a
    terminal draws progress bars as well."""
    if log_format is None:
        log_format = "text" if sys.stdout.isatty() else "json"
    terminal = log_format == "text" and sys.stdout.isatty()
    handler = TerminalHandler(sys.stdout) if terminal else logging.StreamHandler(sys.stdout)
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


DOWNLOAD_PROGRESS_SECONDS = 10.0


class _DownloadProgress:
    """urlretrieve's report hook: a log line when a download starts, every
    DOWNLOAD_PROGRESS_SECONDS with the bytes and percent done, and when it ends."""

    def __init__(self, what: str, url: str) -> None:
        self.what, self.url = what, url
        self.started = self.reported = time.monotonic()
        get_logger().info(f"downloading {what}", extra={"url": url})

    def __call__(self, blocks: int, block_size: int, total: int) -> None:
        done = blocks * block_size if total <= 0 else min(blocks * block_size, total)
        now = time.monotonic()
        if now - self.reported < DOWNLOAD_PROGRESS_SECONDS and not 0 < total <= done:
            return
        self.reported = now
        extra: dict[str, float | int | str] = {"url": self.url, "bytes_done": done}
        text = f"{done / 1e6:.1f} MB"
        if total > 0:
            extra.update(bytes_total=total, percent=round(100 * done / total, 1))
            text += f" of {total / 1e6:.1f} MB ({100 * done / total:.0f} %)"
        verb = "downloaded" if 0 < total <= done else "downloading"
        get_logger().info(f"{verb} {self.what}: {text}", extra=extra)


@contextmanager
def downloads_logged(what: str) -> Iterator[None]:
    """Keras' downloads (get_file: the built-in datasets, ImageNet weights) report through the
    trainer logger: its "Downloading data from" line and progress bar, printed on stdout,
    would break the one-JSON-object-per-line log."""
    import keras  # starts TensorFlow: only around a download
    from keras.src.utils import file_utils

    keras.config.disable_interactive_logging()  # its messages go to absl's logger, quieted
    retrieve = file_utils.urlretrieve

    def logged(url: str, filename: str, reporthook: object = None) -> object:
        return retrieve(url, filename, _DownloadProgress(what, url))

    file_utils.urlretrieve = logged
    try:
        yield
    finally:
        file_utils.urlretrieve = retrieve


# TensorFlow's C++ INFO and WARNING lines as absl writes them (I1205 12:00:00.123456  123
# file.cc:12] ...; before absl::InitializeLog the time reads 00:00:<epoch seconds>), the notice
# absl prints before its first one, and cpu_feature_guard's second line. Errors (E, F) stay.
NATIVE_LOG_LINE = re.compile(
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] "
    rb"|\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] "
    rb"|To enable the following instructions: .* rebuild TensorFlow")


def filter_native_logs() -> None:
    """Take TensorFlow's C++ chatter off stderr, for this process and the ones it starts.

    TensorFlow 2.21 logs through absl, which writes every line to stderr until
    absl::InitializeLog is called (TensorFlow never calls it), whatever TF_CPP_MIN_LOG_LEVEL
    says (abseil-cpp#1718). So stderr's file descriptor, where C++ writes, becomes a pipe that
    a thread reads, passing on every line but those. For the entry points only (an entry
    module, the console script), never inside a process that is not the job's own."""
    read_end, write_end = os.pipe()
    stderr = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with open(read_end, "rb") as source, open(stderr, "wb", closefd=False) as target:
            for line in source:
                if not NATIVE_LOG_LINE.match(line):
                    target.write(line)
                    target.flush()

    thread = threading.Thread(target=pump, name="stderr-filter", daemon=True)
    thread.start()

    def restore() -> None:  # the last lines through, before the process ends
        sys.stderr.flush()
        os.dup2(stderr, 2)  # closes this process's write end of the pipe
        thread.join(timeout=5)

    atexit.register(restore)

"""Why a stream of shards stopped. A stream runs inside tf.data, whose errors lose their type
(and whose decoding of broken images skips failing elements): so a reader records why it stopped
(trainer.data.streaming), and the job raises that, with its exit code, instead of the error
TensorFlow reports.

    record_failure(error)                   # in the reader, as its stream ends
    with stream_failures_raised():          # around training (trainer.job) and evaluation
        ...

No TensorFlow here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_failures: list[BaseException] = []


def record_failure(error: BaseException) -> None:
    _failures.append(error)  # list.append is atomic under the GIL


def failure() -> BaseException | None:
    return next(iter(_failures), None)


@contextlib.contextmanager
def stream_failures_raised() -> Iterator[None]:
    """Any error while shards were streamed is replaced by the reason a stream stopped (e.g.
    TransientError: storage unreachable past UPLOAD_TIMEOUT), when one did."""
    try:
        yield
    except Exception as error:
        found = failure()
        _failures.clear()
        if found is None or found is error:
            raise
        raise found from error

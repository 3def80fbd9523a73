"""How a run stopped unfinished: `<RUN_ID>/failure.json`, written by the chief on every non-zero
exit the store can still take (its status, exit code and the one line the job prints), read by
`trainer runs`, `trainer runs --sweep` and `trainer report --sweep`, and removed when the run
starts again. The pod's termination message says the same, but a sweep's runs are compared from
the store, after their pods are gone; and a run that only stopped must not list as running.

The status never says more than the exit code means (see the Job's podFailurePolicy):
  failed       2, 3, 4 (no retry helps: the Job fails at once) and a failed requested export
  stopped      143: SIGTERM, the state saved; the run resumes when it is started again
  interrupted  75 (storage or network unreachable), 1 (a bug), 130 (Ctrl-C): the Job retries
               it (up to its backoffLimit) and it resumes from its newest saved state
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from trainer.errors import (
    INTERNAL_ERROR,
    SIGINT_EXIT,
    SIGINT_LINE,
    ExportFailed,
    Terminated,
    TrainerError,
    internal_error_line,
)
from trainer.logs import get_logger
from trainer.redaction import redact
from trainer.store.stores import Store, key_in

FAILURE_FILE = "failure.json"
# The contract's exit codes that retrying cannot help, on which the Job's podFailurePolicy fails
# the run (a sweep's index) at once.
UNRECOVERABLE = frozenset({2, 3, 4})


def outcome_of(error: BaseException) -> tuple[str, int, str]:
    """(status, exit code, line) of what ended the run."""
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", SIGINT_EXIT, SIGINT_LINE
    if not isinstance(error, TrainerError):
        return "interrupted", INTERNAL_ERROR, internal_error_line(error)
    code = error.exit_code
    if code in UNRECOVERABLE or isinstance(error, ExportFailed):
        status = "failed"
    else:
        status = "stopped" if isinstance(error, Terminated) else "interrupted"
    return status, code, str(error)


def record_failure(store: Store, run_key: str, error: BaseException) -> None:
    """Store how the run ended. Best effort, with few retries (a 75 is often storage being
    down; a 143 is within its grace period): a store that refused the run or is unreachable
    takes this no better, and the error itself is what the job reports (also in the pod's
    termination message)."""
    status, code, line = outcome_of(error)
    content = {"status": status, "exit_code": code, "error": redact(" ".join(line.split()))}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / FAILURE_FILE
        path.write_text(json.dumps(content, indent=2) + "\n")
        try:
            store.put_file(key_in(run_key, FAILURE_FILE), path, quick=True)
        except (TrainerError, OSError) as unrecorded:
            get_logger().debug(f"the run's outcome could not be recorded in the store: "
                               f"{unrecorded}")


def clear_failure(store: Store, run_key: str) -> None:
    """The run starts again: an earlier attempt's outcome no longer says how it stands."""
    store.delete(key_in(run_key, FAILURE_FILE))


def read_failure(store: Store, run_key: str) -> dict[str, Any] | None:
    """The recorded outcome ({"status": ..., "exit_code": ..., "error": ...}), or None. A
    record from before statuses other than failed has "failed" or its exit code's status."""
    raw = store.read_bytes(key_in(run_key, FAILURE_FILE))
    try:
        failure = None if raw is None else json.loads(raw)
    except ValueError:
        return None
    if not isinstance(failure, dict) or "exit_code" not in failure:
        return None
    return {"status": "failed", **failure}


def run_status(failure: dict[str, Any] | None) -> str:
    """What `trainer runs` says of an unfinished run: its recorded outcome, else running."""
    return str(failure.get("status", "failed")) if failure else "running"


def reason_line(failure: dict[str, Any]) -> str:
    return f"exit {failure['exit_code']}: {failure.get('error', '')}"

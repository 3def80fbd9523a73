"""Why a run cannot finish: `<RUN_ID>/failure.json`, written by the chief when the job fails
with an error that no retry helps (its exit code and the one line it prints), read by
`trainer runs` and `trainer runs --sweep`, and removed when the run starts again. The pod's
termination message says the same, but a sweep's runs are compared from the store, after their
pods are gone (a sweep's combination that cannot work fails alone and the others go on).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from trainer.errors import TrainerError
from trainer.logs import get_logger
from trainer.redaction import redact
from trainer.store.stores import Store, key_in

FAILURE_FILE = "failure.json"
# The contract's exit codes that retrying cannot help, on which the Job's podFailurePolicy fails
# the run (a sweep's index) at once: a record of one stays true until the run is started again.
# 75 and 1 are retried, so a record of them would say "failed" of a run that goes on.
UNRECOVERABLE = frozenset({2, 3, 4})


def record_failure(store: Store, run_key: str, error: TrainerError) -> None:
    """Store the error's exit code and line. Best effort: a store that refused the run or is
    unreachable takes this no better, and the error itself is what the job reports."""
    content = {"status": "failed", "exit_code": error.exit_code,
               "error": redact(" ".join(str(error).split()))}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / FAILURE_FILE
        path.write_text(json.dumps(content, indent=2) + "\n")
        try:
            store.put_file(key_in(run_key, FAILURE_FILE), path)
        except (TrainerError, OSError) as unrecorded:
            get_logger().debug(f"the failure could not be recorded in the store: {unrecorded}")


def clear_failure(store: Store, run_key: str) -> None:
    """The run starts again: an earlier attempt's failure no longer says how it stands."""
    store.delete(key_in(run_key, FAILURE_FILE))


def read_failure(store: Store, run_key: str) -> dict[str, Any] | None:
    """The recorded failure ({"exit_code": ..., "error": ...}), or None."""
    raw = store.read_bytes(key_in(run_key, FAILURE_FILE))
    try:
        failure = None if raw is None else json.loads(raw)
    except ValueError:
        return None
    return failure if isinstance(failure, dict) and "exit_code" in failure else None

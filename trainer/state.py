"""Resume state: what a restarted run needs, under the run's `state/`.

Published by write-then-point: each save writes new files (a tf.train.Checkpoint of the model and
optimizer, and a JSON of the loop's own state), then replaces the small pointer `state/LATEST.json`,
which lists the newest states, the sha256 of each of their files and the fingerprint of the
settings that made them. A crash mid-save leaves the pointer on the previous state; a state whose
files do not match falls back to the one before.

The invariant, kept by construction: from the first stored state on, the store always holds a
complete state that the stored pointer lists. A state's files are uploaded before the pointer
that lists them (the uploader keeps submission order, and a pointer submitted again moves behind
the files submitted before it), and they are deleted only once no upload is pending, that is
after the newest pointer, which no longer lists them, is stored (trainer/store/uploader.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from trainer.errors import ConfigError
from trainer.logs import get_logger
from trainer.settings import Settings
from trainer.store.artifacts import HistoryRow, RunArtifacts
from trainer.store.files import sha256_of, write_atomic
from trainer.store.keys import local_path
from trainer.store.stores import Store, key_in

if TYPE_CHECKING:
    import tensorflow as tf

POINTER = "state/LATEST.json"
KEEP_STATES = 2
# best.h5 as the resume state carries it where a platform keeps the state apart from the run.
BEST_IN_STATE = "state/best.h5"


class Totals(NamedTuple):
    """Sums over the steps of an epoch so far: what its loss and accuracy are computed from,
    and what a run stopped mid-epoch keeps in its state."""

    loss_sum: float = 0.0
    correct: float = 0.0
    images: float = 0.0
    seconds: float = 0.0

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.images, 1.0)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.images, 1.0)


@dataclass(frozen=True)
class LoopState:
    """Where the loop stands: `epoch` epochs done, plus `step` steps of the next one."""

    epoch: int = 0
    step: int = 0
    partial: Totals = Totals()
    best_value: float | None = None
    best_epoch: int = 0
    history: tuple[HistoryRow, ...] = field(default_factory=tuple)
    # best.h5's sha256 as stored, when this state's own weights are not the best epoch's.
    best_sha256: str | None = None
    tracking_run_id: str | None = None  # the MLflow run that a restart goes on logging to

    @property
    def name(self) -> str:
        return f"{self.epoch:05d}-{self.step:07d}"

    def mid_epoch(self, step: int, totals: Totals) -> LoopState:
        """Stopped after `step` steps of the next epoch, with their sums."""
        return dataclasses.replace(self, step=step, partial=totals)

    def after_epoch(self, row: HistoryRow, monitor: str, mode: str) -> tuple[LoopState, bool]:
        """The state once `row`'s epoch is done, and whether its `monitor` value is the best
        so far (`mode` max or min). A value that is not finite is never the best."""
        value = float(row[monitor])  # type: ignore[literal-required]
        best = self.best_value
        improved = math.isfinite(value) and (
            best is None or (value > best if mode == "max" else value < best))
        state = dataclasses.replace(self, epoch=row["epoch"], step=0, partial=Totals(),
                                    best_value=value if improved else self.best_value,
                                    best_epoch=row["epoch"] if improved else self.best_epoch,
                                    history=(*self.history, row))
        return state, improved

    @property
    def holds_the_best_weights(self) -> bool:
        """Whether this state's model is the best epoch's (then best.h5 is made from it)."""
        return self.best_epoch == self.epoch and self.step == 0 and self.epoch > 0

    def to_json(self) -> bytes:
        return json.dumps(dataclasses.asdict(self)).encode()

    @classmethod
    def from_json(cls, raw: str | bytes) -> LoopState:
        loaded = json.loads(raw)
        known = {name: loaded[name] for name in cls.__dataclass_fields__ if name in loaded}
        return cls(**{**known, "partial": Totals(*loaded["partial"]),
                      "history": tuple(loaded["history"])})


def _files(name: str) -> list[str]:
    return [f"state/ckpt-{name}.index", f"state/ckpt-{name}.data-00000-of-00001",
            f"state/loop-{name}.json"]


def save_state(artifacts: RunArtifacts, checkpoint: tf.train.Checkpoint, state: LoopState,
               fingerprint: dict[str, Any]) -> None:
    """Write the new state's files, then point at them; drop states no longer pointed at."""
    name = state.name
    checkpoint.write(str(artifacts.path(f"state/ckpt-{name}")))
    checkpoint_files = {f: sha256_of(artifacts.path(f)) for f in _files(name)[:2]}
    # The loop's file vouches for the checkpoint's: a state can be found without the pointer.
    loop = {**json.loads(state.to_json()), "checkpoint_sha256": checkpoint_files,
            "fingerprint": fingerprint}
    write_atomic(artifacts.path(f"state/loop-{name}.json"), json.dumps(loop).encode())
    entry = {"name": name, "epoch": state.epoch, "step": state.step, "fingerprint": fingerprint,
             "files": {**checkpoint_files,
                       _files(name)[2]: sha256_of(artifacts.path(_files(name)[2]))}}
    for file in _files(name):
        artifacts.publish(file)
    # The pointer as this run last wrote or restored it: no round trip to the store, which
    # may be unreachable while training goes on.
    previous = _local_pointer(artifacts.path(POINTER))
    kept = [entry] + [s for s in previous if s["name"] != name][: KEEP_STATES - 1]
    write_atomic(artifacts.path(POINTER), json.dumps({"states": kept}, indent=2).encode())
    artifacts.publish(POINTER)
    for dropped in previous[KEEP_STATES - 1:]:
        if dropped["name"] != name:
            for file in dropped["files"]:
                artifacts.remove(file)


def _local_pointer(path: Path) -> list[dict[str, Any]]:
    try:
        return list(json.loads(path.read_text())["states"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _read_pointer(store: Store, run_id: str) -> list[dict[str, Any]]:
    raw = store.read_bytes(key_in(run_id, POINTER))
    try:
        return list(json.loads(raw)["states"]) if raw else []
    except (ValueError, KeyError, TypeError):
        get_logger().warning(f"{POINTER} is unreadable; looking for the states it would list",
                             extra={"run_id": run_id})
        return _states_without_pointer(store, run_id)


def _states_without_pointer(store: Store, run_id: str) -> list[dict[str, Any]]:
    """Pointer entries rebuilt from the states' own files, newest first: each loop file lists
    its checkpoint files' sha256 (states saved before that are skipped)."""
    entries = []
    for key in sorted(store.list_keys(key_in(run_id, "state/loop-")), reverse=True):
        raw = store.read_bytes(key)
        try:
            loaded = json.loads(raw or b"")
            name = key.rsplit("/loop-", 1)[1].removesuffix(".json")
            files = {**loaded["checkpoint_sha256"],
                     _files(name)[2]: hashlib.sha256(raw or b"").hexdigest()}
            entries.append({"name": name, "epoch": loaded["epoch"], "step": loaded["step"],
                            "fingerprint": loaded.get("fingerprint", {}), "files": files})
        except (ValueError, KeyError, TypeError, IndexError):
            continue
    return entries


def restore_state(store: Store, run_id: str, local_dir: Path, checkpoint: tf.train.Checkpoint,
                  fingerprint: dict[str, Any]) -> LoopState | None:
    """The newest state whose files are all intact, restored into `checkpoint`; None if none.
    ConfigError (exit 2) if the states were made with other settings that fix the model or the
    schedule: restoring them would fail, or silently mix two runs."""
    log = get_logger()
    states = _read_pointer(store, run_id)
    if states:
        check_fingerprint(run_id, states[0].get("fingerprint", {}), fingerprint)
    for position, entry in enumerate(states):
        if not re.fullmatch(r"\d{5}-\d{7}", str(entry.get("name"))):
            log.warning(f"resume state {entry.get('name')!r} is not a state's name; skipped")
            continue
        problem = _fetch_verified(store, run_id, local_dir, entry)
        if problem is None:
            pointer = local_dir / POINTER
            if store.local_run_dir(run_id) is None:
                write_atomic(pointer, json.dumps({"states": states[position:]}).encode())
            checkpoint.read(str(local_dir / f"state/ckpt-{entry['name']}")).expect_partial()
            return LoopState.from_json((local_dir / f"state/loop-{entry['name']}.json")
                                       .read_bytes())
        log.warning(f"resume state {entry['name']} is unusable ({problem}); falling back to "
                    "the previous state", extra={"run_id": run_id})
    return None


def _fetch_verified(store: Store, run_id: str, local_dir: Path,
                    entry: dict[str, Any]) -> str | None:
    """Bring a state's files next to the run (a no-op for a local store), checking sha256."""
    for file, digest in entry["files"].items():
        target = local_path(local_dir, file)  # a key read from the store is input
        if store.local_run_dir(run_id) is None and not (
                target.is_file() and sha256_of(target) == digest):
            target.parent.mkdir(parents=True, exist_ok=True)
            if not store.get_file(key_in(run_id, file), target):
                return f"{file} is missing"
        if not target.is_file():
            return f"{file} is missing"
        if sha256_of(target) != digest:
            return f"{file} does not match its sha256"
    return None


def keep_best(state_files: RunArtifacts, best: Path) -> None:
    """A copy of best.h5 with the resume state, where a platform keeps the state apart from the
    run (SageMaker's checkpoints/, Vertex AI's AIP_CHECKPOINT_DIR): after a spot restart only
    the state is back, and the best epoch's model must still be the one shipped."""
    state_files.store.put_file(state_files.key(BEST_IN_STATE), best)


def restore_best(state_files: RunArtifacts, artifacts: RunArtifacts, sha256: str | None) -> bool:
    """best.h5 again from the state's copy, if it is the one the state recorded (any, for a
    state saved before digests were kept), published with the run; False if it is not."""
    target = artifacts.path("best.h5")
    if not state_files.store.get_file(state_files.key(BEST_IN_STATE), target):
        return False
    if sha256 is not None and sha256_of(target) != sha256:
        target.unlink(missing_ok=True)
        return False
    artifacts.publish("best.h5")
    return True


def fingerprint_of(settings: Settings, image_size: int, classes: int,
                   global_batch: int) -> dict[str, Any]:
    """What fixes the model's variables and the schedule: a state made with other values
    cannot be resumed by this run."""
    return {"backbone": settings.backbone, "pooling": settings.pooling, "image_size": image_size,
            "classes": classes, "global_batch": global_batch, "epochs": settings.epochs,
            "fine_tune_epochs": settings.fine_tune_epochs}


def check_fingerprint(run_id: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    differing = [f"{name} {saved[name]} -> {current[name]}" for name in current
                 if name in saved and saved[name] != current[name]]
    if differing:
        raise ConfigError(
            f"RUN_ID={run_id} has saved state made with other settings ({'; '.join(differing)}); "
            "run with those settings to resume it, or give a new RUN_ID for a new run")

"""The training job: settings in, a finished run in the store out.

    python entrypoint.py            # settings from the environment
    trainer train --epochs 3 ...    # the same job with flags

A run whose RUN_ID has resume state continues from it; a finished run exits at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.backbones import MIN_IMAGE_SIZE
from trainer.errors import (
    ConfigError,
    DataError,
    StorageError,
    Terminated,
    TrainerError,
    TransientError,
    UploadsUnfinished,
)
from trainer.logs import get_logger
from trainer.settings import Settings
from trainer.storage import Store, open_store

PROGRESS_INTERVAL_SECONDS = 30.0
# Kubernetes' default grace period is 30 s: leave time to save after the current steps.
TERMINATION_UPLOAD_SECONDS = 15.0


@dataclass
class Training:
    """What the epoch loop works with, built once per run."""

    settings: Settings
    loop: Any
    checkpoint: Any
    dataset: Any
    image_size: int
    global_batch: int
    steps: int
    preprocessor: Any
    metadata: dict[str, Any]
    artifacts: Any  # None on workers other than the chief
    cluster: Any  # distribution.Cluster: this worker among the others
    scalars: Any  # TensorBoard event files; None on workers other than the chief


def run_job(settings: Settings, environ: dict[str, str] | None = None) -> None:
    """Train (or resume), keep the best epoch, and finish the run with its manifest."""
    log = get_logger()
    environ = dict(os.environ if environ is None else environ)
    store = open_store(settings.artifact_uri, settings.s3_endpoint_url,
                       settings.s3_addressing_style)
    store.check_writable()
    if _finished(store, settings.run_id):
        log.info("run already finished; nothing to do", extra={"run_id": settings.run_id})
        return
    log.info("starting run", extra={"run_id": settings.run_id, "artifact_uri": store.uri})
    training = _prepare(settings, store, environ)
    # After the strategy: MultiWorkerMirroredStrategy installs a SIGTERM handler of its own.
    stop = _stop_on_sigterm()

    from trainer.state import LoopState, restore_state

    local_dir = store.local_run_dir(settings.run_id) or _work_run_dir(settings)
    state = restore_state(store, settings.run_id, local_dir, training.checkpoint)
    if state is None:
        state = LoopState()
    else:
        log.info(f"resuming after epoch {state.epoch}" + (f", step {state.step}" if state.step
                 else ""), extra={"run_id": settings.run_id, "resume_epoch": state.epoch + 1,
                                  "resume_step": state.step})
        _republish(training, state)
    try:
        with _peer_loss_is_transient(training.cluster):
            state = _train_epochs(training, state, stop)
        _finish(training, state, store, stop)
    except (Terminated, StorageError, UploadsUnfinished):
        raise  # the uploads ended the run, or had their time already
    except Exception:
        _upload_what_was_saved(training, stop)
        raise


def _upload_what_was_saved(training: Training, stop: threading.Event) -> None:
    """Whatever else ends the run (a lost peer, a bug, in training or in the evaluation), the
    state saved before it may still be uploading: let it finish, so a restart resumes from it."""
    if training.artifacts:
        try:
            training.artifacts.finish_uploads(training.settings.upload_timeout, stop,
                                              TERMINATION_UPLOAD_SECONDS)
        except TrainerError as error:
            get_logger().warning(f"the saved state could not all be uploaded: {error}")


@contextlib.contextmanager
def _peer_loss_is_transient(cluster: Any) -> Iterator[None]:
    """A worker lost mid-run (its pod killed, its node gone) breaks the collectives of every
    other: that is exit 75, retried, and the restarted workers resume from the saved state."""
    if not cluster.is_multi_worker:
        yield
        return
    import tensorflow as tf

    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.DeadlineExceededError) as error:
        tasks = sorted({int(i) for i in re.findall(r"/job:worker/replica:0/task:(\d+)",
                                                   str(error)) if int(i) != cluster.index})
        lost = ", ".join(cluster.workers[i] for i in tasks if i < len(cluster.workers))
        raise TransientError(
            f"lost contact with worker(s) {lost or 'of this run'} during training "
            f"({type(error).__name__}); run the Job's workers again with the same RUN_ID to "
            "resume from the last saved state"
        ) from error


def _prepare(settings: Settings, store: Store, environ: dict[str, str]) -> Training:
    from trainer.data import load_dataset

    # Data first: a missing or broken dataset fails before TensorFlow starts.
    dataset = load_dataset(_local(settings, settings.dataset, "datasets"),
                           validation_split=settings.validation_split,
                           seed=settings.seed, mirror=settings.dataset_mirror)

    from trainer.distribution import make_strategy

    strategy, cluster = make_strategy(settings.cpu_replicas, environ, settings.peer_timeout)
    replicas = strategy.num_replicas_in_sync
    global_batch = settings.batch_size * replicas
    image_size = settings.image_size or max(dataset.native_size, MIN_IMAGE_SIZE[settings.backbone])
    steps = len(dataset.train) // global_batch
    if steps == 0:
        raise ConfigError(
            f"BATCH_SIZE={settings.batch_size} x {replicas} replica(s) is more than the "
            f"{len(dataset.train)} training images; lower BATCH_SIZE"
        )

    import keras
    import tensorflow as tf

    from trainer.pipeline import cache_decoded, memory_budget

    # Decoded once, not every epoch, where the images fit in a quarter of the memory.
    budget = memory_budget()
    cached = dataclasses.replace(dataset, train=cache_decoded(dataset.train, image_size, budget),
                                 val=cache_decoded(dataset.val, image_size, budget))
    if cached.train.in_memory and not dataset.train.in_memory:
        get_logger().info("decoded images kept in memory", extra={
            "run_id": settings.run_id, "images": len(cached.train) + len(cached.val)})
    dataset = cached

    from trainer.backbones import preprocess_function, preprocessing_name
    from trainer.distribution import resolve_precision, resolve_xla
    from trainer.loop import Loop
    from trainer.pipeline import batch_preprocessor
    from trainer.recipe import PhasedSchedule

    keras.utils.set_random_seed(settings.seed)
    policy = resolve_precision(settings.precision)
    keras.mixed_precision.set_global_policy(policy)
    with strategy.scope():
        model = _build(settings, image_size, len(dataset.class_names))
        optimizer = keras.optimizers.Adam(PhasedSchedule(settings, steps))
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Slots made now, in the strategy's scope, for every variable that any phase trains:
        # created lazily inside the distributed tf.function they would be per-replica
        # placeholders that MirroredStrategy cannot feed.
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)
    metadata = {
        "class_names": list(dataset.class_names),
        "image_size": image_size,
        "backbone": settings.backbone,
        "preprocessing": preprocessing_name(settings.backbone),
    }
    xla = resolve_xla(settings.xla, strategy)
    recipe = {"precision": policy, "xla": xla, "augmentations": list(settings.augmentations)}
    get_logger().info("training setup", extra={"run_id": settings.run_id, "replicas": replicas,
                                               "global_batch_size": global_batch, **recipe})
    artifacts = _run_artifacts(store, settings) if cluster.is_chief else None
    if artifacts:
        artifacts.write_json("config.json",
                             _config(settings, {**metadata, **recipe}, replicas, dataset))
        _save_samples(artifacts, dataset)
    preprocessor = batch_preprocessor(image_size, preprocess_function(settings.backbone))
    loop = Loop(strategy, model, optimizer, global_batch, settings.steps_per_call,
                settings.label_smoothing, xla)
    scalars = None
    if artifacts:
        from trainer.scalars import ScalarLog

        scalars = ScalarLog(artifacts)
    return Training(settings, loop, checkpoint, dataset, image_size, global_batch, steps,
                    preprocessor, metadata, artifacts, cluster, scalars)


def _train_epochs(training: Training, state: Any, stop: threading.Event) -> Any:
    """Epochs after `state` to the last; returns the final state."""
    from trainer.pipeline import evaluation_input, padded_length, training_input
    from trainer.recipe import phase_of, set_trainable, stop_early
    from trainer.state import LoopState, save_state

    log = get_logger()
    settings, loop, artifacts = training.settings, training.loop, training.artifacts
    evaluation_fn = evaluation_input(training.dataset.val, training.image_size,
                                     training.preprocessor, training.global_batch)
    evaluation_steps = padded_length(len(training.dataset.val), training.global_batch)
    evaluation_steps //= training.global_batch
    phase = None
    first_epoch = state.epoch + 1
    stop_requested = _stop_requested(training, stop)
    for epoch in range(first_epoch, settings.total_epochs + 1):
        if stop_early(settings, state.epoch, state.best_epoch):
            log.info(f"stopping early: {settings.monitor} has not improved for "
                     f"{settings.early_stopping_patience} epoch(s)",
                     extra={"run_id": settings.run_id, "best_epoch": state.best_epoch})
            break
        if phase != phase_of(settings, epoch):
            phase = phase_of(settings, epoch)
            trained = set_trainable(loop.model, phase, settings.fine_tune_layers)
            loop.retrace()
            log.info(f"phase {phase.name}: epochs {phase.first_epoch}-{phase.last_epoch}",
                     extra={"run_id": settings.run_id, "trained_backbone_layers": len(trained),
                            "learning_rate": phase.learning_rate})
        training_fn = training_input(training.dataset.train, training.image_size,
                                     training.preprocessor, training.global_batch,
                                     settings.seed, epoch, skip_steps=state.step,
                                     augment=settings.augmentations)
        metrics = loop.train_epoch(training_fn, training.steps,
                                   _progress_logger(epoch, first=epoch == first_epoch),
                                   stop_requested, start_step=state.step,
                                   partial=tuple(state.partial))
        if not metrics.completed:
            state.step, state.partial = metrics.steps_done, list(metrics.totals)
            _save_and_stop(training, state, f"epoch {epoch}, step {metrics.steps_done}")
        val_loss, val_accuracy = loop.evaluate(evaluation_fn, evaluation_steps)
        row = {
            "epoch": epoch, "loss": metrics.loss, "accuracy": metrics.accuracy,
            "val_loss": val_loss, "val_accuracy": val_accuracy,
            "learning_rate": loop.learning_rate, "seconds": round(metrics.seconds, 3),
            "images_per_second": round(metrics.images / max(metrics.seconds, 1e-9), 1),
        }
        value = row[settings.monitor]
        improved = state.best_value is None or (
            value > state.best_value if settings.monitor_mode == "max" else value < state.best_value
        )
        state = LoopState(epoch=epoch, best_value=value if improved else state.best_value,
                          best_epoch=epoch if improved else state.best_epoch,
                          history=[*state.history, row])
        log.info(f"epoch {epoch}/{settings.total_epochs}", extra={
            "run_id": settings.run_id, **row, "best_epoch": state.best_epoch})
        if artifacts:
            artifacts.raise_if_refused()
            # The state first: it is what a restart trusts; best.h5 and history follow from it.
            save_state(artifacts, training.checkpoint, state)
            if improved:
                _save_best(training, epoch, value)
            _save_curves(artifacts, state, settings.monitor)
            training.scalars.write(row)
            # The history last: it is what readers take as "this epoch is done".
            artifacts.write_history(state.history)
        if epoch < settings.total_epochs and stop_requested():
            _save_and_stop(training, state, f"the end of epoch {epoch}", saved=True)
    return state


def _stop_requested(training: Training, stop: threading.Event) -> Any:
    """Whether to stop now. Across workers it is asked of all of them at once, so that they
    stop after the same step, also when only one pod (its node preempted) got SIGTERM."""
    if not training.cluster.is_multi_worker:
        return stop.is_set
    return lambda: training.loop.any_worker(stop.is_set())


def _save_samples(artifacts: Any, dataset: Any, count: int = 32) -> None:
    import numpy as np

    from trainer.data import pixels
    from trainer.plots import save_samples

    split = dataset.train
    chosen = np.random.default_rng(0).permutation(len(split))[:count]
    names = [dataset.class_names[split.labels[i]] for i in chosen]
    save_samples(pixels(split, chosen), names, artifacts.path("samples.png"))
    artifacts.publish("samples.png")


def _save_curves(artifacts: Any, state: Any, monitor: str) -> None:
    from trainer.plots import save_curves

    save_curves(state.history, state.best_epoch, monitor, artifacts.path("curves.png"))
    artifacts.publish("curves.png")


def _save_best(training: Training, epoch: int, value: float) -> None:
    training.artifacts.save_model(training.loop.model, "best.h5",
                                  {**training.metadata, "epoch": epoch})
    get_logger().info("saved best.h5", extra={"run_id": training.settings.run_id,
                                              "epoch": epoch, training.settings.monitor: value})


def _evaluate_best(training: Training, summary: dict[str, Any]) -> None:
    """The best epoch's model, as saved, on the validation split; then the report."""
    import keras

    from trainer.evaluation import EVALUATION_FILES, evaluate
    from trainer.report import build_report
    from trainer.storage import write_atomic

    artifacts = training.artifacts
    model = keras.models.load_model(artifacts.path("best.h5"), compile=False)
    metrics = evaluate(model, training.dataset.val, training.image_size, training.preprocessor,
                       training.metadata["class_names"], artifacts.local_dir,
                       source="the validation split")
    page = build_report(artifacts.local_dir, training.settings.run_id, summary)
    write_atomic(artifacts.path("report.html"), page.encode())
    for name in (*EVALUATION_FILES, "report.html"):
        artifacts.publish(name)
    get_logger().info("evaluated the best model", extra={
        "run_id": training.settings.run_id, "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"], **({"top5_accuracy": metrics["top5_accuracy"]}
                                            if "top5_accuracy" in metrics else {})})


def _republish(training: Training, state: Any) -> None:
    """After a restart: history from the state, and best.h5 again if the restored model is the
    best one (the previous attempt may have stopped between the state and best.h5)."""
    if training.artifacts and state.history:
        training.artifacts.write_history(state.history)
        if state.best_epoch == state.epoch and state.step == 0:
            _save_best(training, state.epoch, state.best_value)
        else:
            training.artifacts.adopt("best.h5")


def _save_and_stop(training: Training, state: Any, where: str, saved: bool = False) -> None:
    from trainer.state import save_state

    if training.artifacts:
        if not saved:
            save_state(training.artifacts, training.checkpoint, state)
        training.artifacts.finish_uploads(min(training.settings.upload_timeout,
                                              TERMINATION_UPLOAD_SECONDS))
    by = " (sent to this or another worker)" if training.cluster.is_multi_worker else ""
    outcome = "after saving its state" if training.artifacts else "while the chief saves it"
    raise Terminated(f"stopped by SIGTERM{by} at {where}, {outcome}; run again with "
                     f"RUN_ID={training.settings.run_id} to resume")


def weights_digest(model: Any) -> str:
    """sha256 over every variable (BatchNormalization statistics too): equal on every worker."""
    import hashlib

    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(variable.numpy().tobytes())
    return digest.hexdigest()


def _finish(training: Training, state: Any, store: Store, stop: threading.Event) -> None:
    artifacts, settings = training.artifacts, training.settings
    if not artifacts:
        get_logger().info("worker finished; the chief writes the artifacts",
                          extra={"run_id": settings.run_id,
                                 "weights_sha256": weights_digest(training.loop.model)})
        return
    training.scalars.close()
    summary = {"status": "finished", "best_epoch": state.best_epoch,
               "best_value": state.best_value, "monitor": settings.monitor}
    _evaluate_best(training, summary)
    # The manifest goes last, once every artifact it lists is in the store.
    artifacts.finish_uploads(settings.upload_timeout, stop, TERMINATION_UPLOAD_SECONDS)
    manifest = artifacts.manifest(**summary, epochs_done=len(state.history),
                                  stopped_early=len(state.history) < settings.total_epochs)
    artifacts.write_json("manifest.json", manifest)
    artifacts.finish_uploads(settings.upload_timeout, stop, TERMINATION_UPLOAD_SECONDS)
    get_logger().info(
        f"run finished: best {settings.monitor}={state.best_value:.4f} at epoch "
        f"{state.best_epoch}; model at {artifacts.key('best.h5')} in {store.uri}; load it with "
        f"keras.models.load_model(path) or `trainer predict {settings.run_id} IMAGE`",
        extra={"run_id": settings.run_id, "best_epoch": state.best_epoch,
               "weights_sha256": weights_digest(training.loop.model)})


def _stop_on_sigterm() -> threading.Event:
    """SIGTERM (Kubernetes stopping the pod) asks the loop to save and stop after its steps."""
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        get_logger().warning("SIGTERM received: saving state after the current steps")
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)
    return stop


def _finished(store: Store, run_id: str) -> bool:
    raw = store.read_bytes(f"{run_id}/manifest.json")
    if raw is None:
        return False
    try:
        return json.loads(raw).get("status") == "finished"
    except ValueError:
        return False


def _work_run_dir(settings: Settings) -> Path:
    return Path(settings.work_dir) / "runs" / settings.run_id


def _run_artifacts(store: Store, settings: Settings) -> Any:
    from trainer.artifacts import RunArtifacts

    local_dir = store.local_run_dir(settings.run_id)
    if local_dir is not None:
        return RunArtifacts(store, settings.run_id, local_dir)
    from trainer.uploader import Uploader

    return RunArtifacts(store, settings.run_id, _work_run_dir(settings),
                        publisher=Uploader(store))


def _local(settings: Settings, location: str, kind: str) -> str:
    """An s3:// dataset or weights file, fetched into WORK_DIR (cached); other values as given."""
    if not location.startswith("s3://"):
        return location
    from trainer.s3 import download_uri

    get_logger().info(f"fetching {location}", extra={"run_id": settings.run_id})
    return str(download_uri(location, Path(settings.work_dir) / kind, settings.s3_endpoint_url,
                            settings.s3_addressing_style))


def _build(settings: Settings, image_size: int, num_classes: int) -> Any:
    from trainer.backbones import build_model, link_baked_weights

    weights = None if settings.weights == "none" else _local(settings, settings.weights, "weights")
    if weights == "imagenet":
        link_baked_weights(dict(os.environ))
    if weights not in (None, "imagenet") and not Path(weights).is_file():
        raise DataError(f"WEIGHTS={weights} does not exist; give the path of a weights file, "
                        "WEIGHTS=imagenet or WEIGHTS=none")
    try:
        return build_model(settings.backbone, settings.pooling, image_size, num_classes, weights)
    except ValueError as error:
        raise ConfigError(f"BACKBONE={settings.backbone} cannot be built with these settings: "
                          f"{str(error).splitlines()[0]}") from error
    except Exception as error:
        if weights == "imagenet" and "fetch" in str(error).lower():
            raise DataError(
                f"WEIGHTS=imagenet: could not download {settings.backbone}'s ImageNet weights "
                "(no internet?); give WEIGHTS=<path or s3:// URI of the weights file>, or bake "
                f"them into the image with --build-arg BAKE_WEIGHTS={settings.backbone}"
            ) from error
        raise


def _progress_logger(epoch: int, first: bool = False) -> Any:
    """A progress line every PROGRESS_INTERVAL_SECONDS; with `first`, one after the first call
    of steps too (the time to it is what a user waits before the accelerator works)."""
    log = get_logger()
    last = time.monotonic()
    announced = not first

    def report(done: int, steps: int) -> None:
        nonlocal last, announced
        if not announced:
            announced = True
            log.info("first training steps done", extra={"epoch": epoch, "step": done})
        if time.monotonic() - last >= PROGRESS_INTERVAL_SECONDS and done < steps:
            last = time.monotonic()
            log.info(f"epoch {epoch}: step {done}/{steps}", extra={"epoch": epoch, "step": done})

    return report


def _config(settings: Settings, metadata: dict[str, Any], replicas: int, dataset: Any) -> dict:
    import keras
    import numpy
    import tensorflow as tf

    return {
        "settings": settings.public_dict(),
        **metadata,
        "replicas": replicas,
        "global_batch_size": settings.batch_size * replicas,
        "train_examples": len(dataset.train),
        "validation_examples": len(dataset.val),
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": numpy.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }

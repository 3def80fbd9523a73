"""Training, as a recipe read top to bottom: devices, model and optimizer, compiled steps,
inputs, outputs, resume, epochs, finish.

    trainer.job.run_job(settings)   # checks the store and the data, then calls train()

This module imports TensorFlow; trainer.job, which decides whether to train at all, does not.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras
import numpy
import tensorflow as tf

from trainer.cluster.distribution import (
    make_strategy,
    resolve_precision,
    synchronized_batch_norm,
)
from trainer.cluster.specs import Cluster
from trainer.control import (
    StopRequest,
    diverged,
    out_of_memory_is_a_setting,
    peer_loss_is_transient,
    stop_on_sigterm,
)
from trainer.data.bad_images import apply_bad_images_policy
from trainer.data.decode_failures import take_decode_failures
from trainer.data.inputs import size_inputs
from trainer.data.load import Dataset, Split
from trainer.data.memory import cache_dataset, memory_budget
from trainer.data.pipeline import (
    batch_preprocessor,
    epoch_input,
    evaluation_input,
    evaluation_steps,
    preview,
)
from trainer.data.shard_downloads import stream_stats
from trainer.errors import StorageError, Terminated, UploadsUnfinished
from trainer.finish import evaluator, exporter
from trainer.logs import get_logger
from trainer.loop import Loop
from trainer.models.classifier import (
    build_classifier,
    preprocess_function,
    preprocessing_name,
    weights_digest,
)
from trainer.outputs import ChiefOutputs, Outputs, WorkerOutputs, run_config
from trainer.recipe import make_optimizer, phase_of, set_trainable, stop_early
from trainer.settings import Settings
from trainer.state import LoopState, fingerprint_of, restore_state
from trainer.store.artifacts import HistoryRow, run_files, state_place
from trainer.store.stores import Store
from trainer.tracking.hypertune import TunedMetric
from trainer.tracking.mlflow_run import Tracker, image_tag
from trainer.tracking.progress import Plan, TrainerStatusReporter
from trainer.tracking.run_progress import RunProgress
from trainer.tracking.scalars import ScalarLog


@dataclass(frozen=True)
class Run:
    """What the epochs work with, made once by `train`."""

    settings: Settings
    cluster: Cluster
    loop: Loop
    checkpoint: tf.train.Checkpoint
    dataset: Dataset
    image_size: int
    preprocess: Callable[[tf.Tensor], tf.Tensor]
    steps: int  # per epoch
    outputs: Outputs
    stop: StopRequest  # set by SIGTERM
    progress: RunProgress
    tuned: TunedMetric | None  # Vertex AI's tuned metric, reported by the chief


def train(settings: Settings, store: Store, dataset: Dataset, weights: str | None,
          environ: dict[str, str]) -> None:
    log = get_logger()
    # 1. Devices, before anything else touches them (virtual CPUs, collectives).
    strategy, cluster = make_strategy(settings.cpu_replicas, environ, settings.peer_timeout)
    # 2. After the strategy: MultiWorkerMirroredStrategy installs a SIGTERM handler of its own.
    stop = stop_on_sigterm(settings.termination_grace_seconds)
    replicas = strategy.num_replicas_in_sync
    # Data: TFRecords are counted now that the strategy exists, then the image size and batch.
    worker, workers = cluster.task_position, cluster.task_count
    settings, dataset, image_size, size_reason, steps = size_inputs(settings, dataset, strategy,
                                                                     cluster)
    global_batch = settings.batch_size * replicas

    # 3. Model and optimizer, their variables (and every optimizer slot any phase trains) made
    # in the strategy's scope: made lazily inside the distributed step they would be
    # per-replica placeholders that MirroredStrategy cannot feed.
    keras.utils.set_random_seed(settings.seed)
    policy, why = resolve_precision(settings.precision)
    keras.mixed_precision.set_global_policy(policy)
    synchronized, batch_norm_why = synchronized_batch_norm(settings.batch_norm_sync, replicas,
                                                           workers)
    with strategy.scope():
        model = build_classifier(settings.backbone, settings.pooling, image_size,
                                 len(dataset.class_names), weights, environ, synchronized)
        optimizer = make_optimizer(settings, steps, policy)
        optimizer.build(model.trainable_variables)
        checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)

    # 4. Compiled steps.
    loop = Loop.for_settings(settings, strategy, model, optimizer, global_batch)
    recipe = {"precision": policy, "precision_reason": why, "xla": loop.xla,
              "batch_norm_synchronized": synchronized, "batch_norm_reason": batch_norm_why,
              "augmentations": list(settings.augmentations)}
    log.info("training setup", extra={"run_id": settings.run_id, "replicas": replicas,
                                      "global_batch_size": global_batch, **recipe})

    # 5. Inputs: image files decoded once, not every epoch, where they fit in memory.
    cached = cache_dataset(dataset, image_size, memory_budget(), worker, workers)
    if cached.train is not dataset.train:
        log.info("decoded images kept in memory", extra={
            "run_id": settings.run_id, "images": len(cached.train) + len(cached.val)})
    bad_images = [str(bad) for bad in dataset.bad_images] + [
        f"{name} (failed to decode)" for name in apply_bad_images_policy(
            take_decode_failures(), settings.bad_images, settings.run_id)]
    preprocess = batch_preprocessor(image_size, preprocess_function(settings.backbone))

    # 6. Outputs: the chief writes them, in their order (trainer/outputs.py).
    metadata = {"class_names": list(dataset.class_names), "image_size": image_size,
                "backbone": settings.backbone,
                "preprocessing": preprocessing_name(settings.backbone)}
    fingerprint = fingerprint_of(settings, image_size, len(dataset.class_names), global_batch)
    outputs = _outputs(settings, store, cluster, metadata, fingerprint)
    data_report = {"image_size_choice": size_reason, "bad_images": bad_images}
    # Every worker's examples: TFRecords kept in memory are this worker's share only.
    whole = dataset if isinstance(cached.train, Split) and cached.train.shard else cached
    outputs.start(run_config(settings, {**metadata, **recipe, **data_report}, replicas, whole,
                             _versions()), preview(cached, image_size, worker, workers))
    reporter = TrainerStatusReporter.from_environ(environ) if cluster.is_chief else None
    plan = Plan(settings.total_epochs, steps, evaluation_steps(cached.val, global_batch, workers),
                exports=len(settings.export_formats))
    progress = RunProgress(plan, reporter, settings.run_id)
    tuned = TunedMetric.from_environ(environ, settings.monitor) if cluster.is_chief else None
    run = Run(settings, cluster, loop, checkpoint, cached, image_size, preprocess, steps,
              outputs, stop, progress, tuned)

    # 7. Resume from the newest intact saved state, if any.
    state_store, state_key, state_dir = state_place(settings, store)
    state = restore_state(state_store, state_key, state_dir, checkpoint, fingerprint) or LoopState()
    if state.epoch or state.step:
        log.info(f"resuming after epoch {state.epoch}"
                 + (f", step {state.step}" if state.step else ""),
                 extra={"run_id": settings.run_id, "resume_epoch": state.epoch + 1,
                        "resume_step": state.step})
        state = outputs.resumed(state, model)
    if cluster.is_chief:
        outputs.track(Tracker.open(environ, settings.run_id, state.tracking_run_id,
                                   params=settings.public_dict(), tags=image_tag(environ)), state)

    try:
        # 8. Epochs, then 9. the finish: evaluation, report, manifest.
        with peer_loss_is_transient(cluster), out_of_memory_is_a_setting(settings, image_size):
            state = _epochs(run, state)
        where = outputs.finish(state, progress.after(
            "evaluation", evaluator(cached, image_size, preprocess), plan.final_evaluation_units),
            progress.after("exports", exporter(settings, cached, image_size), plan.export_units),
            stop)
        progress.close()
    except (Terminated, StorageError, UploadsUnfinished) as error:
        # the uploads ended the run, or had their time already; MLflow's run ends all the same
        outputs.end_tracking("KILLED" if isinstance(error, Terminated) else "FAILED", stop)
        raise
    except Exception:
        outputs.upload_what_was_saved(stop)
        raise
    digest = {"weights_sha256": weights_digest(model)}
    if not cluster.is_chief:
        log.info("worker finished; the chief writes the artifacts",
                 extra={"run_id": settings.run_id, **digest})
        return
    if tuned is not None:  # also after a restart that had no epoch left to train
        tuned.report(state.best_value, len(state.history))
    log.info(f"run finished: best {settings.monitor}={state.best_value:.4f} at epoch "
             f"{state.best_epoch}; model at {where} in {store.uri}; load it with "
             f"keras.models.load_model(path) or `trainer predict {settings.run_id} IMAGE`",
             extra={"run_id": settings.run_id, "best_epoch": state.best_epoch, **digest})


def _epochs(run: Run, state: LoopState) -> LoopState:
    """Epochs after `state` to the last (or to early stopping); returns the final state."""
    log, settings, loop = get_logger(), run.settings, run.loop
    global_batch = loop.global_batch
    evaluation_fn = evaluation_input(run.dataset.val, run.image_size, run.preprocess,
                                     global_batch)
    eval_steps = run.progress.plan.evaluation_steps
    stop_requested = _stop_requested(run)
    phase = None
    first_epoch = state.epoch + 1
    for epoch in range(first_epoch, settings.total_epochs + 1):
        if stop_early(settings, state.epoch, state.best_epoch):
            log.info(f"stopping early: {settings.monitor} has not improved for "
                     f"{settings.early_stopping_patience} epoch(s)",
                     extra={"run_id": settings.run_id, "best_epoch": state.best_epoch})
            break
        if phase != phase_of(settings, epoch):
            phase = phase_of(settings, epoch)
            trained = set_trainable(loop.model, phase, settings.fine_tune_layers)
            loop.retrace()  # the steps traced before would go on training the old layers
            log.info(f"phase {phase.name}: epochs {phase.first_epoch}-{phase.last_epoch}",
                     extra={"run_id": settings.run_id, "trained_backbone_layers": len(trained),
                            "learning_rate": phase.learning_rate})
        training_fn = epoch_input(settings, run.dataset.train, run.image_size, run.preprocess,
                                  global_batch, epoch, skip_steps=state.step)
        metrics = loop.train_epoch(training_fn, run.steps,
                                   run.progress.steps(epoch, first=epoch == first_epoch),
                                   stop_requested, start_step=state.step, partial=state.partial)
        if not metrics.completed and not metrics.diverged:
            state = state.mid_epoch(metrics.steps_done, metrics.totals)
            raise _save_and_stop(run, state, f"epoch {epoch}, step {metrics.steps_done}")
        loop.average_batch_norm()  # before the evaluation and the save (BATCH_NORM_SYNC=save)
        val_loss, val_accuracy = (math.nan, math.nan) if metrics.diverged else loop.evaluate(
            evaluation_fn, eval_steps)
        # Images that failed to decode only now (those found at the start are left out).
        run.outputs.found_bad_images(apply_bad_images_policy(
            take_decode_failures(), settings.bad_images, settings.run_id))
        totals = metrics.totals
        row: HistoryRow = {
            "epoch": epoch, "loss": totals.loss, "accuracy": totals.accuracy,
            "val_loss": val_loss, "val_accuracy": val_accuracy,
            "learning_rate": loop.learning_rate, "seconds": round(totals.seconds, 3),
            "images_per_second": round(totals.images / max(totals.seconds, 1e-9), 1),
        }
        if not (math.isfinite(totals.loss) and math.isfinite(val_loss)):
            run.outputs.diverged(state, row)  # shown in the history, not kept as a state
            raise diverged(settings, epoch)
        state, improved = state.after_epoch(row, settings.monitor, settings.monitor_mode)
        log.info(f"epoch {epoch}/{settings.total_epochs}", extra={
            "run_id": settings.run_id, **row, "best_epoch": state.best_epoch,
            **run.progress.epoch_done(row), **stream_stats()})
        run.outputs.epoch_done(state, improved, loop.model, run.checkpoint)
        if run.tuned is not None:
            run.tuned.report(state.best_value, epoch)
        if epoch < settings.total_epochs and stop_requested():
            raise _save_and_stop(run, state, f"the end of epoch {epoch}", saved=True)
    return state


def _save_and_stop(run: Run, state: LoopState, where: str, saved: bool = False) -> Terminated:
    """SIGTERM: the state saved (unless `saved`) and uploaded; the error to stop with."""
    if not saved:
        run.loop.average_batch_norm()
    run.outputs.save_for_restart(state, run.checkpoint, saved, run.stop)
    by = " (sent to this or another worker)" if run.cluster.is_multi_worker else ""
    outcome = "after saving its state" if run.cluster.is_chief else "while the chief saves it"
    return Terminated(f"stopped by SIGTERM{by} at {where}, {outcome}; run again with "
                      f"RUN_ID={run.settings.run_id} to resume")


def _stop_requested(run: Run) -> Callable[[], bool]:
    """Whether to stop now. Across workers it is asked of all of them at once, so that they
    stop after the same step, also when only one pod (its node preempted) got SIGTERM."""
    if not run.cluster.is_multi_worker:
        return run.stop.is_set
    return lambda: run.loop.any_worker(run.stop.is_set())


def _outputs(settings: Settings, store: Store, cluster: Cluster, metadata: dict[str, Any],
             fingerprint: dict[str, Any]) -> Outputs:
    if not cluster.is_chief:
        return WorkerOutputs()
    artifacts, state_files = run_files(settings, store)
    scalars = ScalarLog(artifacts, settings.tensorboard_dir)
    return ChiefOutputs(artifacts, state_files, settings, metadata, fingerprint, scalars)


def _versions() -> dict[str, str]:
    return {"python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": numpy.__version__}

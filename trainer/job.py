"""The training job: settings in, a finished run in the store out.

    python entrypoint.py            # settings from the environment
    trainer train --epochs 3 ...    # the same job with flags
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from trainer.backbones import MIN_IMAGE_SIZE
from trainer.errors import ConfigError, DataError
from trainer.logs import get_logger
from trainer.settings import Settings
from trainer.storage import Store, open_store

PROGRESS_INTERVAL_SECONDS = 30.0


def run_job(settings: Settings, environ: dict[str, str] | None = None) -> None:
    """Train, keep the best epoch, and finish the run with its manifest."""
    log = get_logger()
    environ = dict(os.environ if environ is None else environ)
    store = open_store(settings.artifact_uri, settings.s3_endpoint_url,
                       settings.s3_addressing_style)
    store.check_writable()
    if _finished(store, settings.run_id):
        log.info("run already finished; nothing to do", extra={"run_id": settings.run_id})
        return
    log.info("starting run", extra={"run_id": settings.run_id, "artifact_uri": store.uri})

    from trainer.data import load_dataset

    # Data first: a missing or broken dataset fails before TensorFlow starts.
    dataset = load_dataset(_local(settings, settings.dataset, "datasets"),
                           validation_split=settings.validation_split,
                           seed=settings.seed, mirror=settings.dataset_mirror)

    from trainer.distribution import make_strategy

    strategy, cluster = make_strategy(settings.cpu_replicas, environ)
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

    from trainer.backbones import preprocess_function, preprocessing_name
    from trainer.loop import Loop
    from trainer.pipeline import evaluation_input, padded_length, training_input

    keras.utils.set_random_seed(settings.seed)
    with strategy.scope():
        model = _build(settings, image_size, len(dataset.class_names))
        optimizer = keras.optimizers.Adam(settings.learning_rate)
        # Slots made now, in the strategy's scope: created lazily inside the distributed
        # tf.function they would be per-replica placeholders that MirroredStrategy cannot feed.
        optimizer.build(model.trainable_variables)
    loop = Loop(strategy, model, optimizer, global_batch)
    preprocess = preprocess_function(settings.backbone)
    metadata = {
        "class_names": list(dataset.class_names),
        "image_size": image_size,
        "backbone": settings.backbone,
        "preprocessing": preprocessing_name(settings.backbone),
    }
    artifacts = _run_artifacts(store, settings) if cluster.is_chief else None
    if artifacts:
        artifacts.write_json("config.json", _config(settings, metadata, replicas, dataset))

    from trainer.pipeline import batch_preprocessor

    preprocessor = batch_preprocessor(image_size, preprocess)
    evaluation_fn = evaluation_input(dataset.val, image_size, preprocessor, global_batch)
    evaluation_steps = padded_length(len(dataset.val), global_batch) // global_batch
    history: list[dict[str, Any]] = []
    best_value: float | None = None
    best_epoch = 0
    for epoch in range(1, settings.epochs + 1):
        training_fn = training_input(dataset.train, image_size, preprocessor, global_batch,
                                     settings.seed, epoch)
        metrics = loop.train_epoch(training_fn, steps, _progress_logger(epoch))
        val_loss, val_accuracy = loop.evaluate(evaluation_fn, evaluation_steps)
        row = {
            "epoch": epoch, "loss": metrics.loss, "accuracy": metrics.accuracy,
            "val_loss": val_loss, "val_accuracy": val_accuracy,
            "learning_rate": loop.learning_rate, "seconds": round(metrics.seconds, 3),
            "images_per_second": round(metrics.images / max(metrics.seconds, 1e-9), 1),
        }
        history.append(row)
        value = row[settings.monitor]
        improved = best_value is None or (
            value > best_value if settings.monitor_mode == "max" else value < best_value
        )
        if improved:
            best_value, best_epoch = value, epoch
        log.info(f"epoch {epoch}/{settings.epochs}", extra={
            "run_id": settings.run_id, **row, "best_epoch": best_epoch})
        if artifacts:
            artifacts.raise_if_refused()
            if improved:
                artifacts.save_model(model, "best.h5", {**metadata, "epoch": epoch})
                log.info("saved best.h5", extra={"run_id": settings.run_id, "epoch": epoch,
                                                 settings.monitor: value})
            artifacts.write_history(history)

    if artifacts:
        # The manifest goes last, once every artifact it lists is in the store.
        artifacts.finish_uploads(settings.upload_timeout)
        manifest = artifacts.manifest(status="finished", best_epoch=best_epoch,
                                      best_value=best_value, monitor=settings.monitor,
                                      epochs_done=len(history))
        artifacts.write_json("manifest.json", manifest)
        artifacts.finish_uploads(settings.upload_timeout)
        log.info(f"run finished: best {settings.monitor}={best_value:.4f} at epoch {best_epoch}; "
                 f"model at {artifacts.key('best.h5')} in {store.uri}; load it with "
                 f"keras.models.load_model(path) or `trainer predict {settings.run_id} IMAGE`",
                 extra={"run_id": settings.run_id, "best_epoch": best_epoch})


def _finished(store: Store, run_id: str) -> bool:
    raw = store.read_bytes(f"{run_id}/manifest.json")
    if raw is None:
        return False
    try:
        return json.loads(raw).get("status") == "finished"
    except ValueError:
        return False


def _run_artifacts(store: Store, settings: Settings) -> Any:
    from trainer.artifacts import RunArtifacts

    local_dir = store.local_run_dir(settings.run_id)
    if local_dir is not None:
        return RunArtifacts(store, settings.run_id, local_dir)
    from trainer.uploader import Uploader

    local_dir = Path(settings.work_dir) / "runs" / settings.run_id
    return RunArtifacts(store, settings.run_id, local_dir, publisher=Uploader(store))


def _local(settings: Settings, location: str, kind: str) -> str:
    """An s3:// dataset or weights file, fetched into WORK_DIR (cached); other values as given."""
    if not location.startswith("s3://"):
        return location
    from trainer.s3 import download_uri

    get_logger().info(f"fetching {location}", extra={"run_id": settings.run_id})
    return str(download_uri(location, Path(settings.work_dir) / kind, settings.s3_endpoint_url,
                            settings.s3_addressing_style))


def _build(settings: Settings, image_size: int, num_classes: int) -> Any:
    from trainer.backbones import build_model

    weights = None if settings.weights == "none" else _local(settings, settings.weights, "weights")
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


def _progress_logger(epoch: int) -> Any:
    log = get_logger()
    last = [time.monotonic()]

    def report(done: int, steps: int) -> None:
        if time.monotonic() - last[0] >= PROGRESS_INTERVAL_SECONDS and done < steps:
            last[0] = time.monotonic()
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


__all__ = ["run_job"]

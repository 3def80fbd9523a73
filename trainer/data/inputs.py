"""What a run trains on, once the strategy exists: the TFRecords counted across the workers
(a collective), the image size (IMAGE_SIZE, or the dataset's own capped at the backbone's native
size), and a batch that the training set can fill."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from trainer.cluster.specs import Cluster
from trainer.data.counting import count_records
from trainer.data.load import Dataset
from trainer.data.pipeline import fit_batch
from trainer.errors import ConfigError
from trainer.logs import get_logger
from trainer.models.backbones import default_image_size
from trainer.settings import Settings


def size_inputs(settings: Settings, dataset: Dataset, strategy: tf.distribute.Strategy,
                cluster: Cluster) -> tuple[Settings, Dataset, int, str, int]:
    """The settings (BATCH_SIZE capped to what the data allows, logged), the dataset counted,
    the image size and why, and the steps per epoch."""
    log = get_logger()
    replicas = strategy.num_replicas_in_sync
    if settings.precision == "float16" and replicas > 1:
        # Keras' LossScaleOptimizer checks each replica's gradients before the all-reduce and
        # follows replica 0: an overflow elsewhere would be applied, and workers could diverge.
        raise ConfigError(f"PRECISION=float16 is not supported with {replicas} replicas; use "
                          "PRECISION=bfloat16 (or auto), or float32")
    dataset = count_records(dataset, strategy, cluster.task_position, cluster.task_count)
    if settings.image_size:
        image_size, reason = settings.image_size, "IMAGE_SIZE"
    else:
        image_size, reason = default_image_size(dataset.native_size, settings.backbone)
        log.info(f"IMAGE_SIZE={image_size}: {reason}", extra={
            "run_id": settings.run_id, "image_size": image_size, "image_size_reason": reason})
    batch_size, steps = fit_batch(settings.batch_size, replicas, len(dataset.train))
    if batch_size != settings.batch_size:
        log.info(f"BATCH_SIZE={settings.batch_size} x {replicas} replica(s) is more than the "
                 f"{len(dataset.train)} training images: {batch_size} per replica instead",
                 extra={"run_id": settings.run_id, "batch_size": batch_size})
        settings = dataclasses.replace(settings, batch_size=batch_size)
    return settings, dataset, image_size, reason, steps

"""The training job: settings in, a finished run in the store out.

    python entrypoint.py            # settings from the environment
    trainer train --epochs 3 ...    # the same job with flags

Everything that can fail fast does so here, before TensorFlow starts: the store must take
writes, a finished run is left alone, the dataset (and a weights file in S3) must be there and
readable. Then `trainer.train` trains, or resumes from the run's saved state.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from trainer.cluster.platforms import resolve_platform
from trainer.cluster.specs import resolve_cluster
from trainer.data.load import Dataset, fetch_dataset, load_dataset, remote_dataset
from trainer.data.shards import default_cache_bytes
from trainer.data.stream_failures import stream_failures_raised
from trainer.data.tfrecords import Remote
from trainer.errors import ConfigError
from trainer.logs import get_logger
from trainer.parts import finish_from_record
from trainer.serving.formats import check_export_runtimes
from trainer.settings import Settings, changed_settings
from trainer.store.failures import clear_failure, record_failure
from trainer.store.stores import Store, key_in, open_store
from trainer.tracking.hypertune import TunedMetric


def run_job(settings: Settings, environ: Mapping[str, str] | None = None) -> None:
    """Train (or resume), keep the best epoch, and finish the run with its manifest."""
    log = get_logger()
    store = open_store(settings.store_uri, settings.s3_endpoint_url,
                       settings.s3_addressing_style)
    store.check_writable()
    check_export_runtimes(settings.export_formats)
    if finished(store, settings.run_key):
        check_same_settings(store, settings)
        log.info("run already finished; nothing to do", extra={"run_id": settings.run_id})
        return
    log.info("starting run", extra={"run_id": settings.run_id, "artifact_uri": store.uri})
    # The platform's environment: on SageMaker, TF_CONFIG comes from its resourceconfig.json.
    platform = resolve_platform(os.environ if environ is None else environ)
    for note in platform.notes:
        log.info(note, extra={"run_id": settings.run_id})
    cluster, _ = resolve_cluster(platform.environ)
    if cluster.is_chief:
        clear_failure(store, settings.run_key)
    try:
        # Training and the finish's every part done (only an upload or the manifest missing):
        # no TensorFlow, model or dataset. Several workers go the whole way together.
        summary = None if cluster.is_multi_worker else finish_from_record(settings, store,
                                                                           platform.environ)
        if summary is not None:
            tuned = TunedMetric.from_environ(platform.environ, settings.monitor)
            if tuned is not None:  # as after a restart that had no epoch left to train
                tuned.report(summary["best_value"], summary["epochs_done"])
            return
        dataset = load_run_dataset(settings, cluster.task_position)
        weights = None if settings.weights == "none" else fetch_if_remote(
            settings, settings.weights, "weights")
        # The TensorFlow boundary (see trainer/__init__.py).
        from trainer.train import train

        with stream_failures_raised():  # why a streamed dataset stopped, not tf.data's error
            train(settings, store, dataset, weights, platform.environ)
    except (Exception, KeyboardInterrupt) as error:
        # What `trainer runs` shows instead of "running": failed, stopped or interrupted.
        if cluster.is_chief:
            record_failure(store, settings.run_key, error)
        raise


def load_run_dataset(settings: Settings, worker: int = 0) -> Dataset:
    """DATASET with the run's validation split: shards (local, or in S3 streamed through worker
    `worker`'s cache) are only listed (they are counted by trainer.train once the strategy is
    made); an .npz or image folder in S3 is fetched first. Broken image files are left out or
    fail the run here (BAD_IMAGES)."""
    streamed = remote_dataset(settings.dataset, stream_cache(settings, worker),
                              validation_split=settings.validation_split, seed=settings.seed,
                              dataset_format=settings.dataset_format)
    if streamed is not None:
        return streamed
    return load_dataset(fetch_if_remote(settings, settings.dataset, "datasets"),
                        validation_split=settings.validation_split, seed=settings.seed,
                        mirror=settings.dataset_mirror, bad_images=settings.bad_images,
                        dataset_format=settings.dataset_format)


def stream_cache(settings: Settings, worker: int = 0) -> Remote:
    """How shards in S3 reach worker `worker`: the S3 settings, its cache folder in WORK_DIR
    and DATA_CACHE_BYTES, and UPLOAD_TIMEOUT to wait out an outage."""
    cache_bytes = settings.data_cache_bytes or default_cache_bytes(settings.work_dir)
    return Remote(settings.s3_endpoint_url, settings.s3_addressing_style,
                  str(Path(settings.work_dir) / "stream-cache" / f"worker-{worker}"),
                  cache_bytes, settings.upload_timeout)


def finished(store: Store, run_id: str) -> bool:
    raw = store.read_bytes(key_in(run_id, "manifest.json"))
    if raw is None:
        return False
    try:
        return json.loads(raw).get("status") == "finished"
    except ValueError:
        return False


def check_same_settings(store: Store, settings: Settings) -> None:
    """ConfigError (exit 2) naming each setting, with both values, that differs from those the
    finished run was made with (its config.json): "nothing to do" would be a success for a
    request that was not done."""
    raw = store.read_bytes(key_in(settings.run_key, "config.json"))
    try:
        saved = json.loads(raw)["settings"] if raw is not None else {}
    except (ValueError, KeyError, TypeError):
        saved = {}
    changed = changed_settings(saved if isinstance(saved, dict) else {}, settings)
    if changed:
        hint = ("; for other exports of it: trainer export " + settings.run_key
                if all(line.startswith("EXPORT ") for line in changed) else "")
        raise ConfigError(
            f"RUN_ID={settings.run_key} already finished with other settings "
            f"({'; '.join(changed)}); give a new RUN_ID to train with these, or the run's own "
            f"settings (its config.json) to leave it as it is{hint}")


def fetch_if_remote(settings: Settings, location: str, kind: str) -> str:
    """An s3:// dataset or weights file, fetched into WORK_DIR/kind (cached); other values as
    given."""
    return fetch_dataset(location, Path(settings.work_dir) / kind, settings.s3_endpoint_url,
                         settings.s3_addressing_style)

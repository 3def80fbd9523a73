"""The MLflow experiment a run goes in, and the model version it registers: calls the backlog's
thread makes for `trainer.tracking.mlflow_run.Tracker`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trainer.logs import get_logger
from trainer.tracking.backlog import error_code

RUN_ID_TAG = "trainer.run_id"


def experiment_id(client: Any, environ: Mapping[str, str]) -> str:
    """MLFLOW_EXPERIMENT_NAME's experiment (made if missing), else MLFLOW_EXPERIMENT_ID, else
    MLflow's Default experiment."""
    name = environ.get("MLFLOW_EXPERIMENT_NAME", "").strip()
    if name:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return client.create_experiment(name)
        except Exception as error:  # noqa: BLE001 - created meanwhile by another job
            if error_code(error) != "RESOURCE_ALREADY_EXISTS":
                raise
            return client.get_experiment_by_name(name).experiment_id
    return environ.get("MLFLOW_EXPERIMENT_ID", "").strip() or "0"


def register(client: Any, name: str, mlflow_run_id: str | None, run_id: str,
             artifact_path: str) -> None:
    """The MLflow run's `artifact_path` as a new version of the registered model `name`, unless
    an earlier attempt of the run registered it already."""
    quoted = name.replace("'", "\\'")
    if client.search_model_versions(f"name = '{quoted}' and run_id = '{mlflow_run_id}'"):
        return  # registered by an earlier attempt of this run
    try:
        client.create_registered_model(name)
    except Exception as error:  # noqa: BLE001
        if error_code(error) != "RESOURCE_ALREADY_EXISTS":
            raise
    run = client.get_run(mlflow_run_id)
    version = client.create_model_version(
        name, f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}",
        run_id=mlflow_run_id, tags={RUN_ID_TAG: run_id}, await_creation_for=0)
    get_logger().info(f"registered model {name} version {version.version}",
                      extra={"mlflow_run_id": mlflow_run_id, "model_version": version.version,
                             "artifact_path": artifact_path})

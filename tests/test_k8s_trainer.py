"""Kubeflow Trainer's side of the TrainJob overlays: the JobSet that Trainer makes of a TrainJob
and its runtime (tests/k8s_controllers.py trainer_jobset, written from kubeflow/trainer v2.3.0
pkg/runtime/framework/plugins/jobset/builder.go: the TrainJob's env is upserted, name by name,
over the runtime's), and the Trainer release the runtimes' initializer images are pinned to.

    .venv/bin/python -m pytest tests/test_k8s_trainer.py     (no TensorFlow; needs kubectl)
"""

from __future__ import annotations

import re

import pytest
from k8s_controllers import trainer_jobset
from test_k8s import (
    ANCESTOR_CONTAINERS,
    ANCESTOR_LABEL,
    DATASET_MOUNT_PATH,
    INITIALIZER_VOLUME,
    K8S,
    MODEL_MOUNT_PATH,
    check_api_types,
    check_cluster,
    render,
    runtimes,
    the_one,
    trainer_job_of,
    trainer_pods,
)

from trainer.settings import load_settings

# The Trainer release that k8s_controllers.py emulates and the runtimes are written against;
# its own runtimes pin the initializers to this tag (manifests/overlays/runtimes images: newTag).
TRAINER_RELEASE = "v2.3.0"
INITIALIZER_IMAGE = re.compile(r"ghcr\.io/kubeflow/trainer/(dataset|model)-initializer:(\S+)")


def node_env(runtime: str) -> list[str]:
    """The names of the variables the runtime itself gives the trainer's `node` container."""
    (container,) = trainer_job_of(runtimes()[runtime]["spec"]["template"]["spec"])[
        "template"]["spec"]["template"]["spec"]["containers"]
    return [variable["name"] for variable in container.get("env", [])]


@pytest.mark.parametrize("overlay", ["trainjob", "trainjob-initializers"])
def test_a_trainjobs_env_replaces_none_of_its_runtimes_variables(overlay: str) -> None:
    """Trainer upserts the TrainJob's env over the runtime's: a variable the runtime sets (the
    initializers' DATASET and WEIGHTS, RUN_ID, the cluster's) would be replaced silently."""
    trainjob = the_one(render(overlay), "TrainJob")
    given = {variable["name"] for variable in trainjob["spec"]["trainer"]["env"]}
    assert given and not given & set(node_env(trainjob["spec"]["runtimeRef"]["name"]))


def test_trainjob_with_initializers_reads_what_they_download() -> None:
    objects = render("trainjob-initializers", IMAGE="registry.internal/trainer:7",
                     RUN_ID="flowers-1")
    trainjob = the_one(objects, "TrainJob")
    check_api_types(trainjob)
    assert trainjob["spec"]["runtimeRef"]["name"] == "keras-trainer-initializers"
    sources = {kind: trainjob["spec"]["initializer"][kind]["storageUri"]
               for kind in ("dataset", "model")}
    # The trainer, after Trainer's merge, reads the initializers' folders with the TrainJob's
    # image and its other settings.
    environs, hosts = trainer_pods(trainjob)
    check_cluster(environs, "flowers-1", hosts)
    settings = load_settings(environs[0])
    assert (settings.dataset, settings.weights) == (DATASET_MOUNT_PATH, MODEL_MOUNT_PATH)
    given = {e["name"]: e["value"] for e in trainjob["spec"]["trainer"]["env"]}
    assert (settings.backbone, settings.artifact_uri) == (given["BACKBONE"],
                                                          given["ARTIFACT_URI"])

    # Each initializer downloads the TrainJob's storageUri (its STORAGE_URI) to its folder of
    # the shared volume, which the trainer mounts read-only after both completed.
    jobset = trainer_jobset(trainjob, runtimes()["keras-trainer-initializers"])
    (claim,) = [template["metadata"]["name"] for policy in jobset["volumeClaimPolicies"]
                for template in policy["templates"]]
    assert claim == INITIALIZER_VOLUME
    steps = [r["template"]["metadata"]["labels"][ANCESTOR_LABEL] for r in jobset["replicatedJobs"]]
    assert steps == ["dataset-initializer", "model-initializer", "trainer"]
    for replicated, step in zip(jobset["replicatedJobs"], steps, strict=True):
        assert replicated["replicas"] == 1
        (container,) = replicated["template"]["spec"]["template"]["spec"]["containers"]
        assert container["name"] == ANCESTOR_CONTAINERS[step]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == INITIALIZER_VOLUME]
        assert mount["mountPath"] == "/workspace"
        assert mount.get("readOnly", False) is (step == "trainer")
        if step != "trainer":
            env = {e["name"]: e.get("value") for e in container["env"]}
            assert env["STORAGE_URI"] == sources[step.removesuffix("-initializer")]
        else:
            assert container["image"] == "registry.internal/trainer:7"
    assert [d["name"] for d in jobset["replicatedJobs"][2]["dependsOn"]] == steps[:2]


def test_initializer_images_are_pinned_to_the_trainer_release() -> None:
    """An untagged image is :latest, pulled anew by every pod: another release's layout or
    variables could arrive mid-sweep. Both are the release these runtimes are written for."""
    images = [container["image"] for runtime in runtimes().values()
              for replicated in runtime["spec"]["template"]["spec"]["replicatedJobs"]
              for container in replicated["template"]["spec"]["template"]["spec"]["containers"]
              if container["name"] != ANCESTOR_CONTAINERS["trainer"]]
    pinned = [INITIALIZER_IMAGE.fullmatch(image) for image in images]
    assert len(images) == 2 and all(pinned), images
    assert {match[2] for match in pinned if match} == {TRAINER_RELEASE}
    # The files say which Trainer each needs (the initializers' volume claims: JobSet 0.11,
    # Trainer 2.2), and the version the tag is.
    header = (K8S / "kubeflow-trainer" / "from-base" / "runtimes.yaml").read_text()
    assert "keras-trainer needs Trainer 2.1 or later" in header
    assert "keras-trainer-initializers 2.2 or later" in header
    assert f"Trainer {TRAINER_RELEASE.removeprefix('v').rsplit('.', 1)[0]}" in header

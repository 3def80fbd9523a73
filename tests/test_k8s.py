"""Kubernetes manifests: every overlay rendered by kubectl's kustomize, validated by
kubernetes-validate --strict, and checked here for the failure policy and the restricted Pod
Security Standard (own assertions; checkov is not used)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from trainer.distribution import tf_config_from_indexed_job

REPO = Path(__file__).resolve().parents[1]
OVERLAYS = sorted(p.name for p in (REPO / "k8s" / "overlays").iterdir())
KUBERNETES_VERSION = "1.37.0"
JOB_NAME_LABEL = "metadata.labels['batch.kubernetes.io/job-name']"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def render(overlay: str) -> tuple[str, list[dict]]:
    text = subprocess.run(["kubectl", "kustomize", str(REPO / "k8s" / "overlays" / overlay)],
                          check=True, capture_output=True, text=True).stdout
    return text, [doc for doc in yaml.safe_load_all(text) if doc]


def the_job(objects: list[dict]) -> dict:
    jobs = [o for o in objects if o["kind"] == "Job"]
    assert len(jobs) == 1
    return jobs[0]


def test_there_are_the_four_overlays() -> None:
    assert OVERLAYS == ["multi-gpu", "multi-node", "s3-custom-endpoint", "single-gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_for_a_current_kubernetes(overlay: str, tmp_path: Path) -> None:
    text, _ = render(overlay)
    (tmp_path / "rendered.yaml").write_text(text)
    validator = Path(sys.executable).parent / "kubernetes-validate"
    result = subprocess.run([str(validator), "--strict", "-k", KUBERNETES_VERSION,
                             str(tmp_path / "rendered.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_failure_policy_and_lifetime(overlay: str) -> None:
    spec = the_job(render(overlay)[1])["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["backoffLimit"] >= 1 and spec["activeDeadlineSeconds"] > 0
    assert spec["ttlSecondsAfterFinished"] > 0
    rules = spec["podFailurePolicy"]["rules"]
    fail = [r for r in rules if r["action"] == "FailJob"]
    assert len(fail) == 1 and fail[0]["onExitCodes"]["operator"] == "In"
    assert sorted(fail[0]["onExitCodes"]["values"]) == [2, 3, 4]
    ignore = [r for r in rules if r["action"] == "Ignore"]
    assert ignore[0]["onPodConditions"] == [{"type": "DisruptionTarget"}]
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_pod_security_and_gpus(overlay: str) -> None:
    pod = the_job(render(overlay)[1])["spec"]["template"]["spec"]
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and isinstance(security["runAsUser"], int)
    assert security["runAsUser"] > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    context = container["securityContext"]
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
    assert context["readOnlyRootFilesystem"] is True
    mounted = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/tmp", "/home/trainer/.keras"} <= mounted  # writable emptyDirs
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_run_id_is_the_jobs_name_and_no_secret_is_inline(overlay: str) -> None:
    objects = render(overlay)[1]
    (container,) = the_job(objects)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == JOB_NAME_LABEL
    for item in container["env"]:
        if any(word in item["name"] for word in ("SECRET", "ACCESS_KEY", "TOKEN", "PASSWORD")):
            assert "value" not in item, item["name"]
    for config in (o for o in objects if o["kind"] == "ConfigMap"):
        assert not any(word in key for key in config.get("data", {})
                       for word in ("SECRET", "ACCESS_KEY", "TOKEN", "PASSWORD"))
    assert env["AWS_SHARED_CREDENTIALS_FILE"]["value"].startswith("/var/run/secrets/")


def test_multi_gpu_has_a_memory_backed_dev_shm() -> None:
    pod = the_job(render("multi-gpu")[1])["spec"]["template"]["spec"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert int(pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]) > 1


def test_multi_node_sets_exactly_what_the_entrypoint_derives_tf_config_from() -> None:
    objects = render("multi-node")[1]
    job = the_job(objects)
    service = next(o for o in objects if o["kind"] == "Service")
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"]
    assert service["spec"]["clusterIP"] == "None"
    assert pod["subdomain"] == service["metadata"]["name"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in service["spec"]["selector"].items())

    literal = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    derived = {e["name"] for e in container["env"]
               if e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == JOB_NAME_LABEL}
    assert {"WORKER_COUNT", "WORKER_SERVICE", "WORKER_PORT"} <= set(literal)
    assert "JOB_NAME" in derived
    # What Kubernetes adds to each pod of an Indexed Job, then the variables as the pod sees them.
    name = job["metadata"]["name"]
    environ = {**literal, **dict.fromkeys(derived, name), "JOB_COMPLETION_INDEX": "1"}
    config = tf_config_from_indexed_job(environ)
    port = service["spec"]["ports"][0]["port"]
    assert port == int(literal["WORKER_PORT"]) == container["ports"][0]["containerPort"]
    assert config["cluster"]["worker"] == [
        f"{name}-{i}.{service['metadata']['name']}:{port}"
        for i in range(job["spec"]["completions"])
    ]
    assert int(literal["WORKER_COUNT"]) == job["spec"]["completions"]
    assert config["task"] == {"type": "worker", "index": 1}


def test_s3_overlay_points_at_a_custom_endpoint() -> None:
    objects = render("s3-custom-endpoint")[1]
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"]
    assert config["data"]["S3_ENDPOINT_URL"].startswith("https://")
    assert config["data"]["S3_ADDRESSING_STYLE"] == "path"
    assert config["data"]["ARTIFACT_URI"].startswith("s3://")

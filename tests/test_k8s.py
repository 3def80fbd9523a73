"""Kubernetes manifests, checked offline (there is no API server here).

    .venv/bin/python -m pytest tests/test_k8s.py

Every overlay in k8s/overlays is rendered by `kubectl kustomize` and validated with
`kubernetes-validate --strict` against the newest Kubernetes whose schemas it bundles. The
policies are checked by this module's own assertions on the rendered objects (checkov is not
used, so no policy is skipped):
- failure handling: `restartPolicy: Never`; `podFailurePolicy` with FailJob on exit codes exactly
  {2, 3, 4} and Ignore on the DisruptionTarget condition; `podReplacementPolicy: Failed`;
  `backoffLimit`, `activeDeadlineSeconds`, `ttlSecondsAfterFinished`; a grace period >= 60 s;
- the restricted Pod Security Standard: runAsNonRoot with the image's numeric user, seccomp
  RuntimeDefault, no privilege escalation, ALL capabilities dropped and none added, no host
  namespaces, ports or privileged mode, only the volume types it allows; plus a read-only root
  filesystem with emptyDirs where the job writes (/tmp, KERAS_HOME, /runs);
- GPUs and resources: an `nvidia.com/gpu` limit, the GPU taint's toleration, cpu and memory
  requests and limits;
- credentials: no Secret object and no secret-looking variable with a literal value; the
  credentials file lies in a mounted Secret volume;
- RUN_ID (and JOB_NAME) from the Job's name through the downward API;
- multi-node: the variables from which trainer.distribution derives TF_CONFIG, and the host names
  it yields, against the Indexed Job and its headless Service.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (the dev extra has it)")

from trainer.distribution import tf_config_from_indexed_job  # noqa: E402  (no TensorFlow)

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
JOB_NAME_FIELD = "metadata.labels['batch.kubernetes.io/job-name']"
SECRET_WORDS = ("SECRET", "KEY", "TOKEN", "PASSWORD", "CREDENTIAL")
# The volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None,
                                reason="kubectl (with kustomize) is not installed")


def dockerfile_env(name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", (REPO / "Dockerfile").read_text())
    assert match, name
    return match.group(1)


def dockerfile_user() -> int:
    (user,) = re.findall(r"^USER (\S+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    return int(user)


@functools.cache
def render_text(overlay: str, **settings: str) -> str:
    """The overlay as `k8s/render.sh` renders it (plain `kubectl kustomize` without settings)."""
    if settings:
        command = [str(K8S / "render.sh"), overlay]
    else:
        command = ["kubectl", "kustomize", str(K8S / "overlays" / overlay)]
    result = subprocess.run(command, capture_output=True, text=True,
                            env={**os.environ, **settings})
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(overlay: str, **settings: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(render_text(overlay, **settings)) if doc]


def the_one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return the_one(objects, "Job")["spec"]["template"]["spec"]


def trainer_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = pod_spec(objects)["containers"]
    assert container["name"] == "trainer"
    return container


def validate(text: str, folder: Path) -> None:
    validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    validator = validator or shutil.which("kubernetes-validate")
    if validator is None:
        pytest.skip("kubernetes-validate is not installed (the dev extra has it)")
    from kubernetes_validate.utils import latest_version

    version = latest_version()
    assert tuple(map(int, version.split(".")[:2])) >= (1, 31), f"schemas only up to {version}"
    (folder / "rendered.yaml").write_text(text)
    result = subprocess.run([validator, "--strict", "--quiet", "-k", version,
                             str(folder / "rendered.yaml")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_overlays() -> None:
    assert OVERLAYS == ["multi-gpu", "multi-node", "s3-custom-endpoint", "single-gpu"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_for_a_current_kubernetes(overlay: str, tmp_path: Path) -> None:
    validate(render_text(overlay), tmp_path)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_failure_policy_and_lifetime(overlay: str) -> None:
    spec = the_one(render(overlay), "Job")["spec"]
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["backoffLimit"] >= 1
    assert spec["activeDeadlineSeconds"] > 0 and spec["ttlSecondsAfterFinished"] > 0
    assert spec["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    rules = spec["podFailurePolicy"]["rules"]
    assert [r["action"] for r in rules] == ["FailJob", "Ignore"]
    exits = rules[0]["onExitCodes"]
    assert exits["operator"] == "In" and exits["containerName"] == "trainer"
    assert sorted(exits["values"]) == [2, 3, 4]
    assert rules[1]["onPodConditions"] == [{"type": "DisruptionTarget"}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_pod_security_standard(overlay: str) -> None:
    objects = render(overlay)
    pod = pod_spec(objects)
    user = dockerfile_user()
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == user > 0 and security["runAsGroup"] > 0
    assert security["fsGroup"] > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        assert pod.get(field, False) is False, field
    for volume in pod["volumes"]:
        assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context.get("privileged", False) is False
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
        assert context["readOnlyRootFilesystem"] is True
        assert context.get("runAsUser", user) == user
        assert context.get("runAsNonRoot", True) is True
        assert all("hostPort" not in port for port in container.get("ports", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_folders_are_empty_dirs(overlay: str) -> None:
    objects = render(overlay)
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    container = trainer_container(objects)
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    writable = ["/tmp", dockerfile_env("KERAS_HOME"), dockerfile_env("ARTIFACT_URI")]
    assert dockerfile_env("WORK_DIR").startswith("/tmp/")
    assert dockerfile_env("MPLCONFIGDIR").startswith("/tmp/")
    for path in writable:
        assert "emptyDir" in mounts[path], path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_and_resources(overlay: str) -> None:
    objects = render(overlay)
    pod = pod_spec(objects)
    resources = trainer_container(objects)["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in resources.get("requests", {}) or (
        resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_credentials_inline(overlay: str) -> None:
    objects = render(overlay)
    assert not [o for o in objects if o["kind"] == "Secret"]
    container = trainer_container(objects)
    for item in container["env"]:
        if any(word in item["name"] for word in SECRET_WORDS) and not item["name"].endswith(
                "_FILE"):
            assert "value" not in item, f"{item['name']} has a literal value"
    for config in (o for o in objects if o["kind"] == "ConfigMap"):
        for key in config.get("data", {}):
            assert not any(word in key for word in SECRET_WORDS), f"ConfigMap key {key}"
    # The credentials file, when there is one, comes from a Secret mounted read-only.
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    path = {e["name"]: e for e in container["env"]}["AWS_SHARED_CREDENTIALS_FILE"]["value"]
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True and "secretName" in volumes[mount["name"]]["secret"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_run_id_is_the_jobs_name(overlay: str) -> None:
    objects = render(overlay)
    env = {e["name"]: e for e in trainer_container(objects)["env"]}
    for name in ("RUN_ID", "JOB_NAME"):
        assert env[name]["valueFrom"]["fieldRef"]["fieldPath"] == JOB_NAME_FIELD, name
    assert the_one(objects, "Job")["metadata"]["name"] == f"trainer-{overlay}"
    assert trainer_container(objects)["image"].startswith("registry.example.com/trainer:")


def test_multi_gpu_has_all_gpus_and_a_memory_backed_dev_shm() -> None:
    objects = render("multi-gpu")
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    (shm,) = [m for m in trainer_container(objects)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    assert int(trainer_container(objects)["resources"]["limits"]["nvidia.com/gpu"]) > 1


class RecordingEnviron(dict):
    """An environment that records the names read from it."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return super().__getitem__(name)

    def __contains__(self, name: object) -> bool:
        self.read.add(str(name))
        return super().__contains__(name)

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return super().get(name, default)


def pod_environ(container: dict[str, Any], job_name: str, index: int) -> dict[str, str]:
    """The container's variables as the pod of `index` sees them (the ConfigMap's aside)."""
    environ = {"JOB_COMPLETION_INDEX": str(index)}  # what Kubernetes adds in an Indexed Job
    for item in container["env"]:
        if "value" in item:
            environ[item["name"]] = item["value"]
        elif item["valueFrom"].get("fieldRef", {}).get("fieldPath") == JOB_NAME_FIELD:
            environ[item["name"]] = job_name
    return environ


@pytest.mark.parametrize("run_id", [None, "resnet50-cifar10-7"])
def test_multi_node_sets_exactly_what_tf_config_is_derived_from(run_id: str | None) -> None:
    objects = render("multi-node", **({"RUN_ID": run_id} if run_id else {}))
    job, service = the_one(objects, "Job"), the_one(objects, "Service")
    pod = job["spec"]["template"]
    container = trainer_container(objects)
    name = job["metadata"]["name"]
    assert name == (run_id or "trainer-multi-node")

    # An Indexed Job of WORKER_COUNT pods running at once, and a headless Service over them.
    assert job["spec"]["completionMode"] == "Indexed"
    workers = job["spec"]["completions"]
    assert workers == job["spec"]["parallelism"] > 1
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    selector = service["spec"]["selector"]
    assert all(pod["metadata"]["labels"].get(k) == v for k, v in selector.items())
    (port,) = service["spec"]["ports"]
    (container_port,) = container["ports"]
    assert port["targetPort"] in (container_port["name"], container_port["containerPort"])

    # The overlay sets exactly the variables that the derivation reads, besides the index that
    # Kubernetes sets; TF_CONFIG itself is left unset.
    environ = RecordingEnviron(pod_environ(container, name, 0))
    config = tf_config_from_indexed_job(environ)
    assert config is not None
    distribution = {e["name"] for e in container["env"]
                    if e["name"].startswith(("WORKER_", "JOB_", "TF_"))}
    assert distribution == environ.read - {"JOB_COMPLETION_INDEX"}
    assert distribution == {"WORKER_COUNT", "WORKER_SERVICE", "WORKER_PORT", "JOB_NAME"}
    base = {e["name"] for e in trainer_container(render("single-gpu"))["env"]}
    added = {e["name"] for e in container["env"]} - base
    assert added == {"WORKER_COUNT", "WORKER_SERVICE", "WORKER_PORT"}

    # The host names it yields are the ones the headless Service gives pod i: <job>-<i>.<service>.
    assert int(environ["WORKER_COUNT"]) == workers
    assert int(environ["WORKER_PORT"]) == port["port"] == container_port["containerPort"]
    hosts = [f"{name}-{i}.{service['metadata']['name']}:{port['port']}" for i in range(workers)]
    for index in range(workers):
        config = tf_config_from_indexed_job(pod_environ(container, name, index))
        assert config == {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}


def test_s3_overlay_points_at_a_custom_endpoint_with_path_addressing() -> None:
    data = the_one(render("s3-custom-endpoint"), "ConfigMap")["data"]
    assert data["S3_ENDPOINT_URL"].startswith("https://")
    assert data["S3_ADDRESSING_STYLE"] == "path"
    assert data["ARTIFACT_URI"].startswith("s3://")


def test_render_sets_the_image_the_run_and_the_queue(tmp_path: Path) -> None:
    settings = {"IMAGE": "registry.internal:5000/ml/trainer:1.2.3", "RUN_ID": "effnet-run-2",
                "QUEUE": "team-a"}
    objects = render("single-gpu", **settings)
    job = the_one(objects, "Job")
    assert job["metadata"]["name"] == "effnet-run-2"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert trainer_container(objects)["image"] == "registry.internal:5000/ml/trainer:1.2.3"
    validate(render_text("single-gpu", **settings), tmp_path)
    digest = "sha256:" + "0" * 64
    pinned = render("single-gpu", IMAGE=f"registry.internal/trainer@{digest}")
    assert trainer_container(pinned)["image"] == f"registry.internal/trainer@{digest}"


def test_render_refuses_a_run_id_that_is_no_job_name() -> None:
    result = subprocess.run([str(K8S / "render.sh"), "single-gpu"], capture_output=True,
                            text=True, env={**os.environ, "RUN_ID": "Not_A_Job_Name"})
    assert result.returncode == 2 and "RUN_ID" in result.stderr


def test_kueue_component_labels_the_job(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(K8S / 'overlays' / 'single-gpu', tmp_path)}\n"
        f"components:\n  - {os.path.relpath(K8S / 'components' / 'kueue', tmp_path)}\n")
    text = subprocess.run(["kubectl", "kustomize", str(tmp_path)], check=True,
                          capture_output=True, text=True).stdout
    job = the_one([d for d in yaml.safe_load_all(text) if d], "Job")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_k8s_render_passes_the_run_and_the_image() -> None:
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "k8s-render", "OVERLAY=multi-node",
         "RUN_ID=run-from-make", "IMAGE=registry.internal/trainer:9"],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    assert the_one(objects, "Job")["metadata"]["name"] == "run-from-make"
    assert trainer_container(objects)["image"] == "registry.internal/trainer:9"
    assert pod_spec(objects)["subdomain"] == the_one(objects, "Service")["metadata"]["name"]

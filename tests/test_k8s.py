"""Kubernetes manifests, checked offline (there is no API server here).

    .venv/bin/python -m pytest tests/test_k8s.py tests/test_k8s_*.py

This module renders and validates, and checks what every overlay shares; how the controllers
treat the rendered objects (failures, restarts, names, Kubeflow Trainer's merge) is in
tests/test_k8s_failures.py, test_k8s_names.py and test_k8s_trainer.py, with the emulations of
tests/k8s_controllers.py.

Every overlay in k8s/overlays, and the Kubeflow Trainer runtimes in k8s/kubeflow-trainer, is
rendered by `kubectl kustomize`. Built-in objects are validated with `kubernetes-validate
--strict` against every Kubernetes minor from 1.31 to 1.37, and so is every Job that a JobSet or
a runtime embeds (as the batch/v1 Job that JobSet makes of it). The custom resources themselves
(JobSet, TrainJob, ClusterTrainingRuntime) are checked against the typed models of their APIs
(the kubeflow-trainer-api package) and the rules of their controllers. The policies are checked
by this module's own assertions on the rendered objects (checkov is not used, so no policy is
skipped):
- failure handling: the Job validation rules that a schema does not carry; `restartPolicy:
  Never`; `podReplacementPolicy: Failed`; a retry budget, `activeDeadlineSeconds`,
  `ttlSecondsAfterFinished`; a grace period >= 60 s (what the policies do: test_k8s_failures.py);
- the restricted Pod Security Standard: runAsNonRoot with the image's numeric user, seccomp
  RuntimeDefault, no privilege escalation, ALL capabilities dropped and none added, no host
  namespaces, ports or privileged mode, only the volume types it allows; plus a read-only root
  filesystem with emptyDirs where the job writes (/tmp, KERAS_HOME, ./runs);
- GPUs and resources: an `nvidia.com/gpu` limit, the GPU taint's toleration, cpu and memory
  requests and limits;
- credentials: no Secret object and no secret-looking variable with a literal value; the
  credentials file lies in a mounted Secret volume;
- RUN_ID (and JOB_NAME) from the workload's name through the downward API;
- multi-node (Indexed Job, JobSet, TrainJob): each pod's environment, built as Kubernetes, JobSet
  and Kubeflow Trainer build it, resolved through load_settings and trainer.cluster.specs.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from conftest import missing_tool, unless_ci
from k8s_controllers import job_spec_errors, trainer_jobset

# No TensorFlow in these.
from trainer.cluster.specs import resolve_cluster, tf_config_from_indexed_job
from trainer.settings import OPTIONS, default_of, load_settings

OPTIONS_BY_VARIABLE = {option.variable: option for option in OPTIONS}

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
OVERLAYS = sorted(p.name for p in (K8S / "overlays").iterdir() if p.is_dir())
# The Kubernetes minors that managed clusters run, each validated.
MINORS = [f"1.{minor}" for minor in range(31, 38)]
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
SECRET_WORDS = ("SECRET", "KEY", "TOKEN", "PASSWORD", "CREDENTIAL")
# The volume types the restricted Pod Security Standard allows.
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                      "persistentVolumeClaim", "projected", "secret"}
CUSTOM_KINDS = {"JobSet": "jobset.x-k8s.io/v1alpha2",
                "TrainJob": "trainer.kubeflow.org/v1alpha1",
                "ClusterTrainingRuntime": "trainer.kubeflow.org/v1alpha1"}
# kubernetes-sigs/jobset api/jobset/v1alpha2/jobset_types.go: FailurePolicyAction's values and
# the pattern of a rule's name; pkg/webhooks/jobset_webhook.go: the Job failure reasons a rule
# may name (validOnJobFailureReasons).
JOBSET_ACTIONS = {"FailJobSet", "RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts",
                  "RestartJob", "RestartJobAndIgnoreMaxRestarts"}
JOBSET_RULE_NAME = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")
JOB_FAILURE_REASONS = {"BackoffLimitExceeded", "DeadlineExceeded", "FailedIndexes",
                       "MaxFailedIndexesExceeded", "PodFailurePolicy"}
# kubeflow/trainer pkg/constants/constants.go: the ancestor label, the containers that the
# runtime webhook (pkg/webhooks/trainingruntime_webhook.go) requires for each ancestor, and the
# initializers' volume (pkg/runtime/framework/plugins/jobset/constants) and download folders.
ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
ANCESTOR_CONTAINERS = {"trainer": "node", "dataset-initializer": "dataset-initializer",
                       "model-initializer": "model-initializer"}
INITIALIZER_VOLUME = "initializer"
DATASET_MOUNT_PATH, MODEL_MOUNT_PATH = "/workspace/dataset", "/workspace/model"

pytestmark = unless_ci(shutil.which("kubectl") is None,
                       "kubectl (with kustomize) is not installed")


def dockerfile_env(name: str) -> str:
    match = re.search(rf"\b{name}=(\S+)", (REPO / "Dockerfile").read_text())
    assert match, name
    return match.group(1)


def dockerfile_workdir() -> str:
    return re.findall(r"^WORKDIR (\S+)$", (REPO / "Dockerfile").read_text(), re.MULTILINE)[-1]


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


@functools.cache
def runtimes_text() -> str:
    return subprocess.run(["kubectl", "kustomize", str(K8S / "kubeflow-trainer")], check=True,
                          capture_output=True, text=True).stdout


def runtimes() -> dict[str, dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(runtimes_text()) if doc]
    assert {doc["kind"] for doc in docs} == {"ClusterTrainingRuntime"}
    return {doc["metadata"]["name"]: doc for doc in docs}


def the_one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]


def trainer_job_of(jobset_spec: dict[str, Any]) -> dict[str, Any]:
    """The replicated job that runs the trainer: `workers`, or Trainer's ancestor `trainer`."""
    (replicated,) = [r for r in jobset_spec["replicatedJobs"]
                     if r["name"] == "workers"
                     or r["template"].get("metadata", {}).get("labels", {}).get(
                         ANCESTOR_LABEL) == "trainer"]
    return replicated


@dataclass
class Workload:
    """What runs the trainer: a Job, a JobSet, or a TrainJob with the JobSet made of it."""

    kind: str
    metadata: dict[str, Any]
    job: dict[str, Any]  # the trainer's batch/v1 JobSpec
    jobset: dict[str, Any] | None = None  # the JobSet's spec (a runtime's template.spec)
    replicated_job: str | None = None

    @property
    def name(self) -> str:
        return self.metadata["name"]

    @property
    def pod(self) -> dict[str, Any]:
        return self.job["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod["containers"]
        assert container["name"] == ("node" if self.kind == "TrainJob" else "trainer")
        return container


def workload(objects: list[dict[str, Any]]) -> Workload:
    kinds = [o["kind"] for o in objects if o["kind"] in ("Job", "JobSet", "TrainJob")]
    assert len(kinds) == 1, kinds
    (kind,) = kinds
    obj = the_one(objects, kind)
    if kind == "Job":
        return Workload(kind, obj["metadata"], obj["spec"])
    if kind == "JobSet":
        jobset = obj["spec"]
    else:  # the JobSet that Kubeflow Trainer makes of the TrainJob and its runtime
        jobset = trainer_jobset(obj, runtimes()[obj["spec"]["runtimeRef"]["name"]])
    replicated = trainer_job_of(jobset)
    return Workload(kind, obj["metadata"], replicated["template"]["spec"], jobset,
                    replicated["name"])


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return workload(objects).pod


def trainer_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return workload(objects).container


def embedded_jobs(owner: str, jobset_spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The batch/v1 Jobs that JobSet makes of a JobSet spec (job index 0 of each)."""
    return [{"apiVersion": "batch/v1", "kind": "Job",
             "metadata": {"name": f"{owner}-{replicated['name']}-0",
                          **{k: v for k, v in replicated["template"].get("metadata", {}).items()
                             if k in ("labels", "annotations")}},
             "spec": replicated["template"]["spec"]}
            for replicated in jobset_spec["replicatedJobs"]]


def validate(objects: list[dict[str, Any]], folder: Path) -> None:
    """kubernetes-validate --strict on every minor in MINORS, in one process: built-in objects as
    they are, a JobSet (and the one Trainer makes of a TrainJob) as its Jobs; every object must
    have a schema (no custom kind slips by)."""
    validator = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent))
    validator = validator or shutil.which("kubernetes-validate")
    if validator is None:
        missing_tool("kubernetes-validate is not installed (the dev extra has it)")
    from kubernetes_validate.utils import all_versions

    bundled = {version.rsplit(".", 1)[0]: version for version in all_versions()}
    assert set(MINORS) <= set(bundled), f"kubernetes-validate bundles only {sorted(bundled)}"
    documents = []
    for obj in objects:
        if obj["kind"] == "JobSet":
            documents += embedded_jobs(obj["metadata"]["name"], obj["spec"])
        elif obj["kind"] == "ClusterTrainingRuntime":
            documents += embedded_jobs("trainjob", obj["spec"]["template"]["spec"])
        elif obj["kind"] == "TrainJob":  # as the JobSet that Trainer makes of it
            documents += embedded_jobs(obj["metadata"]["name"], trainer_jobset(
                obj, runtimes()[obj["spec"]["runtimeRef"]["name"]]))
        elif obj["kind"] not in CUSTOM_KINDS:
            documents.append(obj)
    assert documents
    (folder / "rendered.yaml").write_text(yaml.safe_dump_all(documents))
    versions = [arg for minor in MINORS for arg in ("-k", bundled[minor])]
    result = subprocess.run([validator, "--strict", "--quiet", *versions,
                             str(folder / "rendered.yaml")], capture_output=True, text=True)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def check_api_types(obj: dict[str, Any]) -> None:
    """A custom resource as its API's typed models read it: every field known, of its type."""
    from kubeflow_trainer_api import models  # the dev extra's typed API models
    model = {"JobSet": models.JobsetV1alpha2JobSet,
             "TrainJob": models.TrainerV1alpha1TrainJob,
             "ClusterTrainingRuntime": models.TrainerV1alpha1ClusterTrainingRuntime}[obj["kind"]]
    assert obj["apiVersion"] == CUSTOM_KINDS[obj["kind"]]
    # The models drop what they do not know: a round trip that changes nothing is a match.
    assert model.from_dict(obj).to_dict() == obj


def check_jobset_failure_policy(jobset: dict[str, Any]) -> None:
    """What JobSet's webhook accepts (what the rules do: test_k8s_failures.py)."""
    policy = jobset["failurePolicy"]
    assert policy["maxRestarts"] >= 1
    names = [rule["name"] for rule in policy["rules"]]
    assert len(set(names)) == len(names)
    for rule in policy["rules"]:
        assert rule["action"] in JOBSET_ACTIONS and JOBSET_RULE_NAME.fullmatch(rule["name"])
        assert set(rule["onJobFailureReasons"]) <= JOB_FAILURE_REASONS
        for pattern in rule.get("onJobFailureMessagePatterns", []):
            re.compile(pattern)  # RE2's syntax, here a subset that Python reads alike
    assert jobset["network"]["enableDNSHostnames"] is True
    assert jobset["network"].get("publishNotReadyAddresses", True) is True


# --- every overlay ---


def test_the_overlays() -> None:
    assert OVERLAYS == ["jobset", "multi-gpu", "multi-node", "s3-custom-endpoint", "single-gpu",
                        "sweep", "trainjob", "trainjob-initializers"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_valid_on_every_kubernetes_in_service(overlay: str, tmp_path: Path) -> None:
    objects = render(overlay)
    validate(objects, tmp_path)
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            check_api_types(obj)


def test_the_runtimes_are_valid_on_every_kubernetes_in_service(tmp_path: Path) -> None:
    validate(list(runtimes().values()), tmp_path)
    for runtime in runtimes().values():
        check_api_types(runtime)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_failure_policy_and_lifetime(overlay: str) -> None:
    work = workload(render(overlay))
    spec = work.job
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    assert spec["podReplacementPolicy"] == "Failed"
    assert spec["activeDeadlineSeconds"] > 0
    grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 60
    # The job knows its grace period, and spends most of it on the upload after SIGTERM.
    told = {e["name"]: e.get("value") for e in work.container["env"]}
    assert told["TERMINATION_GRACE_SECONDS"] == str(grace)
    assert job_spec_errors(spec) == []
    # `status` is required before Kubernetes 1.35 (kubernetes/kubernetes#131512).
    assert {"type": "DisruptionTarget", "status": "True"} in [
        pattern for rule in spec["podFailurePolicy"]["rules"]
        for pattern in rule.get("onPodConditions", [])]
    if work.kind == "Job":
        assert spec.get("backoffLimit", spec.get("backoffLimitPerIndex")) >= 1
        assert spec["ttlSecondsAfterFinished"] > 0
    else:
        assert spec["backoffLimit"] == 0 and "ttlSecondsAfterFinished" not in spec
        check_jobset_failure_policy(work.jobset)
    if work.kind == "JobSet":
        assert work.jobset["ttlSecondsAfterFinished"] > 0
    if work.kind == "TrainJob":  # the TrainJob owns its JobSet: no TTL may delete it under it
        assert "ttlSecondsAfterFinished" not in work.jobset


def check_restricted(pod: dict[str, Any], user: int, read_only_root: bool = True) -> None:
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == user > 0 and security["runAsGroup"] > 0
    assert security["fsGroup"] > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        assert pod.get(field, False) is False, field
    for volume in pod.get("volumes", []):
        assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, volume
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context.get("privileged", False) is False
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
        assert context.get("readOnlyRootFilesystem", False) is read_only_root
        assert context.get("runAsUser", user) == user
        assert context.get("runAsNonRoot", True) is True
        assert all("hostPort" not in port for port in container.get("ports", []))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_restricted_pod_security_standard(overlay: str) -> None:
    work = workload(render(overlay))
    check_restricted(work.pod, dockerfile_user())
    # Every other pod of a JobSet (Trainer's initializers) is restricted too; theirs are images
    # that write their downloads, so their root filesystem is theirs to write.
    for replicated in (work.jobset or {}).get("replicatedJobs", []):
        if replicated["name"] != work.replicated_job:
            check_restricted(replicated["template"]["spec"]["template"]["spec"],
                             dockerfile_user(), read_only_root=False)


def test_jobset_and_runtimes_run_the_base_jobs_pod() -> None:
    """Same image, resources, security, volumes and failure rules as the base Job."""
    base = the_one([d for d in yaml.safe_load_all(subprocess.run(
        ["kubectl", "kustomize", str(K8S / "base")], check=True, capture_output=True,
        text=True).stdout) if d], "Job")["spec"]
    pods = [workload(render("jobset")), workload(render("trainjob"))]
    pods += [Workload("TrainJob", {"name": name}, trainer_job_of(r["spec"]["template"]["spec"])[
        "template"]["spec"], r["spec"]["template"]["spec"]) for name, r in runtimes().items()]
    for work in pods:
        for field in ("securityContext", "tolerations", "terminationGracePeriodSeconds",
                      "restartPolicy", "automountServiceAccountToken", "volumes"):
            assert work.pod[field] == base["template"]["spec"][field], (work.name, field)
        (base_container,) = base["template"]["spec"]["containers"]
        for field in ("image", "resources", "securityContext"):
            assert work.container[field] == base_container[field], (work.name, field)
        mounts = [m for m in work.container["volumeMounts"] if m["name"] != INITIALIZER_VOLUME]
        assert mounts == base_container["volumeMounts"]
        assert work.job["activeDeadlineSeconds"] == base["activeDeadlineSeconds"]
        # The same rules, which fail the Job where the base ignores a pod (JobSet restarts).
        policy = copy.deepcopy(base["podFailurePolicy"])
        for rule in policy["rules"]:
            rule["action"] = "FailJob"
            if "onExitCodes" in rule:
                rule["onExitCodes"]["containerName"] = work.container["name"]
        assert work.job["podFailurePolicy"] == policy


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_writable_folders_are_empty_dirs(overlay: str) -> None:
    work = workload(render(overlay))
    volumes = {v["name"]: v for v in work.pod["volumes"]}
    mounts = {m["mountPath"]: volumes.get(m["name"], {}) for m in work.container["volumeMounts"]}
    # The default ARTIFACT_URI (./runs) under the image's WORKDIR; WORK_DIR's default in /tmp.
    artifact_uri = default_of(OPTIONS_BY_VARIABLE["ARTIFACT_URI"])
    runs = str(PurePosixPath(dockerfile_workdir()) / artifact_uri)
    writable = ["/tmp", dockerfile_env("KERAS_HOME"), runs]
    assert default_of(OPTIONS_BY_VARIABLE["WORK_DIR"]).startswith("/tmp/")
    assert dockerfile_env("MPLCONFIGDIR").startswith("/tmp/")
    for path in writable:
        assert "emptyDir" in mounts[path], path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gpus_and_resources(overlay: str) -> None:
    work = workload(render(overlay))
    resources = work.container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert "nvidia.com/gpu" not in resources.get("requests", {}) or (
        resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"])
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in work.pod[
        "tolerations"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(resources[kind]), kind


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_credentials_inline(overlay: str) -> None:
    objects = render(overlay)
    assert not [o for o in objects if o["kind"] == "Secret"]
    work = workload(objects)
    variables = list(work.container["env"])
    if work.kind == "TrainJob":
        variables += the_one(objects, "TrainJob")["spec"]["trainer"].get("env", [])
    for item in variables:
        if any(word in item["name"] for word in SECRET_WORDS) and not item["name"].endswith(
                "_FILE"):
            assert "value" not in item, f"{item['name']} has a literal value"
    for config in (o for o in objects if o["kind"] == "ConfigMap"):
        for key in config.get("data", {}):
            assert not any(word in key for word in SECRET_WORDS), f"ConfigMap key {key}"
    # The credentials file, when there is one, comes from a Secret mounted read-only.
    volumes = {v["name"]: v for v in work.pod["volumes"]}
    path = {e["name"]: e for e in work.container["env"]}["AWS_SHARED_CREDENTIALS_FILE"]["value"]
    (mount,) = [m for m in work.container["volumeMounts"]
                if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True and "secretName" in volumes[mount["name"]]["secret"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_run_id_is_the_workloads_name(overlay: str) -> None:
    work = workload(render(overlay))
    env = {e["name"]: e for e in work.container["env"]}
    name_label = JOB_NAME_LABEL if work.kind == "Job" else JOBSET_NAME_LABEL
    assert env["RUN_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == f"metadata.labels['{name_label}']"
    job_name = env["JOB_NAME"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert job_name == f"metadata.labels['{JOB_NAME_LABEL}']"
    assert work.name == f"trainer-{overlay}"
    assert work.container["image"].startswith("registry.example.com/trainer:")


def test_multi_gpu_has_all_gpus_and_a_memory_backed_dev_shm() -> None:
    objects = render("multi-gpu")
    volumes = {v["name"]: v for v in pod_spec(objects)["volumes"]}
    (shm,) = [m for m in trainer_container(objects)["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[shm["name"]]["emptyDir"]["medium"] == "Memory"
    assert int(trainer_container(objects)["resources"]["limits"]["nvidia.com/gpu"]) > 1


# --- the pods' environments, as Kubernetes, JobSet and Kubeflow Trainer build them ---


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


def container_environ(container: dict[str, Any], labels: dict[str, str], index: int,
                      config_maps: dict[str, dict[str, str]] | None = None) -> dict[str, str]:
    """The variables the container of Indexed Job pod `index` sees: its ConfigMaps' (envFrom;
    left out without `config_maps`),
    then its env (literal values with $(VAR) expanded from those before, as Kubernetes does, and
    downward-API fields from the pod's labels and annotations), then JOB_COMPLETION_INDEX."""
    annotations = {COMPLETION_INDEX: str(index)}
    environ: dict[str, str] = {}
    for source in container.get("envFrom", []) if config_maps is not None else ():
        environ.update(config_maps[source["configMapRef"]["name"]])
    for item in container.get("env", []):
        if "value" in item:
            environ[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: environ.get(m[1], m[0]),
                                           item["value"])
            continue
        field = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]",
                             item["valueFrom"]["fieldRef"]["fieldPath"])
        assert field, item
        environ[item["name"]] = (labels if field[1] == "labels" else annotations)[field[2]]
    environ["JOB_COMPLETION_INDEX"] = str(index)  # what Kubernetes adds in an Indexed Job
    return environ


def pod_environ(container: dict[str, Any], job_name: str, index: int) -> dict[str, str]:
    """A plain Indexed Job's pod (the ConfigMap's variables aside)."""
    return container_environ(container, {JOB_NAME_LABEL: job_name}, index)


def config_maps(objects: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    return {o["metadata"]["name"]: o["data"] for o in objects if o["kind"] == "ConfigMap"}


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


def check_cluster(environs: list[dict[str, str]], run_id: str, hosts: list[str]) -> None:
    """Each pod's environment through load_settings and resolve_cluster: one run, one cluster
    of every pod's host, pod 0 the one that writes."""
    for index, environ in enumerate(environs):
        settings = load_settings(environ)
        assert settings.run_id == run_id
        cluster, _ = resolve_cluster(environ)
        assert cluster.addresses == tuple(hosts)
        assert cluster.address == hosts[index]
        assert cluster.is_chief == (index == 0)


@pytest.mark.parametrize("run_id", [None, "resnet50-cifar10-7"])
def test_jobset_pods_resolve_one_run_across_its_workers(run_id: str | None) -> None:
    objects = render("jobset", **({"RUN_ID": run_id} if run_id else {}))
    work = workload(objects)
    name = work.name
    assert name == (run_id or "trainer-jobset")
    (replicated,) = work.jobset["replicatedJobs"]
    assert replicated["replicas"] == 1
    count = work.job["completions"]
    assert count == work.job["parallelism"] > 1 and work.job["completionMode"] == "Indexed"
    # JobSet names the child Job <jobset>-<replicatedJob>-<jobIndex> (label job-name) and labels
    # its pods with the JobSet's name, which is the subdomain of its headless Service.
    labels = {JOB_NAME_LABEL: f"{name}-{replicated['name']}-0", JOBSET_NAME_LABEL: name}
    subdomain = work.jobset["network"].get("subdomain") or name
    (port,) = work.container["ports"]
    hosts = [f"{name}-{replicated['name']}-0-{i}.{subdomain}:{port['containerPort']}"
             for i in range(count)]
    environs = [container_environ(work.container, labels, i, config_maps(objects))
                for i in range(count)]
    check_cluster(environs, name, hosts)
    # The settings of the ConfigMap reach the pods.
    assert load_settings(environs[0]).dataset == the_one(objects, "ConfigMap")["data"]["DATASET"]


def trainer_pods(trainjob: dict[str, Any]) -> tuple[list[dict[str, str]], list[str]]:
    """Each `node` pod's environment and host, in the JobSet that Kubeflow Trainer makes of the
    TrainJob (k8s_controllers.trainer_jobset) with the host names JobSet gives its pods
    (trainer's plugins/jobset/jobset.go IdentifyPodNetwork)."""
    name = trainjob["metadata"]["name"]
    jobset = trainer_jobset(trainjob, runtimes()[trainjob["spec"]["runtimeRef"]["name"]])
    replicated = trainer_job_of(jobset)
    count = replicated["template"]["spec"]["completions"]
    (container,) = replicated["template"]["spec"]["template"]["spec"]["containers"]
    assert container["name"] == ANCESTOR_CONTAINERS["trainer"]
    labels = {JOB_NAME_LABEL: f"{name}-{replicated['name']}-0", JOBSET_NAME_LABEL: name}
    subdomain = jobset.get("network", {}).get("subdomain") or name
    (port,) = [p for p in container["ports"] if p["name"] == "worker"]
    hosts = [f"{name}-{replicated['name']}-0-{i}.{subdomain}:{port['containerPort']}"
             for i in range(count)]
    return [container_environ(container, labels, i) for i in range(count)], hosts


@pytest.mark.parametrize("settings", [{}, {"RUN_ID": "resnet50-cifar10-7"}])
def test_trainjob_pods_resolve_one_run_of_num_nodes_workers(settings: dict[str, str]) -> None:
    objects = render("trainjob", **settings)
    trainjob = the_one(objects, "TrainJob")
    name = trainjob["metadata"]["name"]
    assert name == settings.get("RUN_ID", "trainer-trainjob")
    # The runtime's pods use the ServiceAccount that the overlay creates in the namespace.
    account = the_one(objects, "ServiceAccount")["metadata"]["name"]
    assert workload(objects).pod["serviceAccountName"] == account
    for num_nodes in (trainjob["spec"]["trainer"]["numNodes"], 3):
        trainjob["spec"]["trainer"]["numNodes"] = num_nodes
        environs, hosts = trainer_pods(trainjob)
        assert len(hosts) == num_nodes > 1
        check_cluster(environs, name, hosts)
    settings_of_pod = load_settings(environs[0])
    given = {e["name"]: e["value"] for e in trainjob["spec"]["trainer"]["env"]}
    assert (settings_of_pod.dataset, settings_of_pod.artifact_uri) == (
        given["DATASET"], given["ARTIFACT_URI"])


# --- overlays' details and rendering ---


def test_s3_overlay_points_at_a_custom_endpoint_with_path_addressing() -> None:
    data = the_one(render("s3-custom-endpoint"), "ConfigMap")["data"]
    assert data["S3_ENDPOINT_URL"].startswith("https://")
    assert data["S3_ADDRESSING_STYLE"] == "path"
    assert data["ARTIFACT_URI"].startswith("s3://")


def test_trainjobs_settings_are_the_bases() -> None:
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    literals = dict(line.split("=", 1) for line in base["configMapGenerator"][0]["literals"])
    env = the_one(render("trainjob"), "TrainJob")["spec"]["trainer"]["env"]
    assert {e["name"]: e["value"] for e in env} == literals


@pytest.mark.parametrize("overlay", ["single-gpu", "jobset", "trainjob"])
def test_render_sets_the_image_the_run_the_queue_and_the_priority(overlay: str,
                                                                   tmp_path: Path) -> None:
    settings = {"IMAGE": "registry.internal:5000/ml/trainer:1.2.3", "RUN_ID": "effnet-run-2",
                "QUEUE": "team-a", "PRIORITY": "high-priority"}
    objects = render(overlay, **settings)
    work = workload(objects)
    assert work.name == "effnet-run-2"
    assert work.metadata["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert work.metadata["labels"]["kueue.x-k8s.io/priority-class"] == "high-priority"
    image = (the_one(objects, "TrainJob")["spec"]["trainer"]["image"] if work.kind == "TrainJob"
             else work.container["image"])
    assert image == "registry.internal:5000/ml/trainer:1.2.3"
    validate(objects, tmp_path)
    digest = "sha256:" + "0" * 64
    pinned = workload(render("single-gpu", IMAGE=f"registry.internal/trainer@{digest}"))
    assert pinned.container["image"] == f"registry.internal/trainer@{digest}"


@pytest.mark.parametrize(("overlay", "settings", "named"), [
    ("single-gpu", {"RUN_ID": "Not_A_Job_Name"}, "RUN_ID"),
    # JobSet names its Jobs and pods after it: DNS-1035 labels, a letter first.
    ("jobset", {"RUN_ID": "20261128-resnet50"}, "RUN_ID"),
    ("trainjob", {"RUN_ID": "7-resnet50"}, "RUN_ID"),
    ("single-gpu", {"PRIORITY": "High"}, "PRIORITY"),
    ("single-gpu", {"QUEUE": "team a"}, "QUEUE"),
])
def test_render_refuses_names_kubernetes_would(overlay: str, settings: dict, named: str) -> None:
    """The characters; the lengths are test_k8s_names.py's."""
    result = subprocess.run([str(K8S / "render.sh"), overlay], capture_output=True,
                            text=True, env={**os.environ, **settings})
    assert result.returncode == 2 and result.stderr.startswith(named), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("overlay", ["single-gpu", "jobset", "trainjob"])
def test_kueue_component_labels_the_workload(overlay: str, tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {os.path.relpath(K8S / 'overlays' / overlay, tmp_path)}\n"
        f"components:\n  - {os.path.relpath(K8S / 'components' / 'kueue', tmp_path)}\n")
    text = subprocess.run(["kubectl", "kustomize", str(tmp_path)], check=True,
                          capture_output=True, text=True).stdout
    work = workload([d for d in yaml.safe_load_all(text) if d])
    assert work.metadata["labels"]["kueue.x-k8s.io/queue-name"]


@unless_ci(shutil.which("make") is None, "make is not installed")
def test_make_k8s_render_passes_the_run_the_image_and_the_priority() -> None:
    result = subprocess.run(
        ["make", "-s", "--no-print-directory", "k8s-render", "OVERLAY=multi-node",
         "RUN_ID=run-from-make", "IMAGE=registry.internal/trainer:9", "PRIORITY=low"],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    objects = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    job = the_one(objects, "Job")
    assert job["metadata"]["name"] == "run-from-make"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "low"
    assert trainer_container(objects)["image"] == "registry.internal/trainer:9"
    assert pod_spec(objects)["subdomain"] == the_one(objects, "Service")["metadata"]["name"]


@unless_ci(shutil.which("make") is None, "make is not installed")
@pytest.mark.parametrize(("overlay", "selector"), [
    ("multi-node", f"{JOB_NAME_LABEL}=run-9"), ("jobset", f"{JOBSET_NAME_LABEL}=run-9"),
    ("trainjob", f"{JOBSET_NAME_LABEL}=run-9"),
    ("trainjob-initializers", f"{JOBSET_NAME_LABEL}=run-9")])
def test_make_k8s_logs_selects_the_runs_pods(overlay: str, selector: str) -> None:
    result = subprocess.run(["make", "-n", "--no-print-directory", "k8s-logs",
                             f"OVERLAY={overlay}", "RUN_ID=run-9"], cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert f"--selector {selector}" in result.stdout


"""What the controllers do with the rendered manifests: small emulations, each written from the
controller's own source (cited per function), that tests/test_k8s*.py run over the objects
`kubectl kustomize` renders. There is no API server here; these read the objects the way
Kubernetes' Job controller and API validation (1.31-1.37), JobSet (v0.12.0) and Kubeflow Trainer
(v2.3.0) read them, and answer what happens: which rule a failed pod matches, what the Job's
Failed condition says, what JobSet does about it, the JobSet that Trainer makes of a TrainJob.
(The names each controller generates from the workload's name: tests/test_k8s_names.py.)
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from typing import Any

ANCESTOR_LABEL = "trainer.kubeflow.org/trainjob-ancestor-step"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


# --- Kubernetes: a Job's pod failure policy and its Failed condition ---


@dataclass(frozen=True)
class FailedPod:
    """A pod in phase Failed: its container's exit code and whether it has the
    DisruptionTarget condition (preemption, eviction, a node drain or shutdown)."""

    container: str
    exit_code: int
    disrupted: bool = False
    name: str = "ns/pod"


@dataclass(frozen=True)
class Match:
    action: str | None  # None: no rule matched
    message: str | None  # FailJob's message, which becomes the Job's Failed condition's
    counted: bool  # towards backoffLimit (and backoffLimitPerIndex)


def match_pod_failure_policy(policy: dict[str, Any] | None, pod: FailedPod) -> Match:
    """kubernetes pkg/controller/job/pod_failure_policy.go matchPodFailurePolicy: the rules in
    order, the first that matches decides; onExitCodes skips exit code 0 and a container of
    another name; onPodConditions needs the condition's type and status."""
    if policy is None:
        return Match(None, None, True)
    for index, rule in enumerate(policy["rules"]):
        action = rule["action"]
        if "onExitCodes" in rule:
            requirement = rule["onExitCodes"]
            if requirement.get("containerName", pod.container) != pod.container:
                continue
            inside = pod.exit_code in requirement["values"]
            if pod.exit_code == 0 or inside != (requirement["operator"] == "In"):
                continue
            message = (f"Container {pod.container} for pod {pod.name} failed with exit code "
                       f"{pod.exit_code} matching {action} rule at index {index}")
        else:
            patterns = rule["onPodConditions"]
            if not (pod.disrupted and {"type": "DisruptionTarget", "status": "True"} in patterns):
                continue
            message = (f"Pod {pod.name} has condition DisruptionTarget matching {action} rule "
                       f"at index {index}")
        return Match(action, message if action == "FailJob" else None, action != "Ignore")
    return Match(None, None, True)


def job_failure(spec: dict[str, Any], failing: list[FailedPod]) -> tuple[str, str] | None:
    """The (reason, message) of the Failed condition that the Job controller gives a Job whose
    pods fail one after another in `failing` order, each sync seeing the pods failed so far
    (kubernetes pkg/controller/job/job_controller.go syncJob: getFailJobMessage, the first
    failed pod matching a FailJob rule, wins over exceedsBackoffLimit, the counted failures
    beyond backoffLimit); None while the Job still replaces its pods."""
    policy, failed = spec.get("podFailurePolicy"), []
    for pod in failing:
        failed.append(pod)
        for seen in failed:
            matched = match_pod_failure_policy(policy, seen)
            if matched.action == "FailJob":
                assert matched.message
                return "PodFailurePolicy", matched.message
        if sum(match_pod_failure_policy(policy, p).counted for p in failed) > spec.get(
                "backoffLimit", 6):
            return "BackoffLimitExceeded", "Job has reached the specified backoff limit"
    return None


@dataclass
class IndexedRun:
    """What became of each index of an Indexed Job, and its final condition."""

    succeeded: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    pods: dict[int, int] = field(default_factory=dict)  # index: pods it ran
    condition: tuple[str, str] = ("", "")  # (type, reason)


def run_indexed_job(spec: dict[str, Any],
                    outcomes: dict[int, list[FailedPod | None]]) -> IndexedRun:
    """An Indexed Job run to its end, index by index (lowest first, as the controller creates
    them), each index's pods ending as `outcomes` lists (None: succeeded; an index not listed
    succeeds at once). kubernetes pkg/controller/job/indexed_job_utils.go and backoff_utils.go:
    with backoffLimitPerIndex, failures count per index (Ignore not), FailIndex fails the index
    at once, a count beyond backoffLimitPerIndex fails it, and the other indexes go on; the Job
    then ends Failed with reason FailedIndexes (MaxFailedIndexesExceeded past maxFailedIndexes).
    FailJob, or counted failures beyond backoffLimit, end the Job: indexes not finished never
    finish (running pods are terminated, pending ones never start)."""
    policy, per_index = spec.get("podFailurePolicy"), spec.get("backoffLimitPerIndex")
    run, total = IndexedRun(), 0
    for index in range(spec["completions"]):
        counted = 0
        run.pods[index] = 0
        for pod in outcomes.get(index, [None]):
            run.pods[index] += 1
            if pod is None:
                run.succeeded.add(index)
                break
            matched = match_pod_failure_policy(policy, pod)
            if matched.action == "FailJob":
                run.condition = ("Failed", "PodFailurePolicy")
                return run
            counted += matched.counted
            total += matched.counted
            if matched.action == "FailIndex" or (per_index is not None and counted > per_index):
                run.failed.add(index)
                break
            default_limit = 2**31 - 1 if per_index is not None else 6  # apis/batch/v1 defaults
            if total > spec.get("backoffLimit", default_limit):
                run.condition = ("Failed", "BackoffLimitExceeded")
                return run
        else:
            raise AssertionError(f"index {index}: give outcomes that end it")
        if len(run.failed) > spec.get("maxFailedIndexes", spec["completions"]):
            run.condition = ("Failed", "MaxFailedIndexesExceeded")
            return run
    run.condition = ("Failed", "FailedIndexes") if run.failed else ("Complete", "")
    return run


def job_spec_errors(spec: dict[str, Any]) -> list[str]:
    """The rules of kubernetes pkg/apis/batch/validation/validation.go validateJobSpec that a
    schema does not carry (kubernetes-validate checks the schema)."""
    errors = []
    pod = spec["template"]["spec"]
    containers = {c["name"] for c in pod["containers"] + pod.get("initContainers", [])}
    indexed = spec.get("completionMode") == "Indexed"
    if indexed and "completions" not in spec:
        errors.append("completions: required when completion mode is Indexed")
    for name in ("backoffLimitPerIndex", "maxFailedIndexes"):
        if name in spec and not indexed:
            errors.append(f"{name}: requires indexed completion mode")
    if "maxFailedIndexes" in spec and "backoffLimitPerIndex" not in spec:
        errors.append("backoffLimitPerIndex: required when maxFailedIndexes is specified")
    policy = spec.get("podFailurePolicy")
    if policy is None:
        return errors
    if pod.get("restartPolicy") != "Never":
        errors.append("restartPolicy: only Never is supported when podFailurePolicy is specified")
    if spec.get("podReplacementPolicy", "Failed") != "Failed":
        errors.append("podReplacementPolicy: must be Failed when podFailurePolicy is used")
    for index, rule in enumerate(policy["rules"]):
        if rule["action"] not in ("Count", "FailIndex", "FailJob", "Ignore"):
            errors.append(f"rules[{index}].action: {rule['action']} is not supported")
        if rule["action"] == "FailIndex" and "backoffLimitPerIndex" not in spec:
            errors.append(f"rules[{index}].action: FailIndex requires backoffLimitPerIndex")
        if ("onExitCodes" in rule) == ("onPodConditions" in rule):
            errors.append(f"rules[{index}]: one of onExitCodes and onPodConditions")
        exits = rule.get("onExitCodes")
        if exits:
            values = exits["values"]
            if exits.get("containerName", next(iter(containers))) not in containers:
                errors.append(f"rules[{index}].onExitCodes.containerName: not a container")
            if values != sorted(set(values)) or (exits["operator"] == "In" and 0 in values):
                errors.append(f"rules[{index}].onExitCodes.values: ordered, unique, no 0 for In")
        for pattern in rule.get("onPodConditions", []):
            if pattern.get("status") not in ("True", "False", "Unknown"):
                errors.append(f"rules[{index}].onPodConditions.status: required")
    return errors


# --- JobSet: its failure policy ---


@dataclass
class JobSetRun:
    """A JobSet's state under its failure policy: its restarts, those that count toward
    maxRestarts, and its end when it failed."""

    restarts: int = 0
    counted: int = 0
    failed: str | None = None  # the reason


def jobset_rule(policy: dict[str, Any], replicated_job: str, reason: str,
                message: str) -> dict[str, Any] | None:
    """kubernetes-sigs/jobset pkg/controllers/failure_policy.go findFirstFailedPolicyRuleAndJob
    and ruleIsApplicable: the first rule whose onJobFailureReasons holds the Job's reason, one
    of whose onJobFailureMessagePatterns (Go regexp, unanchored) matches its message, and whose
    targetReplicatedJobs holds its replicated job; an empty list matches anything."""
    for rule in policy.get("rules", []):
        if rule.get("onJobFailureReasons") and reason not in rule["onJobFailureReasons"]:
            continue
        patterns = rule.get("onJobFailureMessagePatterns")
        if patterns and not any(re.search(p, message) for p in patterns):
            continue
        if rule.get("targetReplicatedJobs") and replicated_job not in rule["targetReplicatedJobs"]:
            continue
        return rule
    return None


def jobset_fails_a_job(run: JobSetRun, policy: dict[str, Any], replicated_job: str,
                       reason: str, message: str) -> str:
    """What JobSet does when one of its Jobs fails (failure_policy.go executeFailurePolicy and
    the action appliers): no matching rule is RestartJobSet; RestartJobSet fails the set once
    maxRestarts restarts have counted, else restarts it and counts;
    RestartJobSetAndIgnoreMaxRestarts restarts without counting. Returns the action."""
    rule = jobset_rule(policy, replicated_job, reason, message)
    action = rule["action"] if rule else "RestartJobSet"
    if action == "FailJobSet":
        run.failed = "FailJobSetAction"
    elif action == "RestartJobSet" and run.counted >= policy["maxRestarts"]:
        run.failed = "ReachedMaxRestarts"
    elif action in ("RestartJobSet", "RestartJobSetAndIgnoreMaxRestarts"):
        run.restarts += 1
        run.counted += action == "RestartJobSet"
    else:
        raise AssertionError(f"{action} is not emulated")
    return action


# --- Kubeflow Trainer: the JobSet it makes of a TrainJob ---


def upsert_env(env: list[dict[str, Any]], variables: list[dict[str, Any]]) -> None:
    """kubeflow/trainer pkg/apply/apply.go UpsertEnvVars: a variable of the same name is
    replaced where it stands, a new one appended."""
    for variable in variables:
        names = [e["name"] for e in env]
        if variable["name"] in names:
            env[names.index(variable["name"])] = variable
        else:
            env.append(variable)


def trainer_jobset(trainjob: dict[str, Any], runtime: dict[str, Any]) -> dict[str, Any]:
    """The JobSet spec that Trainer v2.3 makes of a TrainJob and its runtime:
    pkg/runtime/core/trainingruntime.go (each replicated job's count: its parallelism, 1 unset,
    numNodes for the `trainer` ancestor), plugins/torch/torch.go EnforceMLPolicy (numNodes from
    the TrainJob; the TrainJob's env, then PET_*, upserted into the `node` container),
    plugins/jobset/jobset.go SyncParallelCount (parallelism = completions = count) and Build,
    plugins/jobset/builder.go (replicas 1 for each ancestor; the initializers' STORAGE_URI; the
    TrainJob's image, and its env upserted again over the runtime's)."""
    spec = copy.deepcopy(runtime["spec"]["template"]["spec"])
    name, trainer = trainjob["metadata"]["name"], trainjob["spec"].get("trainer", {})
    policy = runtime["spec"].get("mlPolicy", {})
    initializer = trainjob["spec"].get("initializer", {})
    for replicated in spec["replicatedJobs"]:
        step = replicated["template"].get("metadata", {}).get("labels", {}).get(ANCESTOR_LABEL)
        job = replicated["template"]["spec"]
        count = job.get("parallelism", 1)
        if step == "trainer":
            count = trainer.get("numNodes") or policy.get("numNodes", 1)
        if step:
            replicated["replicas"] = 1
        job["parallelism"] = job["completions"] = max(count, 1)
        for container in job["template"]["spec"]["containers"]:
            kind = {"dataset-initializer": "dataset", "model-initializer": "model"}.get(
                container["name"])
            if step == container["name"] and kind in initializer:
                source = initializer[kind]
                upsert_env(container.setdefault("env", []), [
                    {"name": "STORAGE_URI", "value": source["storageUri"]},
                    *source.get("env", [])])
            if step == "trainer" and container["name"] == "node":
                container["image"] = trainer.get("image", container.get("image"))
                upsert_env(container.setdefault("env", []), trainer.get("env", []))
                if "torch" in policy:
                    upsert_env(container["env"], [
                        {"name": "PET_NNODES", "value": str(job["completions"])},
                        {"name": "PET_NPROC_PER_NODE", "value": "auto"},
                        {"name": "PET_NODE_RANK", "valueFrom": {"fieldRef": {
                            "fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}},
                        {"name": "PET_MASTER_ADDR", "value": f"{name}-node-0-0.{name}"},
                        {"name": "PET_MASTER_PORT", "value": "29500"}])
                upsert_env(container["env"], trainer.get("env", []))
    return spec

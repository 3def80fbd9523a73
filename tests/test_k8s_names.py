"""The names that the controllers make from a workload's name, and k8s/render.sh's refusals:
for each overlay the longest RUN_ID whose generated names the API server and the webhooks
accept (generated_names below: Kubernetes' Job validation, JobSet's webhook,
the JobSet Kubeflow Trainer makes of a TrainJob), which render.sh must accept, and one
character more, which it must refuse (exit 2, one line naming the limit). Likewise Kueue's
QUEUE and PRIORITY, label values.

    .venv/bin/python -m pytest tests/test_k8s_names.py     (no TensorFlow; needs kubectl)
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_k8s import K8S, OVERLAYS, workload

MAX_NAME = 63  # a DNS label, a label value
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
DNS1123_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


# --- the names the controllers generate from the workload's name ---


def generated_names(kind: str, name: str, spec: dict[str, Any]) -> list[tuple[str, re.Pattern]]:
    """Each name that must be valid for a workload of this kind and name to run, with the rule
    it must pass (each also at most 63 characters). `spec` is the Job's spec, or the JobSet's
    (for a TrainJob, the JobSet Trainer makes: trainer_jobset).
    - Job: its name is the label batch.kubernetes.io/job-name of its pods (a label value; the
      API server's defaulting copies it); an Indexed Job's pods get host names <name>-<index>,
      and its validation checks the last one (pkg/apis/batch/validation ValidateJob).
    - JobSet (jobset pkg/webhooks/jobset_webhook.go Default and ValidateCreate): completionMode
      defaults to Indexed; the name of each replicated job's last Job, <name>-<rjob>-<replicas-1>,
      and for an Indexed one with completions its last pod's, <job>-<completions-1>-abcde
      (placement.GenJobName, GenPodName plus a generated suffix), are DNS-1035 labels; so is its
      headless Service, named as the JobSet."""
    if kind == "Job":
        names = [(name, LABEL_VALUE), (name, DNS1123_LABEL)]
        if spec.get("completionMode") == "Indexed":
            names.append((f"{name}-{spec['completions'] - 1}", DNS1123_LABEL))
        return names
    names = [(name, DNS1035_LABEL)]
    for replicated in spec["replicatedJobs"]:
        job_name = f"{name}-{replicated['name']}-{replicated.get('replicas', 1) - 1}"
        names.append((job_name, DNS1035_LABEL))
        job = replicated["template"]["spec"]
        if job.get("completionMode", "Indexed") == "Indexed" and "completions" in job:
            names.append((f"{job_name}-{job['completions'] - 1}-abcde", DNS1035_LABEL))
    return names


def name_is_accepted(kind: str, name: str, spec: dict[str, Any]) -> bool:
    return all(len(n) <= MAX_NAME and rule.fullmatch(n)
               for n, rule in generated_names(kind, name, spec))


def longest_accepted_name(kind: str, spec: dict[str, Any]) -> int:
    """The most characters a workload's name can have: names of letters only, longer until one
    is refused."""
    length = 0
    while name_is_accepted(kind, "a" * (length + 1), spec):
        length += 1
    return length


# The limits as derived by hand (render.sh's header says why), which the emulation must find.
LIMITS = {"single-gpu": 63, "multi-gpu": 63, "s3-custom-endpoint": 63,
          "multi-node": 61, "sweep": 61,           # <name>-<index> host names, index up to 9
          "jobset": 45,                            # <name>-workers-0-1-xxxxx
          "trainjob": 48,                          # <name>-node-0-1-xxxxx
          "trainjob-initializers": 33,             # <name>-dataset-initializer-0-0-xxxxx
          "jobset with 11 workers": 44, "trainjob with 11 nodes": 47}
# Own overlays on top of the committed ones: the limit follows the rendered worker count.
VARIANTS = {
    "jobset with 11 workers": ("jobset", "JobSet", [
        {"op": "replace", "path": f"/spec/replicatedJobs/0/template/spec/{field}", "value": 11}
        for field in ("completions", "parallelism")]),
    "trainjob with 11 nodes": ("trainjob", "TrainJob", [
        {"op": "replace", "path": "/spec/trainer/numNodes", "value": 11}]),
}


def target(case: str, folder: Path) -> str:
    """An overlay's name, or the folder of a kustomization over one (VARIANTS)."""
    if case in OVERLAYS:
        return case
    overlay, kind, patch = VARIANTS[case]
    (folder / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(K8S / "overlays" / overlay, folder)],
        "patches": [{"target": {"kind": kind}, "patch": yaml.safe_dump(patch)}]}))
    return str(folder)


def render_sh(overlay: str, **settings: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(K8S / "render.sh"), overlay], capture_output=True, text=True,
                          env={**os.environ, **settings})


def workload_names(objects: list[dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    """The workload's kind and name, and the spec its names are generated from: the Job's, the
    JobSet's, or that of the JobSet Trainer makes of a TrainJob."""
    work = workload(objects)
    return work.kind, work.name, work.job if work.kind == "Job" else work.jobset or {}


@pytest.mark.parametrize("case", [*OVERLAYS, *VARIANTS])
def test_render_takes_the_longest_name_the_controllers_take_and_no_longer(
        case: str, tmp_path: Path) -> None:
    overlay = target(case, tmp_path)
    at_limit = render_sh(overlay, RUN_ID=("r" * 40 + "-" + "1" * 40)[:LIMITS[case]])
    assert at_limit.returncode == 0, at_limit.stderr
    objects = [d for d in yaml.safe_load_all(at_limit.stdout) if d]
    kind, name, spec = workload_names(objects)
    assert longest_accepted_name(kind, spec) == LIMITS[case] == len(name)
    assert name_is_accepted(kind, name, spec)
    assert max(len(n) for n, _ in generated_names(kind, name, spec)) == MAX_NAME

    over = "r" * (LIMITS[case] + 1)
    assert not name_is_accepted(kind, over, spec)
    refused = render_sh(overlay, RUN_ID=over)
    assert refused.returncode == 2 and not refused.stdout
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"RUN_ID={over} is {len(over)} characters: at most {LIMITS[case]} ")


@pytest.mark.parametrize("variable", ["QUEUE", "PRIORITY"])
def test_kueue_names_are_label_values(variable: str) -> None:
    longest = "team-" + "a" * (MAX_NAME - 6) + "1"
    assert len(longest) == MAX_NAME
    result = render_sh("single-gpu", **{variable: longest})
    assert result.returncode == 0, result.stderr
    labels = workload([d for d in yaml.safe_load_all(result.stdout) if d]).metadata["labels"]
    (value,) = [v for k, v in labels.items() if k.startswith("kueue.x-k8s.io/")]
    # A label value, and the name of a LocalQueue or WorkloadPriorityClass (a DNS subdomain).
    assert value == longest and LABEL_VALUE.fullmatch(value) and DNS1123_SUBDOMAIN.fullmatch(value)

    refused = render_sh("single-gpu", **{variable: longest + "b"})
    assert refused.returncode == 2 and not refused.stdout
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"{variable}={longest}b is 64 characters: at most 63")

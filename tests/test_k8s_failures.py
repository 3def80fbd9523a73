"""What the controllers do when a pod of a rendered overlay fails: the rule of the Job's
podFailurePolicy that it meets (Kubernetes' Job controller, first match wins), the Job's Failed
condition, what becomes of a sweep's other combinations, and what JobSet (and so a TrainJob)
does and counts toward maxRestarts. The emulations are tests/k8s_controllers.py's, each written
from the controller's source; the objects are the ones `kubectl kustomize` renders.

    .venv/bin/python -m pytest tests/test_k8s_failures.py     (no TensorFlow; needs kubectl)
"""

from __future__ import annotations

import pytest
from k8s_controllers import (
    FailedPod,
    JobSetRun,
    job_failure,
    job_spec_errors,
    jobset_fails_a_job,
    match_pod_failure_policy,
    run_indexed_job,
)
from test_k8s import OVERLAYS, Workload, render, workload

JOBSETS = [o for o in OVERLAYS if o.startswith(("jobset", "trainjob"))]
COUNTED = None  # no rule: the failure counts toward the Job's backoff limit


def policy_actions(work: Workload) -> dict[str, str | None]:
    """The action of the first matching rule for each way a pod ends."""
    policy, container = work.job["podFailurePolicy"], work.container["name"]
    pods = {f"exit {code}": FailedPod(container, code) for code in (1, 2, 3, 4, 75, 137, 143)}
    pods |= {f"disrupted, exit {code}": FailedPod(container, code, disrupted=True)
             for code in (2, 137, 143)}
    return {what: match_pod_failure_policy(policy, pod).action for what, pod in pods.items()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_way_a_pod_ends_meets_its_rule(overlay: str) -> None:
    work = workload(render(overlay))
    # 2, 3, 4 cannot be helped by retrying, even in a pod that was being disrupted.
    unhelpable = "FailIndex" if overlay == "sweep" else "FailJob"
    # A disruption, or 143 (a SIGTERM to this pod or to a peer: every worker stops after saving)
    # is never counted; in a JobSet it fails the Job, for JobSet to restart all the workers.
    stopped = "FailJob" if work.kind != "Job" else "Ignore"
    assert policy_actions(work) == {
        "exit 1": COUNTED, "exit 2": unhelpable, "exit 3": unhelpable, "exit 4": unhelpable,
        "exit 75": COUNTED, "exit 137": COUNTED, "exit 143": stopped,
        "disrupted, exit 2": unhelpable, "disrupted, exit 137": stopped,
        "disrupted, exit 143": stopped}
    assert job_spec_errors(work.job) == []


# --- a sweep: one pod per combination ---


def test_a_sweep_combination_that_cannot_work_fails_alone() -> None:
    """A diverging learning rate (exit 2) fails its combination and no other: the running and
    pending ones train to their end, and the Job ends Failed naming the failed index."""
    job = workload(render("sweep")).job
    assert job["completionMode"] == "Indexed" and job["completions"] >= 4
    assert job["parallelism"] < job["completions"]  # some combinations wait for others
    retries = job["backoffLimitPerIndex"]
    assert retries >= 1 and "maxFailedIndexes" not in job
    run = run_indexed_job(job, {
        1: [FailedPod("trainer", 2)],                          # NaN loss: LEARNING_RATE
        2: [FailedPod("trainer", 75), None],                   # storage lost once, then fine
        3: [FailedPod("trainer", 143, disrupted=True)] * 5 + [None],  # preempted, not counted
    })
    assert run.succeeded == set(range(job["completions"])) - {1}
    assert run.failed == {1} and run.pods[1] == 1  # not retried: it would diverge again
    assert run.pods[3] == 6 and run.condition == ("Failed", "FailedIndexes")

    # A combination that keeps crashing (exit 1) is retried backoffLimitPerIndex times, alone.
    run = run_indexed_job(job, {0: [FailedPod("trainer", 1)] * (retries + 1)})
    assert run.failed == {0} and run.pods[0] == retries + 1
    assert run.succeeded == set(range(1, job["completions"]))
    # Every combination failing still runs every one of them (no total backoff limit).
    run = run_indexed_job(job, {i: [FailedPod("trainer", 4)]
                                for i in range(job["completions"])})
    assert run.failed == set(range(job["completions"]))


# --- several workers of one run ---


def test_a_preempted_worker_of_an_indexed_job_costs_no_retry() -> None:
    """multi-node: the preempted pod is ignored, and so are its peers that stop with it (143),
    however many workers there are; a lost worker (75) counts."""
    work = workload(render("multi-node"))
    spec = {**work.job, "completions": 8, "parallelism": 8}
    others = [FailedPod("trainer", 143, name=f"ns/w-{i}") for i in range(1, 8)]
    assert job_failure(spec, [*others, FailedPod("trainer", 143, disrupted=True)]) is None
    lost = [FailedPod("trainer", 75)] * (spec["backoffLimit"] + 1)
    assert job_failure(spec, lost) == ("BackoffLimitExceeded",
                                       "Job has reached the specified backoff limit")


def jobset_answer(work: Workload, run: JobSetRun, pods: list[FailedPod]) -> str:
    """How a JobSet answers its trainer Job's pods failing in this order."""
    assert work.jobset and work.replicated_job
    failure = job_failure(work.job, pods)
    assert failure, "the Job did not fail"
    return jobset_fails_a_job(run, work.jobset["failurePolicy"], work.replicated_job, *failure)


@pytest.mark.parametrize("overlay", JOBSETS)
def test_a_jobset_restarts_a_preempted_run_without_counting(overlay: str) -> None:
    work = workload(render(overlay))
    node, workers = work.container["name"], work.job["completions"]
    assert work.job["backoffLimit"] == 0  # the first failed pod fails the Job: all restart

    def ended(code: int, disrupted_code: int | None = None, disrupted_first: bool = False
              ) -> list[FailedPod]:
        """Every worker's end: the disrupted one (pod 0, the chief, which uploads last) and
        the others, in the order the Job controller sees them."""
        others = [FailedPod(node, code, name=f"ns/{overlay}-{i}") for i in range(1, workers)]
        if disrupted_code is None:
            return [FailedPod(node, code), *others]
        disrupted = [FailedPod(node, disrupted_code, disrupted=True)]
        return disrupted + others if disrupted_first else others + disrupted

    preempted = [ended(143, 143), ended(143, 143, disrupted_first=True),
                 ended(75, 137, disrupted_first=True),   # killed at once: the others lose it
                 ended(143)]                             # kubectl delete pod, a drain
    for pods in preempted:
        run = JobSetRun()
        assert jobset_answer(work, run, pods) == "RestartJobSetAndIgnoreMaxRestarts", pods
        assert (run.restarts, run.counted, run.failed) == (1, 0, None)
    for code in (2, 3, 4):  # the others lose it (75), or were being preempted meanwhile
        lost = [FailedPod(node, code), *ended(75)[1:]]
        for pods in (lost, [FailedPod(node, code, disrupted=True), *lost[1:]]):
            run = JobSetRun()
            assert jobset_answer(work, run, pods) == "FailJobSet"
            assert run.failed
    for code in (1, 75):  # a bug, a lost peer: counted
        run = JobSetRun()
        assert jobset_answer(work, run, ended(code)) == "RestartJobSet"
        assert (run.restarts, run.counted) == (1, 1)
    run = JobSetRun()
    assert jobset_fails_a_job(run, work.jobset["failurePolicy"], work.replicated_job,
                              "DeadlineExceeded", "Job was active longer than specified "
                              "deadline") == "FailJobSet"


@pytest.mark.parametrize("overlay", JOBSETS)
def test_preemptions_leave_the_restart_budget_to_crashes(overlay: str) -> None:
    work = workload(render(overlay))
    node, budget = work.container["name"], work.jobset["failurePolicy"]["maxRestarts"]
    run = JobSetRun()
    for _ in range(3 * budget):
        jobset_answer(work, run, [FailedPod(node, 143), FailedPod(node, 143, disrupted=True)])
    for _ in range(budget):
        jobset_answer(work, run, [FailedPod(node, 75)])
    assert run.failed is None and run.counted == budget
    jobset_answer(work, run, [FailedPod(node, 1)])
    assert run.failed == "ReachedMaxRestarts" and run.restarts == 4 * budget

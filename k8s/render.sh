#!/usr/bin/env bash
# Renders an overlay with kubectl's kustomize, with the image, the run's name and Kueue's queue
# and priority set on top, without editing the overlay (a wrapper kustomization in a temporary
# folder):
#   k8s/render.sh OVERLAY                       # as committed (or the folder of your own overlay)
#   IMAGE=my.registry/trainer:0.2 RUN_ID=resnet50-cifar10-1 QUEUE=team-a PRIORITY=high \
#     k8s/render.sh single-gpu
# RUN_ID becomes the name of the workload (the Job, JobSet or TrainJob), which the pods read back
# as RUN_ID. The multi-node Service keeps its name, so the pods' subdomain and WORKER_SERVICE stay
# right. QUEUE and PRIORITY label the workload for Kueue: kueue.x-k8s.io/queue-name (a LocalQueue)
# and kueue.x-k8s.io/priority-class (a WorkloadPriorityClass); label values, at most 63.
#
# The workload's name is refused here, exit 2, when a name that its controllers make from it would
# be refused later (each at most 63 characters), so the limit depends on the rendered objects:
#   Job          its name (the pods' label batch.kubernetes.io/job-name); an Indexed Job's pods are
#                also <name>-<index> host names, up to index completions - 1 (Kubernetes' Job
#                validation): 63 for one pod, 61 for up to 10 indexes
#   JobSet       a letter first; JobSet's webhook refuses Job names <name>-<replicatedJob>-<i> and,
#                for Indexed Jobs (its default), pod names <job>-<index>-<5 characters> (jobset
#                pkg/webhooks/jobset_webhook.go): 45 for 2 to 10 workers, 44 for 11 to 100
#   TrainJob     the JobSet that Kubeflow Trainer makes of its runtime (k8s/kubeflow-trainer):
#                every replicated job gets completions = parallelism (numNodes for the trainer), so
#                the same rules: 48 on keras-trainer, 33 on keras-trainer-initializers (pods
#                <name>-dataset-initializer-0-0-<5 characters>)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
overlays=("$here"/overlays/*/)
overlays=("${overlays[@]%/}")
overlay=${1:?usage: k8s/render.sh OVERLAY, one of: ${overlays[*]##*/} (or a kustomization folder)}
if [[ -d "$here/overlays/$overlay" ]]; then
  source=$here/overlays/$overlay
elif [[ "$overlay" == */* && -f "$overlay/kustomization.yaml" ]]; then
  source=$(cd "$overlay" && pwd)
else
  echo "no overlay $overlay: give one of ${overlays[*]##*/}, or a kustomization's folder" >&2
  exit 2
fi
KUBECTL=${KUBECTL:-kubectl}
placeholder=registry.example.com/trainer
max_name=63   # a DNS label, a label value

refuse() { echo "$*" >&2; exit 2; }

# QUEUE and PRIORITY: names of Kueue objects (DNS subdomains) that are also label values.
for variable in QUEUE PRIORITY; do
  value=${!variable:-}
  [[ -n "$value" ]] || continue
  if (( ${#value} > max_name )); then
    refuse "$variable=$value is ${#value} characters: at most $max_name (it is a label value)"
  fi
  [[ "$value" =~ ^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$ ]] || refuse "$variable=$value: give a Kueue" \
    "object's name (lower-case letters, digits, '-' and '.', a letter or digit at each end)"
done
if [[ -n "${RUN_ID:-}" && ! "$RUN_ID" =~ ^[a-z0-9]([a-z0-9-]*[a-z0-9])?$ ]]; then
  refuse "RUN_ID=$RUN_ID: give lower-case letters, digits and '-', a letter or digit at each end"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "  - $(realpath --relative-to="$work" "$source")"
  if [[ -n "${IMAGE:-}" ]]; then
    # name[:tag] or name@sha256:digest; a registry's port is not a tag.
    name=$IMAGE tag="" digest=""
    if [[ "$IMAGE" == *@* ]]; then
      name=${IMAGE%@*} digest=${IMAGE#*@}
    elif [[ "${IMAGE##*/}" == *:* ]]; then
      name=${IMAGE%:*} tag=${IMAGE##*:}
    fi
    echo "images:"
    echo "  - name: $placeholder"
    echo "    newName: \"$name\""
    [[ -n "$tag" ]] && echo "    newTag: \"$tag\""
    [[ -n "$digest" ]] && echo "    digest: \"$digest\""
  fi
  if [[ -n "${RUN_ID:-}" || -n "${QUEUE:-}" || -n "${PRIORITY:-}" ]]; then
    echo "patches:"
    echo "  - target:"
    echo "      kind: ^(Job|JobSet|TrainJob)$"
    echo "    patch: |-"
    [[ -n "${RUN_ID:-}" ]] && echo "      - {op: replace, path: /metadata/name, value: \"$RUN_ID\"}"
    [[ -n "${QUEUE:-}" ]] && echo "      - {op: add, path: /metadata/labels/kueue.x-k8s.io~1queue-name, value: \"$QUEUE\"}"
    [[ -n "${PRIORITY:-}" ]] && echo "      - {op: add, path: /metadata/labels/kueue.x-k8s.io~1priority-class, value: \"$PRIORITY\"}"
  fi
} >"$work/kustomization.yaml"
rendered=$("$KUBECTL" kustomize "$work")

# Fields of every rendered object, one line each, read offline (`label --local` prints them).
fields() { "$KUBECTL" label --local -f - -o "jsonpath=$1" render.sh/read=fields <<<"$2"; }

# The names that each replicated job of a JobSet makes, as "<suffix after the JobSet's
# name>|<what it is>" lines, from "name:replicas:completionMode:completions" words.
jobset_names() {
  local word rjob replicas mode completions
  for word in "$@"; do
    IFS=: read -r rjob replicas mode completions <<<"$word"
    replicas=${replicas:-1}
    echo "-$rjob-$((replicas - 1))|name of its last $rjob Job"
    if [[ "${mode:-Indexed}" == Indexed && -n "$completions" ]]; then
      echo "-$rjob-$((replicas - 1))-$((completions - 1))-xxxxx|name of its last $rjob pod"
    fi
  done
}

# A TrainJob's replicated jobs as Trainer 2.3 makes its JobSet (pkg/runtime/core/
# trainingruntime.go and the jobset plugin's SyncParallelCount and builder): replicas 1 for the
# initializers and the trainer, completions = parallelism (1 unless set), numNodes for the
# trainer. Nothing when the runtime is not one of k8s/kubeflow-trainer's.
trainjob_words() {
  local runtime=$1 nodes=$2 name default_nodes replicated word rjob replicas parallelism mode step
  [[ -d "$here/kubeflow-trainer" ]] || return 0
  while IFS='|' read -r name default_nodes replicated; do
    [[ "$name" == "$runtime" ]] || continue
    for word in $replicated; do
      IFS=: read -r rjob replicas parallelism mode step <<<"$word"
      [[ -n "$step" ]] && replicas=1
      parallelism=${parallelism:-1}
      [[ "$step" == trainer ]] && parallelism=${nodes:-${default_nodes:-1}}
      echo "$rjob:${replicas:-1}:$mode:$parallelism"
    done
  done < <(fields '{.metadata.name}{"|"}{.spec.mlPolicy.numNodes}{"|"}{range .spec.template.spec.replicatedJobs[*]}{.name}:{.replicas}:{.template.spec.parallelism}:{.template.spec.completionMode}:{.template.metadata.labels.trainer\.kubeflow\.org/trainjob-ancestor-step} {end}{"\n"}' \
    "$("$KUBECTL" kustomize "$here/kubeflow-trainer")")
}

while IFS='|' read -r kind name mode completions runtime nodes replicated; do
  case $kind in
    Job)
      pattern='^[a-z0-9]([a-z0-9-]*[a-z0-9])?$' first="a letter or digit"
      names="|label batch.kubernetes.io/job-name of its pods"
      if [[ "$mode" == Indexed && -n "$completions" ]]; then
        names+=$'\n'"-$((completions - 1))|host name of its last pod"
      fi ;;
    JobSet | TrainJob)
      pattern='^[a-z]([a-z0-9-]*[a-z0-9])?$' first="a letter"
      # shellcheck disable=SC2086  # the replicated jobs are words
      [[ $kind == TrainJob ]] && replicated=$(trainjob_words "$runtime" "$nodes")
      names="|name of its headless Service"$'\n'"$(jobset_names $replicated)" ;;
    *) continue ;;
  esac
  longest="" what=""
  while IFS='|' read -r suffix description; do
    if (( ${#suffix} >= ${#longest} )); then longest=$suffix what=$description; fi
  done <<<"$names"
  limit=$((max_name - ${#longest}))
  given="RUN_ID=$name"
  [[ -n "${RUN_ID:-}" ]] || given="the $kind's name $name"
  if (( ${#name} > limit )); then
    refuse "$given is ${#name} characters: at most $limit for $overlay (the $what," \
      "<name>$longest, must be at most $max_name characters)"
  fi
  [[ "$name" =~ $pattern ]] || refuse "$given: a $kind's name starts with $first (its" \
    "controllers name Kubernetes objects and DNS labels after it)"
done < <(fields '{.kind}{"|"}{.metadata.name}{"|"}{.spec.completionMode}{"|"}{.spec.completions}{"|"}{.spec.runtimeRef.name}{"|"}{.spec.trainer.numNodes}{"|"}{range .spec.replicatedJobs[*]}{.name}:{.replicas}:{.template.spec.completionMode}:{.template.spec.completions} {end}{"\n"}' "$rendered")
printf '%s\n' "$rendered"

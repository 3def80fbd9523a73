#!/usr/bin/env bash
# Renders an overlay with kubectl's kustomize, with the image, the run's name and Kueue's queue
# and priority set on top, without editing the overlay (a wrapper kustomization in a temporary
# folder):
#   k8s/render.sh OVERLAY                       # as committed
#   IMAGE=my.registry/trainer:0.2 RUN_ID=resnet50-cifar10-1 QUEUE=team-a PRIORITY=high \
#     k8s/render.sh single-gpu
# RUN_ID becomes the name of the workload (the Job, JobSet or TrainJob), which the pods read back
# as RUN_ID: lower-case letters, digits and '-', at most 63 characters; for a JobSet or TrainJob,
# whose pod names add to it, starting with a letter and at most 45. The multi-node Service keeps
# its name, so the pods' subdomain and WORKER_SERVICE stay right. QUEUE and PRIORITY label the
# workload for Kueue: kueue.x-k8s.io/queue-name (a LocalQueue) and
# kueue.x-k8s.io/priority-class (a WorkloadPriorityClass).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
overlays=("$here"/overlays/*/)
overlays=("${overlays[@]%/}")
overlay=${1:?usage: k8s/render.sh OVERLAY, one of: ${overlays[*]##*/}}
[[ -d "$here/overlays/$overlay" ]] || { echo "no overlay $here/overlays/$overlay" >&2; exit 2; }
KUBECTL=${KUBECTL:-kubectl}
placeholder=registry.example.com/trainer

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources:"
  echo "  - $(realpath --relative-to="$work" "$here/overlays/$overlay")"
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
    if [[ -n "${RUN_ID:-}" ]]; then
      if grep -rqE '^kind: (JobSet|TrainJob)$' "$here/overlays/$overlay"; then
        pattern='^[a-z]([a-z0-9-]{0,43}[a-z0-9])?$' limit="a letter first, at most 45"
      else
        pattern='^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' limit="at most 63"
      fi
      if ! [[ "$RUN_ID" =~ $pattern ]]; then
        echo "RUN_ID=$RUN_ID: give lower-case letters, digits and '-' ($limit) for $overlay" >&2
        exit 2
      fi
      echo "      - {op: replace, path: /metadata/name, value: \"$RUN_ID\"}"
    fi
    for setting in QUEUE=queue-name PRIORITY=priority-class; do
      variable=${setting%%=*} value=${!variable:-}
      [[ -n "$value" ]] || continue
      if ! [[ "$value" =~ ^[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?$ ]]; then
        echo "$variable=$value: give a Kueue object's name (lower-case letters, digits, '-', '.')" >&2
        exit 2
      fi
      echo "      - {op: add, path: /metadata/labels/kueue.x-k8s.io~1${setting#*=}, value: \"$value\"}"
    done
  fi
} >"$work/kustomization.yaml"
"$KUBECTL" kustomize "$work"

#!/usr/bin/env bash
# Renders an overlay with kubectl's kustomize, with the image, the run's name and a Kueue queue
# set on top, without editing the overlay (a wrapper kustomization in a temporary folder):
#   k8s/render.sh OVERLAY                       # as committed
#   IMAGE=my.registry/trainer:0.2 RUN_ID=resnet50-cifar10-1 QUEUE=team-a k8s/render.sh single-gpu
# RUN_ID becomes the Job's name, which the pods read back as RUN_ID (lower-case letters, digits
# and '-', at most 63 characters). The multi-node Service keeps its name, so the pods' subdomain
# and WORKER_SERVICE stay right.
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
  if [[ -n "${RUN_ID:-}" || -n "${QUEUE:-}" ]]; then
    echo "patches:"
    echo "  - target:"
    echo "      kind: Job"
    echo "    patch: |-"
    if [[ -n "${RUN_ID:-}" ]]; then
      if ! [[ "$RUN_ID" =~ ^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$ ]]; then
        echo "RUN_ID=$RUN_ID: give lower-case letters, digits and '-' (a Job name), at most 63" >&2
        exit 2
      fi
      echo "      - {op: replace, path: /metadata/name, value: \"$RUN_ID\"}"
    fi
    if [[ -n "${QUEUE:-}" ]]; then
      echo "      - {op: add, path: /metadata/labels/kueue.x-k8s.io~1queue-name, value: \"$QUEUE\"}"
    fi
  fi
} >"$work/kustomization.yaml"
"$KUBECTL" kustomize "$work"

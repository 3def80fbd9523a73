#!/usr/bin/env bash
# Builds the real Dockerfile with buildah over a local Debian base image (no registry pulls here),
# then runs the image's entrypoint as its non-root user on a tiny job that writes its artifacts to
# an S3 server (moto_server) on loopback, and checks them in the bucket.
#   make container-test        (root; installs buildah and debootstrap if missing)
set -euo pipefail
cd "$(dirname "$0")/.."
export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
BIN=.venv/bin
BASE=localhost/trainer-test-base:bookworm
IMAGE=localhost/trainer:test
started=$(date +%s)

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq && apt-get install -y -qq buildah debootstrap >/dev/null
fi

if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" http://deb.debian.org/debian >/dev/null
  # TLS to the package index is intercepted here: the build's pip needs this machine's CAs.
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  container=$(buildah from scratch)
  mount=$(buildah mount "$container")
  cp -a "$rootfs"/. "$mount"/
  buildah umount "$container"
  buildah commit --quiet "$container" "$BASE" >/dev/null
  buildah rm "$container" >/dev/null
  rm -rf "$rootfs"
fi

buildah bud --quiet --layers -t "$IMAGE" \
  --build-arg BASE_IMAGE="$BASE" \
  --build-arg TF_PACKAGE=tensorflow-cpu==2.21.0 \
  --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt . >/dev/null
built=$(date +%s)

port=$("$BIN/python" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
"$BIN/moto_server" -H 127.0.0.1 -p "$port" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 3
export AWS_ACCESS_KEY_ID=container-test AWS_SECRET_ACCESS_KEY=container-test-secret
export AWS_DEFAULT_REGION=us-east-1
"$BIN/python" - "$port" <<'PY'
import sys, boto3
boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}").create_bucket(Bucket="ct")
PY

container=$(buildah from "$IMAGE")
trap 'kill $server 2>/dev/null || true; buildah rm "$container" >/dev/null 2>&1 || true' EXIT
buildah run --isolation chroot \
  --env DATASET=digits --env BACKBONE=VGG16 --env WEIGHTS=none --env IMAGE_SIZE=32 \
  --env EPOCHS=1 --env BATCH_SIZE=64 --env RUN_ID=container-test \
  --env ARTIFACT_URI=s3://ct/runs --env S3_ENDPOINT_URL="http://127.0.0.1:$port" \
  --env S3_ADDRESSING_STYLE=path --env AWS_ACCESS_KEY_ID --env AWS_SECRET_ACCESS_KEY \
  --env AWS_DEFAULT_REGION --env LOG_FORMAT=json \
  "$container" -- python /app/entrypoint.py

"$BIN/python" - "$port" <<'PY'
import hashlib, json, sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}")
def get(name):
    return s3.get_object(Bucket="ct", Key=f"runs/container-test/{name}")["Body"].read()
manifest = json.loads(get("manifest.json"))
assert manifest["status"] == "finished", manifest
for name in ("best.h5", "config.json", "history.json"):
    assert hashlib.sha256(get(name)).hexdigest() == manifest["artifacts"][name]["sha256"], name
config = json.loads(get("config.json"))
print(f"container-test: artifacts verified in s3://ct/runs/container-test "
      f"(TensorFlow {config['versions']['tensorflow']})")
PY
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$IMAGE")
echo "container-test: passed; image user $user; build $((built - started)) s, run $(( $(date +%s) - built )) s"

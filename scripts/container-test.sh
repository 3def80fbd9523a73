#!/usr/bin/env bash
# The container test: builds the real Dockerfile with buildah over a local Debian base image (no
# registry pulls here) with CPU TensorFlow, then runs the image's entrypoint as its non-root user
# on a tiny job that writes its artifacts to an S3 server (moto_server) on loopback, and checks
# them in the bucket. Run as root (buildah with vfs storage and chroot isolation):
#   make container-test                         # or: bash scripts/container-test.sh
#   bash scripts/container-test.sh --build-only # build and import-check the image, no training
# The base image is cached in buildah's storage; REBUILD_BASE=1 makes it again.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=.venv/bin
BASE=${BASE:-localhost/trainer-test-base:bookworm}
IMAGE=${IMAGE:-localhost/trainer:test}
TF_PACKAGE=${TF_PACKAGE:-tensorflow-cpu==2.21.0}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BUILD_ONLY=0
[[ "${1:-}" == "--build-only" ]] && BUILD_ONLY=1
export BUILDAH_ISOLATION=chroot
bah() { buildah --storage-driver vfs "$@"; }
say() { echo "container-test: $*"; }
logs=$(mktemp -d /tmp/container-test.XXXXXX)
started=$(date +%s)
rootfs="" base="" container="" server=""
cleanup() {
  local rc=$?
  if [[ -n "$server" ]]; then kill "$server" 2>/dev/null || true; fi
  if [[ -n "$container" ]]; then bah rm "$container" >/dev/null 2>&1 || true; fi
  if [[ -n "$base" ]]; then bah rm "$base" >/dev/null 2>&1 || true; fi
  if [[ -n "$rootfs" ]]; then rm -rf "$rootfs"; fi
  if [[ "$rc" == 0 ]]; then rm -rf "$logs"; else echo "container-test: logs in $logs"; fi
}
trap cleanup EXIT

if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
  say "installing buildah and debootstrap"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null
fi

# The base: Debian bookworm's python3 (3.11) with venv, and this machine's CA bundle, because TLS
# to the package index is intercepted here and pip in the build must trust the interceptor.
if [[ "${REBUILD_BASE:-0}" == 1 ]] || ! bah inspect --type image "$BASE" >/dev/null 2>&1; then
  say "making the base image $BASE with debootstrap"
  rootfs=$(mktemp -d /var/tmp/trainer-base.XXXXXX)
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$rootfs" "$DEBIAN_MIRROR" >"$logs/debootstrap.log" 2>&1 \
    || { tail -n 30 "$logs/debootstrap.log"; exit 1; }
  cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  base=$(bah from scratch)
  mount=$(bah mount "$base")
  cp -a "$rootfs"/. "$mount"/
  bah umount "$base" >/dev/null
  bah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --cmd /bin/bash "$base"
  bah commit --quiet --rm "$base" "$BASE" >/dev/null
  base=""
  rm -rf "$rootfs"
  rootfs=""
fi
based=$(date +%s)

# No --layers: with vfs storage every layer is a full copy, so caching each step made builds
# slower here (673 s from scratch, 237 s with every step cached) than none (190 to 270 s).
# REUSE_IMAGE=1 runs the image an earlier build left (while working on the job, not the image).
if [[ "${REUSE_IMAGE:-0}" == 1 ]] && bah inspect --type image "$IMAGE" >/dev/null 2>&1; then
  say "reusing $IMAGE (REUSE_IMAGE=1): the Dockerfile was not rebuilt"
else
  bah rmi --force "$IMAGE" >/dev/null 2>&1 || true
  say "building $IMAGE from the Dockerfile (TF_PACKAGE=$TF_PACKAGE)"
  bah bud --isolation chroot --pull=never -t "$IMAGE" \
    --build-arg BASE_IMAGE="$BASE" \
    --build-arg TF_PACKAGE="$TF_PACKAGE" \
    --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    . >"$logs/build.log" 2>&1 || { tail -n 40 "$logs/build.log"; say "FAILED: the build"; exit 1; }
fi
built=$(date +%s)

user=$(bah inspect --type image --format '{{.OCIv1.Config.User}}' "$IMAGE")
[[ "$user" =~ ^[0-9]+$ && "$user" != 0 ]] || { say "FAILED: USER is '$user', not numeric non-root"; exit 1; }

container=$(bah from --pull=never "$IMAGE")

bah run --isolation chroot --env TF_CPP_MIN_LOG_LEVEL=2 "$container" -- python -c \
  "import os, trainer.cli, tensorflow as tf, onnxruntime, tf2onnx, ai_edge_litert, mlflow; \
assert os.getuid() != 0, 'runs as root'; \
print('container-test: imports as uid', os.getuid(), 'TensorFlow', tf.__version__, \
      'with the export runtimes and MLflow')"
if [[ "$BUILD_ONLY" == 1 ]]; then
  say "built in $((built - based)) s (base $((based - started)) s); training not run (--build-only)"
  exit 0
fi

# An S3 server on loopback, which the container shares under chroot isolation.
port=$("$BIN/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); \
print(s.getsockname()[1])")
"$BIN/moto_server" -H 127.0.0.1 -p "$port" >"$logs/moto.log" 2>&1 &
server=$!
export AWS_ACCESS_KEY_ID=container-test AWS_SECRET_ACCESS_KEY=container-test-secret
export AWS_DEFAULT_REGION=us-east-1
"$BIN/python" - "$port" <<'PY'
import sys, time, boto3, botocore.exceptions
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}")
for attempt in range(60):
    try:
        s3.create_bucket(Bucket="container-test")
        break
    except botocore.exceptions.EndpointConnectionError:
        time.sleep(0.5)
else:
    sys.exit("container-test: FAILED: moto_server did not start")
PY

say "training one epoch in the container as user $user against s3://container-test on 127.0.0.1:$port"
status=0
bah run --isolation chroot \
  --env DATASET=digits --env BACKBONE=MobileNetV2 --env WEIGHTS=none --env IMAGE_SIZE=32 \
  --env EPOCHS=1 --env BATCH_SIZE=64 --env RUN_ID=container-test \
  --env ARTIFACT_URI=s3://container-test/runs --env S3_ENDPOINT_URL="http://127.0.0.1:$port" \
  --env S3_ADDRESSING_STYLE=path --env AWS_ACCESS_KEY_ID="$AWS_ACCESS_KEY_ID" \
  --env AWS_SECRET_ACCESS_KEY="$AWS_SECRET_ACCESS_KEY" --env AWS_DEFAULT_REGION="$AWS_DEFAULT_REGION" \
  --env LOG_FORMAT=json --env EXPORT=savedmodel,onnx,litert \
  "$container" -- python /app/entrypoint.py || status=$?
ran=$(date +%s)
[[ "$status" == 0 ]] || { say "FAILED: the entrypoint exited $status"; exit 1; }

"$BIN/python" - "$port" <<'PY'
import hashlib, json, sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}")
def get(name):
    return s3.get_object(Bucket="container-test", Key=f"runs/container-test/{name}")["Body"].read()
manifest = json.loads(get("manifest.json"))
assert manifest["status"] == "finished", manifest
for name in ("best.h5", "config.json", "history.json", "metrics.json", "report.html",
             "export/savedmodel/1/saved_model.pb", "export/onnx/model.onnx",
             "export/litert/model.tflite"):
    assert hashlib.sha256(get(name)).hexdigest() == manifest["artifacts"][name]["sha256"], name
for kind, result in manifest["exports"].items():
    assert result["status"] == "ok" and result["max_abs_difference"] <= 1e-3, (kind, result)
history = json.loads(get("history.json"))
print(f"container-test: best.h5, config.json, history.json, metrics.json, report.html, the "
      f"SavedModel, ONNX and LiteRT exports (parity ok) and manifest.json verified in s3://container-test/runs/container-test ({len(history)} epoch(s), best {manifest.get('best_value')})")
PY

# SageMaker as it starts a training job: `docker run IMAGE train` with /opt/ml laid out, the
# hyperparameters and a `training` channel; no settings but the image's own environment. The job
# must train on the channel and leave the run in model/; a bad hyperparameter and a mistyped flag
# must each exit 2 with their line in output/failure (SageMaker's FailureReason).
optml="$logs/opt-ml"
mkdir -p "$optml/input/config" "$optml/input/data/training" "$optml/model" "$optml/output" \
  "$optml/checkpoints"
"$BIN/python" - "$optml" <<'PY'
import json, sys, numpy as np
from pathlib import Path
from sklearn.datasets import load_digits
base = Path(sys.argv[1])
digits = load_digits()
images = np.round(digits.images[:400] * (255 / 16)).astype(np.uint8)
np.savez(base / "input/data/training/digits.npz", x_train=images,
         y_train=digits.target[:400].astype(np.int64))
(base / "input/config/hyperparameters.json").write_text(json.dumps({
    "backbone": '"MobileNetV2"', "weights": '"none"', "image_size": "32", "epochs": "1",
    "batch_size": "64", "export": '"none"', "sagemaker_region": '"eu-west-1"'}))
(base / "input/config/inputdataconfig.json").write_text(json.dumps({"training": {
    "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
    "RecordWrapperType": "None"}}))
(base / "input/config/resourceconfig.json").write_text(json.dumps({
    "current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
PY
# The job's local store is model/'s parent, /opt/ml, which it checks by writing a probe file there:
# the image's non-root user must own it (SageMaker's own ownership of /opt/ml is not known here).
chown "$user:$user" "$optml"
chown -R "$user:$user" "$optml/model" "$optml/output" "$optml/checkpoints"
sagemaker() {  # sagemaker ARG...: the image run as SageMaker runs it, /opt/ml mounted
  bah run --isolation chroot --volume "$optml:/opt/ml" --env TRAINING_JOB_NAME=Container-Test-SM \
    --env LOG_FORMAT=json "$container" -- python /app/entrypoint.py "$@"
}
say "training one epoch in the container in SageMaker's layout (docker run IMAGE train)"
status=0
sagemaker train >"$logs/sagemaker.log" 2>&1 || status=$?
[[ "$status" == 0 ]] || { tail -n 20 "$logs/sagemaker.log"; say "FAILED: SageMaker's job exited $status"; exit 1; }
"$BIN/python" - "$optml" <<'PY'
import json, sys
from pathlib import Path
model = Path(sys.argv[1]) / "model"
manifest = json.loads((model / "manifest.json").read_text())
assert manifest["status"] == "finished" and "best.h5" in manifest["artifacts"], manifest
settings = json.loads((model / "config.json").read_text())["settings"]
assert settings["dataset"] == "/opt/ml/input/data/training/digits.npz", settings["dataset"]
assert (settings["run_id"], settings["backbone"]) == ("container-test-sm", "MobileNetV2"), settings
assert (Path(sys.argv[1]) / "checkpoints" / "state" / "LATEST.json").is_file()
assert not (Path(sys.argv[1]) / "output" / "failure").exists()
print("container-test: SageMaker's job trained on its training channel; the run in model/, the "
      "resume state in checkpoints/")
PY
echo '{"epochs": "0"}' >"$optml/input/config/hyperparameters.json"
for args in "train" "train --epoch 3"; do
  status=0
  # shellcheck disable=SC2086  # the words of $args are the arguments
  sagemaker $args >"$logs/sagemaker-failure.log" 2>&1 || status=$?
  line=$(cat "$optml/output/failure" 2>/dev/null || true)
  [[ "$status" == 2 && -n "$line" ]] || { tail -n 5 "$logs/sagemaker-failure.log"; \
    say "FAILED: '$args' with epochs 0 exited $status, output/failure: '$line'"; exit 1; }
  say "'$args' exited 2; output/failure: $line"
  rm -f "$optml/output/failure"
done
say "passed: base $((based - started)) s, build $((built - based)) s, run $((ran - built)) s, \
SageMaker $(($(date +%s) - ran)) s, total $(($(date +%s) - started)) s"

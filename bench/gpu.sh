#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md: ResNet50 at 224x224 in bfloat16 with XLA, the job's own loop
# (trainer/loop.py) on one GPU and then on every GPU of this node (MirroredStrategy), fed one
# batch already in memory (so the input pipeline is NOT measured), from random weights.
#
#   bash bench/gpu.sh                    # about 5 minutes; prints a Markdown table to paste
#   PEAK_TFLOPS=989 bash bench/gpu.sh    # the GPU's dense bfloat16 peak, if not known below
#   BATCH_SIZE=192 STEPS=200 BATCH_NORM_SYNC=step XLA=off bash bench/gpu.sh
#
# Needs: NVIDIA GPUs with their driver (nvidia-smi), Python 3.10+ with this repo installed with
# its GPU build of TensorFlow (`pip install -e '.[gpu]'` or `tensorflow[and-cuda]`; or run it in
# the GPU image). Nothing is downloaded. Never run on this repo's CPU machine: it has no GPU.
#
# MFU = images/s x training FLOPs per image / the GPU's dense bfloat16 peak, with training
# FLOPs = 3 x 2 x the forward multiply-adds that bench/flops.py counts from the model's layers.
# On one GPU BatchNorm is never synchronized (as in the job); on all GPUs this script uses
# BATCH_NORM_SYNC=save (each GPU's own statistics, averaged at evaluation and save), not the
# job's one-node default `step`: synchronized BatchNorm all-reduces inside the forward pass,
# which an XLA cluster cannot contain (trainer/cluster/distribution.py keeps XLA off then).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
export BATCH_SIZE=${BATCH_SIZE:-256}   # per GPU
export STEPS=${STEPS:-100}             # timed, after 20 steps of compilation and warm-up
export XLA=${XLA:-on}
command -v nvidia-smi >/dev/null || {
  echo "gpu.sh: no nvidia-smi: this machine has no NVIDIA GPU driver" >&2; exit 1; }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
count=$(nvidia-smi --query-gpu=name --format=csv,noheader | wc -l)
case "$gpu" in  # dense (not sparse) bfloat16 tensor-core peaks, TFLOPS, vendors' data sheets
  *H200\ NVL*|*H100\ NVL*) peak=835 ;; *H200*|*GH200*) peak=989 ;; *H100*PCIe*) peak=756 ;;
  *H100*) peak=989 ;; *B200*) peak=2250 ;; *A100*) peak=312 ;; *L40S*) peak=362 ;;
  *L4*) peak=121 ;; *A10G*) peak=70 ;; *A10*) peak=125 ;; *RTX\ 4090*) peak=165 ;; *) peak= ;;
esac
export GPU_NAME="$gpu" PEAK="${PEAK_TFLOPS:-$peak}" TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH="$PWD"

measure() {  # $1: visible GPUs ("0" or "all"); prints one table row
  local visible=$1 sync=${BATCH_NORM_SYNC:-}
  [ -n "$sync" ] || { [ "$visible" = "0" ] && sync=step || sync=save; }
  if [ "$visible" = "0" ]; then export CUDA_VISIBLE_DEVICES=0; else unset CUDA_VISIBLE_DEVICES; fi
  SYNC="$sync" "$PYTHON" - <<'PY'
import os, sys, time
import keras, tensorflow as tf
sys.path.insert(0, "bench")
from flops import forward_macs
from trainer.cluster.distribution import make_strategy
from trainer.loop import Loop
from trainer.models.classifier import build_model

if not tf.config.list_physical_devices("GPU"):
    sys.exit("gpu.sh: TensorFlow sees no GPU: install its GPU build (tensorflow[and-cuda])")
keras.mixed_precision.set_global_policy("mixed_bfloat16")
strategy, _ = make_strategy(1, {})
gpus = strategy.num_replicas_in_sync
per_gpu, steps, xla = int(os.environ["BATCH_SIZE"]), int(os.environ["STEPS"]), os.environ["XLA"] == "on"
with strategy.scope():
    model = build_model("ResNet50", "avg", 224, 1000, None, synchronized=os.environ["SYNC"] == "step" and gpus > 1)
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)
loop = Loop(strategy, model, optimizer, per_gpu * gpus, steps_per_call=20, xla=xla)
images = tf.random.uniform((per_gpu, 224, 224, 3), -1, 1)
labels = tf.random.uniform((per_gpu,), 0, 1000, tf.int64)
data = lambda context: tf.data.Dataset.from_tensors((images, labels)).repeat()
loop.train_epoch(data, 20)  # tracing, XLA compilation, warm-up
metrics = loop.train_epoch(data, steps)
rate = steps * per_gpu * gpus / metrics.totals.seconds / gpus
flops = rate * 3 * 2 * forward_macs(model)
peak = os.environ.get("PEAK")
mfu = f"{flops / (float(peak) * 1e12):.1%}" if peak else "set PEAK_TFLOPS"
print(f"| {os.environ['GPU_NAME']} | {gpus} | {per_gpu} | {'on' if xla else 'off'} "
      f"| {os.environ['SYNC'] if gpus > 1 else 'none (one replica)'} | {rate:.0f} | {flops / 1e12:.0f} | {mfu} |", flush=True)
PY
}

echo "ResNet50 224x224, mixed_bfloat16, $STEPS steps; TensorFlow $("$PYTHON" -c 'import tensorflow as tf; print(tf.__version__)' 2>/dev/null)"
echo
echo "| GPU | GPUs | batch per GPU | XLA | BATCH_NORM_SYNC | images/s per GPU | TFLOPS per GPU | MFU |"
echo "|---|---|---|---|---|---|---|---|"
measure 0
if [ "$count" -gt 1 ]; then measure all; fi

#!/usr/bin/env bash
# GPU figures for BENCHMARKS.md: ResNet50 at 224x224, bfloat16 and XLA, the job's own loop on
# synthetic in-memory batches (so the input pipeline is not measured), every GPU of this machine.
#
#   bash bench/gpu.sh                 # about 3 minutes; prints a Markdown table to paste
#   PEAK_TFLOPS=312 bash bench/gpu.sh # the GPU's dense bfloat16 peak, if not in the table below
#
# Needs: NVIDIA GPUs with their driver (nvidia-smi), Python 3.10+, and this repo installed with
# its GPU extra (`pip install -e '.[gpu]'`, or run it inside the image). Nothing is downloaded
# but pip packages; the weights are random (speed does not depend on them).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BATCH_SIZE=${BATCH_SIZE:-128}   # per GPU
STEPS=${STEPS:-60}
command -v nvidia-smi >/dev/null || { echo "gpu.sh: no nvidia-smi: this machine has no NVIDIA GPU driver" >&2; exit 1; }
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
case "$gpu" in  # dense bfloat16 tensor-core peaks, TFLOPS, from the vendors' data sheets
  *H100*SXM*|*H100\ 80GB\ HBM3*) peak=989 ;; *H100*) peak=756 ;; *A100*) peak=312 ;;
  *L40S*) peak=362 ;; *L4*) peak=121 ;; *A10G*) peak=70 ;; *A10*) peak=125 ;;
  *RTX\ 4090*) peak=165 ;; *RTX\ 3090*) peak=71 ;; *) peak=${PEAK_TFLOPS:-} ;;
esac
peak=${PEAK_TFLOPS:-$peak}
GPU_NAME="$gpu" PEAK="$peak" BATCH_SIZE="$BATCH_SIZE" STEPS="$STEPS" TF_CPP_MIN_LOG_LEVEL=2 \
"$PYTHON" - <<'PY'
import os, time
import keras, tensorflow as tf
from trainer.model import build_model
from trainer.distribution import make_strategy
from trainer.loop import Loop

keras.mixed_precision.set_global_policy("mixed_bfloat16")
strategy, _ = make_strategy(1, {})
gpus = strategy.num_replicas_in_sync
batch = int(os.environ["BATCH_SIZE"]) * gpus
with strategy.scope():
    model = build_model("ResNet50", "avg", 224, 1000, None)
    optimizer = keras.optimizers.Adam(1e-4)
    optimizer.build(model.trainable_variables)
# XLA on the per-replica pass; with several GPUs the job's auto setting keeps it off (see
# trainer/distribution.py), so this figure is for XLA with one GPU and without it with several.
loop = Loop(strategy, model, optimizer, batch, steps_per_call=20, xla=gpus == 1)
images = tf.random.uniform((batch // gpus, 224, 224, 3), -1, 1)
labels = tf.random.uniform((batch // gpus,), 0, 1000, tf.int64)
data = lambda context: tf.data.Dataset.from_tensors((images, labels)).repeat()
steps = int(os.environ["STEPS"])
loop.train_epoch(data, 20)  # compile and warm up
started = time.perf_counter()
loop.train_epoch(data, steps)
seconds = time.perf_counter() - started
per_gpu = steps * batch / seconds / gpus
# ResNet50 forward: 4.1 GFLOPs (multiply-adds x 2) per 224x224 image; training is about 3x.
flops = per_gpu * 3 * 4.1e9
peak = os.environ.get("PEAK")
fraction = f"{flops / (float(peak) * 1e12):.1%}" if peak else "unknown (set PEAK_TFLOPS)"
print(f"| GPU | GPUs | batch per GPU | XLA | images/s per GPU | TFLOPS per GPU | of peak |")
print(f"|---|---|---|---|---|---|---|")
print(f"| {os.environ['GPU_NAME']} | {gpus} | {batch // gpus} | {'on' if gpus == 1 else 'off'} "
      f"| {per_gpu:.0f} | {flops / 1e12:.1f} | {fraction} |")
PY

"""BENCHMARKS.md from the results of bench/bench.py: every figure from this run's measurements;
the GPU section is an estimate on paper and says so.

    text = render(results)     # results as bench.py keeps them in runs/bench-results.json
"""

from __future__ import annotations

import math
import re
import textwrap
from statistics import mean
from typing import Any

R = dict[str, Any]

TARGET_RACE, TARGET_ACCURACY, TARGET_PIPELINE, TARGET_UPLOAD, TARGET_STARTUP = \
    2.0, 0.03, 0.98, 1.01, 5.0
TARGET_STREAMING = 0.95  # training images/s, shards streamed from S3 over the same on local disk
# Dense bfloat16 peaks (TFLOPS) and memory bandwidth (TB/s), vendors' data sheets; NVLink 4:
# 450 GB/s each way per GPU, of which NCCL's all-reduce reaches about 80% (bus bandwidth).
H100 = {"peak": 989.0, "hbm": 3.35}
H200 = {"peak": 989.0, "hbm": 4.8}
NVLINK_BUS_GBS = 360.0


def _f(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:,.{digits}f}"


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _epochs(run: R) -> list[R]:
    return [row for row in run["lines"] if "val_accuracy" in row
            and (row.get("event") == "epoch" or str(row.get("message", "")).startswith("epoch "))]


def _line(run: R, message: str) -> R | None:
    return next((row for row in run["lines"]
                 if row.get("message", row.get("event")) == message), None)


def _t(run: R, message: str) -> float | None:
    row = _line(run, message)
    return None if row is None else row["t"]


def _field(run: R, name: str) -> Any:
    return next((row[name] for row in run["lines"] if name in row), None)


def _rate(run: R) -> float:
    """Training images per second over the epochs after the first (which traces)."""
    rows = _epochs(run)
    return mean(row["images_per_second"] for row in (rows[1:] or rows))


def _train_seconds(run: R) -> float:
    return sum(row.get("train_seconds", row.get("seconds", 0.0)) for row in _epochs(run))


def _best(run: R) -> float:
    return max(row["val_accuracy"] for row in _epochs(run))


def _to_accuracy(run: R, target: float) -> float | None:
    return next((row["t"] for row in _epochs(run) if row["val_accuracy"] >= target), None)


def _ok(met: bool) -> str:
    return "**met**" if met else "**missed**"


def _cpu_line(machine: R) -> str:
    flags = ", ".join(f"`{name}` {'yes' if present else 'no'}"
                      for name, present in machine["flags"].items())
    return f"{machine['cores']} cores, {machine['model']} ({flags})"


def render(results: R) -> str:
    machine = results["machine"]
    parts = [f"""# Benchmarks

Made by `make bench` (`bench/bench.py`, {results['seconds'].get('total', 0):.0f} s) on
{machine['date']}: {_cpu_line(machine)}, no GPU; Python {machine['python']}, TensorFlow
{machine['tensorflow']} (CPU), Keras {machine['keras']}. Every ratio compares two measurements
made one after the other in this invocation; whole-process seconds run from the process start
to its exit, both timed by `bench/bench.py` around a subprocess. Images are scikit-learn's
`digits` (8x8 grayscale, offline), resized in the pipeline. Raw numbers:
`runs/bench-results.json`."""]
    summary = _summary(results)
    if summary:
        parts.append(summary)
    for name, section in (("job", _race), ("pipeline", _pipeline), ("profile", _profile),
                          ("upload_moto", _upload), ("startup_job", _startup),
                          ("bn_step", _batchnorm), ("export", _export), ("finish", _finish),
                          ("prefix", _prefix),
                          ("streaming", _streaming), ("precision_other", _precision)):
        if name in results:
            parts.append(section(results))
    load = _load(results)
    if load:
        parts.append(load)
    parts.append(_gpu(results))
    return "\n\n".join(_reflow(part) for part in parts) + "\n"


def _reflow(text: str) -> str:
    """Prose paragraphs and list items re-wrapped to 100 columns; tables and headings as
    they are."""
    blocks = []
    for block in text.split("\n\n"):
        if block.startswith("#") and "\n" in block:
            heading, block = block.split("\n", 1)
            blocks.append(heading)
        if block.startswith(("|", "#")):
            blocks.append(block)
            continue
        items = re.split(r"\n(?=- )", block)
        blocks.append("\n".join(
            textwrap.fill(" ".join(item.split()), 100, break_long_words=False,
                          break_on_hyphens=False,
                          subsequent_indent="  " if item.startswith("- ") else "")
            for item in items))
    return "\n\n".join(blocks)


def _summary(results: R) -> str:
    rows = []
    if "job" in results:
        job, tutorial = results["job"], results["tutorial"]
        ratio = _wall_ratio(results)
        gap = _best(tutorial) - _best(job)
        rows.append(["1. whole process, tutorial / job", f">= {TARGET_RACE}", f"{ratio:.2f}",
                     _ok(ratio >= TARGET_RACE)])
        rows.append(["1. best val_accuracy, tutorial - job", f"<= {TARGET_ACCURACY}",
                     f"{gap:+.3f} ({_best(tutorial):.3f} against {_best(job):.3f})",
                     _ok(gap <= TARGET_ACCURACY)])
    if "pipeline" in results:
        ratio = results["pipeline"]["ratio"]
        rows.append(["2. pipeline efficiency", f">= {TARGET_PIPELINE}", f"{ratio:.3f}",
                     _ok(ratio >= TARGET_PIPELINE)])
    if "upload_moto" in results:
        for kind in ("rclone", "moto"):
            ratio = _upload_ratio(results, kind)["train"]
            rows.append([f"3. upload overhead ({kind}), training seconds S3 / local",
                         f"<= {TARGET_UPLOAD}", f"{ratio:.3f}", _ok(ratio <= TARGET_UPLOAD)])
    if "startup_job" in results:
        extra = _t(results["startup_job"], "first training steps done") - _t(
            results["startup_bare"], "first step done")
        rows.append(["4. start-up, job - bare script", f"<= +{TARGET_STARTUP:.0f} s",
                     f"{extra:+.1f} s", _ok(extra <= TARGET_STARTUP)])
    if "streaming" in results:
        stream = results["streaming"]
        rows.append(["7b. training images/s, shards streamed from S3 / local disk",
                     f">= {TARGET_STREAMING}", f"{stream['ratio']:.3f}",
                     _ok(stream["ratio"] >= TARGET_STREAMING)])
        rows.append([f"7b. peak disk streaming a dataset {stream['dataset_over_cache']:g}x the "
                     "cache, bytes", f"<= {stream['cache_bytes']:,}",
                     f"{stream['peak_disk_bytes']:,}",
                     _ok(stream["peak_disk_bytes"] <= stream["cache_bytes"])])
    if not rows:
        return ""
    return "## Targets\n\n" + _table(["figure", "target", "measured", ""], rows)


def _sides(results: R) -> tuple[list[R], list[R]]:
    """The job's and the tutorial's runs of the race: the first pair, and the pair run again
    in the other order at the end of the upload section, when it ran."""
    jobs = [results["job"]] + ([results["job_again"]] if "job_again" in results else [])
    tutorials = [results["tutorial"]] + (
        [results["tutorial_again"]] if "tutorial_again" in results else [])
    return jobs, tutorials


def _mean(runs: list[R], measure: Any) -> float:
    return mean(measure(run) for run in runs)


def _each(runs: list[R], measure: Any, digits: int = 1) -> str:
    """The mean, and each run's value when there are several."""
    values = [measure(run) for run in runs]
    text = _f(mean(values), digits)
    return text if len(values) == 1 else f"{text} ({' / '.join(_f(v, digits) for v in values)})"


def _wall_ratio(results: R) -> float:
    jobs, tutorials = _sides(results)
    return _mean(tutorials, lambda r: r["wall"]) / _mean(jobs, lambda r: r["wall"])


def _race(results: R) -> str:
    jobs, tutorials = _sides(results)
    job, tutorial, xla = jobs[0], tutorials[0], results.get("job_xla")
    target = math.floor(0.95 * min(_best(job), _best(tutorial)) * 100) / 100
    setup = _line(job, "training setup") or {}
    jit = _field(tutorial, "jit_compile")

    def reached(run: R) -> float:
        return _to_accuracy(run, target) or math.nan

    def other(run: R) -> float:
        return run["wall"] - _train_seconds(run)

    def ratio(measure: Any, inverse: bool = False) -> str:
        value = _mean(tutorials, measure) / _mean(jobs, measure)
        return f"{1 / value if inverse else value:.2f}"

    rows = [
        ["training images/s (epochs after the first)", _each(jobs, _rate),
         _each(tutorials, _rate), ratio(_rate, inverse=True)],
        [f"seconds from start to val_accuracy >= {target:.2f} (95% of the lower best)",
         _each(jobs, reached), _each(tutorials, reached), ratio(reached)],
        ["**whole process, seconds (start to exit)**", _each(jobs, lambda r: r["wall"]),
         _each(tutorials, lambda r: r["wall"]), f"**{_wall_ratio(results):.2f}**"],
        ["best val_accuracy", _each(jobs, _best, 3), _each(tutorials, _best, 3),
         f"{_best(job) - _best(tutorial):+.3f}"],
        ["training seconds (sum of epochs)", _each(jobs, _train_seconds),
         _each(tutorials, _train_seconds), ratio(_train_seconds)],
        ["everything else (imports, data, model, evaluations, saves, finish)",
         _each(jobs, other), _each(tutorials, other), ""],
        ["CPU seconds (user + system)", _each(jobs, lambda r: r["cpu"]),
         _each(tutorials, lambda r: r["cpu"]), ratio(lambda r: r["cpu"])],
        ["CPU seconds of other processes meanwhile", _each(jobs, _other_cpu),
         _each(tutorials, _other_cpu), ""],
        ["peak memory, MB", _f(job["peak_mb"], 0), _f(tutorial["peak_mb"], 0), ""],
    ]
    epochs = _table(
        ["epoch", "job val_accuracy", "job s from start", "tutorial val_accuracy",
         "tutorial s from start"],
        [[a["epoch"], f"{a['val_accuracy']:.3f}", _f(a["t"]), f"{b['val_accuracy']:.3f}",
          _f(b["t"])] for a, b in zip(_epochs(job), _epochs(tutorial), strict=False)])
    order = ("the tutorial, then the job; at the end of section 3 the job, then the tutorial "
             "again; values are means, each run's in brackets" if len(jobs) > 1
             else "the tutorial, then the job")
    text = f"""## 1. Against the tutorial's `model.fit`

VGG16 from random weights on `digits` at 32x32 (as `make run`), 3 epochs, batch 64, Adam 1e-4,
the same validation split (10%, seed 0), no augmentation on either side. The job:
`entrypoint.py` with `DATASET=digits BACKBONE=VGG16 WEIGHTS=none IMAGE_SIZE=32 EPOCHS=3
BATCH_SIZE=64 LEARNING_RATE=1e-4 AUGMENT=none EXPORT=none` (its defaults otherwise:
STEPS_PER_CALL=10, PRECISION=auto which chose `{setup.get('precision', '?')}`, XLA=auto which
chose `{setup.get('xla', '?')}`), writing best.h5, the resume state, history, curves and the
final evaluation into a local folder. `EXPORT=none` because the tutorial exports nothing. The
tutorial (`bench/tutorial.py`): a plain Keras script that resizes and preprocesses every image
up front into numpy arrays, then `model.compile` + `model.fit` with a ModelCheckpoint on the best
val_accuracy (`.h5`), as the notebook does. Keras 3's `jit_compile="auto"` resolved to
`{jit}` for it on this CPU (Keras turns XLA off on CPU-only machines). Order: {order}.

""" + _table(["", "the job", "tutorial `model.fit`", "ratio"], rows) + "\n\n" + epochs
    if xla:
        rows_xla = _epochs(xla)
        first = _t(xla, "first training steps done")
        train_images = _field(tutorial, "train") or 1617  # the split's training images
        steps, per_call = train_images // 64, 10
        steady = ((steps - per_call) * 64 / (rows_xla[0]["t"] - first)
                  if rows_xla and first else None)
        slower = f"{_rate(job) / steady:.1f}x slower than" if steady else "not comparable with"
        text += f"""

The job with `XLA=on` (each replica's forward and backward pass compiled by XLA), one epoch
only, to keep `make bench` short: its steps ran {slower} XLA=auto's here (XLA's CPU backend
does not use the oneDNN convolutions that TensorFlow's own kernels use).

""" + _table(["", "XLA=auto (off), 3 epochs", "XLA=on, 1 epoch"], [
            [f"seconds from start to the first {per_call} steps done (tracing, compiling)",
             _f(_t(job, "first training steps done")), _f(first)],
            [f"training images/s after the first {per_call} steps (XLA=on: to the end of "
             "epoch 1, its evaluation included)", _f(_rate(job)), _f(steady)],
            ["best val_accuracy", f"{_best(job):.3f}", f"{_best(xla):.3f} (1 epoch)"],
            ["whole process, seconds", _f(job["wall"]), f"{_f(xla['wall'])} (1 epoch)"]])
    text += "\n\n" + _race_cause(results)
    return text


def _other_cpu(run: R) -> float:
    return run.get("other_cpu", math.nan)


def _race_cause(results: R) -> str:
    jobs, tutorials = _sides(results)
    ratio = _wall_ratio(results)
    rate, their_rate = _mean(jobs, _rate), _mean(tutorials, _rate)
    train = _mean(jobs, _train_seconds)
    wall = _mean(jobs, lambda r: r["wall"])
    setup = _line(jobs[0], "training setup") or {}
    if ratio >= TARGET_RACE:
        text = (f"**Reading.** Whole-process ratio {ratio:.2f}: the target is met. The job "
                f"trained in `{setup.get('precision')}` (`PRECISION=auto`: "
                f"{setup.get('precision_reason')}); the tutorial, as the notebook is written, "
                "in Keras' default float32.")
        other = results.get("precision_other")
        if other and _field(other, "precision") == "float32":
            text += (f" Like for like, the job in float32 (section 8) takes {other['wall']:.1f} "
                     f"s, a ratio of {_mean(tutorials, lambda r: r['wall']) / other['wall']:.2f}:"
                     " the rest of the gain is the precision this CPU runs natively, which "
                     "the tutorial would get too by setting Keras' `mixed_bfloat16` policy.")
        return text
    lines = [f"**Reading.** Whole-process ratio {ratio:.2f} against the 2.0 target. "
             f"{train / wall:.0%} of the job's process is its training steps, and its steps "
             f"run at {rate / their_rate:.2f}x the tutorial's images per second."]
    dtype = "bfloat16" if setup.get("precision") == "mixed_bfloat16" else "float32"
    if "flops_vgg16" in results and "profile" in results:
        macs = results["flops_vgg16"]["forward_macs"]
        per_image = 6 * macs  # forward + backward = 3 forward passes, 2 FLOPs a multiply-add
        achieved = rate * per_image / 1e9
        matmul = results["profile"]["matmul_gflops"][dtype]
        lines.append(
            f"VGG16 at 32x32 is {macs / 1e9:.2f} G multiply-adds forward (counted from its "
            f"layers), about {per_image / 1e9:.2f} GFLOP per image trained: at "
            f"{rate:.0f} images/s the job computes {achieved:.0f} GFLOP/s in {dtype}, "
            f"{achieved / matmul:.0%} of the {matmul:.0f} GFLOP/s that one large {dtype} "
            f"matrix multiply reaches on this CPU (section 2b); the tutorial's `model.fit` "
            f"computes {their_rate * per_image / 1e9:.0f} GFLOP/s in float32.")
    bound = _mean(tutorials, lambda r: r["wall"]) / train
    fixed = _mean(jobs, lambda r: r["wall"]) - train
    lines.append(
        f"Even with no fixed costs at all (no start-up, evaluation, saving or finish; the "
        f"job's are {fixed:.1f} s, the tutorial's "
        f"{_mean(tutorials, lambda r: r['wall']) - _mean(tutorials, _train_seconds):.1f} s), "
        f"the job would take its {train:.1f} s of training steps: a ratio of at most "
        f"{bound:.2f}. So the steps decide it, and both sides' steps are the same convolutions "
        "on 2 cores")
    if dtype == "bfloat16":
        lines[-1] += (", the job's already in the bfloat16 this CPU runs natively. What would "
                      "close it: nothing the job can do without changing the arithmetic "
                      "(fewer FLOPs per image, or an accelerator). The tutorial's own speed "
                      "also moves from run to run on this machine: the two tutorial runs here "
                      "differ by "
                      f"{abs(tutorials[0]['wall'] - tutorials[-1]['wall']):.1f} s.")
    else:
        lines[-1] += (". What would close it: faster arithmetic, which here means bfloat16 "
                      "on a CPU that runs it natively (section 8) or an accelerator.")
    return " ".join(lines)


def _pipeline(results: R) -> str:
    p = results["pipeline"]
    return f"""## 2. Pipeline efficiency (target >= {TARGET_PIPELINE})

The job's loop (MobileNetV2 at 32x32, batch 32, STEPS_PER_CALL=10) fed by the real tf.data
pipeline (shuffle, resize, preprocess, prefetch) against the same loop fed by one preprocessed
batch already in memory, {p['images_per_round']} images per round, 3 rounds each, alternating
(`bench/speed.py pipeline`).

| real pipeline, images/s | in-memory batch, images/s | ratio |
|---|---|---|
| {p['real']:.1f} | {p['synthetic']:.1f} | **{p['ratio']:.3f}** |"""


def _profile(results: R) -> str:
    p = results["profile"]
    per_step = p["seconds_per_step"]
    one, ten = per_step["steps_per_call=1"], per_step["steps_per_call=10"]
    empty = p["empty_call_seconds"]
    epoch = p["steps_per_epoch"] * ten
    bn = results.get("bn_one_device")
    text = f"""## 2b. Where the loop's time goes (`bench/speed.py profile`)

VGG16 at 32x32, batch {p['batch']}, one CPU device, batches already in memory.

""" + _table(["measured", "value"], [
        ["one call of zero steps (the call, its empty loop, the host sync reading the sums)",
         f"{empty * 1e3:.2f} ms"],
        ["seconds per step, STEPS_PER_CALL=1 (a host sync every step)", f"{one:.3f}"],
        ["seconds per step, STEPS_PER_CALL=10 (the default)", f"{ten:.3f}"],
        ["STEPS_PER_CALL=1 over 10", f"{one / ten:.3f}"],
        ["host sync share of a step at STEPS_PER_CALL=1 (zero-step call / step)",
         f"{empty / one:.2%}"],
        [f"one evaluation of the validation split ({p['validation_images']} images)",
         f"{p['evaluation_seconds']:.2f} s ({p['evaluation_seconds'] / epoch:.1%} of an "
         f"epoch's {epoch:.1f} s of steps)"],
        ["traces of the train function over the profile (new iterators, a shorter last call)",
         p["train_traces"]],
        ["float32 matrix multiply, 2048x2048", f"{p['matmul_gflops']['float32']:.0f} GFLOP/s"],
        ["bfloat16 matrix multiply, 2048x2048",
         f"{p['matmul_gflops']['bfloat16']:.0f} GFLOP/s"]])
    if bn:
        text += """

BatchNormalization on one device (MobileNetV2 at 32x32, batch 64, `bench/speed.py batchnorm`),
built synchronized and not: Keras' synchronized moments compute a count tensor and three
all-reduces (identities on one device) per layer.

""" + _table(["synchronized layers", "plain layers", "synchronized / plain"],
                   [[f"{bn['synchronized']:.4f} s/step", f"{bn['own']:.4f} s/step",
                     f"**{bn['synchronized'] / bn['own']:.3f}**"]])
    gain = 1 - ten / one
    text += f"""

**Reading.** A call costs {empty * 1e3:.2f} ms beyond its steps, {empty / ten:.3%} of a step:
per-call host syncs do not cost this loop measurable time at STEPS_PER_CALL=10 (1 against 10
differs by {gain:+.1%}, within the noise of alternating rounds), and the train function is
traced {p['train_traces']} time(s), so nothing retraces per epoch or per chunk length. The
evaluation each epoch costs what its {p['validation_images']} images cost. What the loop's
steps spend is the model's own forward and backward pass."""
    if bn:
        slower = bn["synchronized"] / bn["own"] - 1
        text += (f" On one device, synchronized BatchNorm layers cost {slower:+.1%} per step "
                 "with nobody to synchronize with: the job builds them synchronized only with "
                 "several replicas (trainer.cluster.distribution.synchronized_batch_norm).")
    return text


def _upload_ratio(results: R, kind: str) -> R:
    """S3 over the mean of the two local runs: training seconds and whole-process seconds."""
    local = [results["job"], results["job_again"]]
    s3 = results[f"upload_{kind}"]
    return {"train": _train_seconds(s3) / _mean(local, _train_seconds),
            "wall": s3["wall"] / _mean(local, lambda r: r["wall"])}


def _upload(results: R) -> str:
    runs = [results["job"], results["job_again"], results["upload_rclone"],
            results["upload_moto"]]
    ratios = {kind: _upload_ratio(results, kind) for kind in ("rclone", "moto")}

    def row(label: str, measure: Any, key: str | None = None, bold: bool = False) -> list[str]:
        cells = [label, _f(measure(runs[0])), _f(measure(runs[1]))]
        for kind, run in zip(("rclone", "moto"), runs[2:], strict=True):
            ratio = "" if key is None else f" ({'**' if bold else ''}" \
                f"{ratios[kind][key]:.3f}{'**' if bold else ''})"
            cells.append(_f(measure(run)) + ratio)
        return cells

    table = _table(["", "local, first", "local, again", "rclone S3", "moto S3"], [
        row("training seconds (sum of epochs)", _train_seconds, "train", bold=True),
        row("whole process, seconds", lambda r: r["wall"], "wall"),
        row("job CPU seconds", lambda r: r["cpu"]),
        ["S3 server CPU seconds (on the same 2 cores)", "", "",
         _f(runs[2].get("server_cpu")), _f(runs[3].get("server_cpu"))]])
    noise = abs(_train_seconds(runs[0]) - _train_seconds(runs[1])) / _mean(
        runs[:2], _train_seconds)
    text = f"""## 3. Upload overhead (target <= {TARGET_UPLOAD})

The race's job (section 1) into a local folder, then into `rclone serve s3` and `moto_server`
on loopback, then into the local folder again (local, rclone, moto, local). Each epoch hands
best.h5 (when it improves), the resume state (model and Adam slots) and the history to the
background uploader, which freezes each file as a hard-link snapshot (trainer/store/uploader.py) and
uploads it while training goes on; the run ends once everything is stored. Ratios (in
brackets) are S3 over the mean of the two local runs.

{table}

**Reading.** The two local runs differ by {noise:.1%} in training seconds: that is this
machine's run-to-run noise, against which the S3 ratios are read."""
    for kind, run in zip(("rclone", "moto"), runs[2:], strict=True):
        ratio = ratios[kind]["train"]
        if ratio > TARGET_UPLOAD:
            text += (f" With {kind}, training took {ratio:.3f}x; its server used "
                     f"{run.get('server_cpu', math.nan):.1f} CPU seconds on the same two cores "
                     "during the run, CPU that training does not get (a remote S3 service "
                     "costs this machine only the client's side).")
    if any(r["train"] > TARGET_UPLOAD for r in ratios.values()):
        text += (" What would close it: measure against a store off this machine, or pin the "
                 "server to a core of its own; the job's own side is a hard-link snapshot (no "
                 "copy) and boto3's upload on one background thread.")
    return text


def _startup(results: R) -> str:
    job, bare = results["startup_job"], results["startup_bare"]
    first, bare_first = _t(job, "first training steps done"), _t(bare, "first step done")
    extra = first - bare_first
    marks = [("starting run", "settings read, logging up"),
             ("training setup", "TensorFlow imported, data loaded, strategy, model built"),
             ("phase train: epochs 1-1", "outputs started (config.json, samples.png)"),
             ("first training steps done", "first call of one step traced and run")]
    timeline = _table(["job log line", "seconds from start", "what came before it"],
                      [[f"`{message}`", _f(_t(job, message)), what] for message, what in marks
                       if _t(job, message) is not None])
    return f"""## 4. Start-up (target <= bare script + {TARGET_STARTUP:.0f} s)

Process start to the first optimizer step: the job (MobileNetV2 at 32x32 on `digits`, batch
64, `STEPS_PER_CALL=1` so that its first call is one step, `EPOCHS=1`, `EXPORT=none`; the time
its log line `first training steps done` reaches this process) against `bench/bare_start.py`,
which imports TensorFlow, builds the same model, compiles it and trains one batch of 64
(`train_on_batch`).

""" + _table(["", "the job", "bare script", "difference"], [
        ["seconds to the first optimizer step", f"{first:.1f}", f"{bare_first:.1f}",
         f"**{extra:+.1f}**"],
        ["whole process, seconds", f"{job['wall']:.1f} (then one epoch, evaluation, finish)",
         f"{bare['wall']:.1f}", ""],
        ["peak memory, MB", f"{job['peak_mb']:.0f}", f"{bare['peak_mb']:.0f}", ""]]) + f"""

{timeline}"""


def _batchnorm(results: R) -> str:
    rows, summary = [], {}
    for mode in ("step", "save"):
        runs = results[f"bn_{mode}"]
        chief = runs[0]
        epochs = _epochs(chief)
        summary[mode] = {"rate": _rate(chief), "best": _best(chief),
                         "train_accuracy": epochs[-1].get("accuracy"),
                         "wall": max(run["wall"] for run in runs)}
        rows.append([f"`{mode}`", _f(summary[mode]["rate"]),
                     " / ".join(f"{row['seconds']:.1f}" for row in epochs),
                     f"{summary[mode]['best']:.3f}", _f(summary[mode]["train_accuracy"], 3),
                     _f(summary[mode]["wall"])])
    speed = summary["save"]["rate"] / summary["step"]["rate"]
    chance = 0.15
    at_chance = all(s["best"] < chance for s in summary.values())
    text = """## 5. BatchNorm across workers

Two workers on loopback (`TF_CONFIG`, MultiWorkerMirroredStrategy, worker 0 the chief, both on
this machine's 2 cores), MobileNetV2 at 32x32 on `digits` from random weights, batch 32 per
worker (64 global), Adam 1e-3, 3 epochs. `BATCH_NORM_SYNC=step`: every BatchNorm layer
all-reduces its batch statistics across the workers in every training step (Keras'
synchronized moments: three all-reduces per layer forward, and their gradients backward);
`save`: each worker normalizes with its own batch, and the moving statistics are averaged
across workers once before each evaluation and save (trainer/loop.py).

""" + _table(["BATCH_NORM_SYNC", "images/s (both workers, epochs after the first)",
                  "epoch seconds", "best val_accuracy", "last training accuracy",
                  "whole process, s"], rows)
    text += f"""

`save` trains at **{speed:.2f}x** the images per second of `step` here."""
    if at_chance:
        text += (" Validation accuracy stays near chance for both: keras.applications' "
                 "MobileNetV2 keeps its moving statistics with momentum 0.999, and after "
                 "3 epochs of ~25 steps they have moved less than 8% of the way from their "
                 "initial values, so inference-mode accuracy says nothing yet about either "
                 "setting; training accuracy (batch statistics) is the comparable figure.")
    better = "save" if speed > 1.02 else "step"
    text += f"""

**Default.** `BATCH_NORM_SYNC=auto`, the default, is `save` across workers and `step` inside
one worker (trainer.cluster.distribution.synchronized_batch_norm); these numbers support `{better}`
across workers"""
    if better == "save":
        text += (f": it is {speed:.2f}x faster on loopback, where a collective is cheapest, "
                 "and the cost of `step` grows with the latency between nodes (about 260 small "
                 "collectives per MobileNetV2 or ResNet50 step, each on the critical path). "
                 "Inside one worker the collectives stay on the node (NVLink or PCIe), so "
                 "`auto` keeps them there. Across workers `save` also leaves each replica of a "
                 "node its own statistics (Keras synchronizes over every replica or none), "
                 "which at 32 or more images per replica is what single-device training does "
                 "anyway; with small per-replica batches, set `step`.")
    else:
        text += (": `save` is not measurably faster here, so on this machine the synchronized "
                 "statistics cost nothing worth giving up; across real nodes the collectives "
                 "cost more than on loopback.")
    return text


def _export(results: R) -> str:
    e = results["export"]
    rows = [[f"`{kind}`", r["status"], _f(r["seconds"], 2), _f(r.get("check_seconds"), 2),
             _f(r["call_seconds"], 2), _f(r["megabytes"], 1),
             "n/a" if r["max_abs_difference"] is None else f"{r['max_abs_difference']:.1e}"]
            for kind, r in e["formats"].items()]
    return f"""## 6. Export time per format

`trainer.serving.export.export_model` of the race job's best.h5 (VGG16 at 32x32,
{e['model_megabytes']:.0f} MB), one format per call (`bench/speed.py export`), with 64 validation
images as references.
Writing includes rebuilding the serving model (uint8 input, resize and preprocessing inside);
the check loads the export from disk with its own runtime (ONNX and LiteRT in a fresh process,
the SavedModel in the exporting process) and compares it with best.h5.

""" + _table(["format", "status", "write, s", "check, s", "whole call, s", "size, MB",
              "max difference from best.h5"], rows)


def _finish(results: R) -> str:
    """The finish's parts from the `finish part ... done` lines of the job at its defaults."""
    run, restart = results["finish"], results.get("finish_restart")
    epochs = _epochs(run)
    previous, rows = epochs[-1]["t"], []
    for row in run["lines"]:
        message = str(row.get("message", ""))
        if message.startswith("finish part ") and message.endswith(" done"):
            rows.append([message.removeprefix("finish part ").removesuffix(" done"),
                         _f(row["t"] - previous, 2)])
            previous = row["t"]
    ended = _t(run, next(str(row["message"]) for row in run["lines"]
                         if str(row.get("message", "")).startswith("run finished")))
    rows.append(["uploads finished, manifest.json", _f((ended or previous) - previous, 2)])
    whole = (ended or run["wall"]) - epochs[-1]["t"]
    epoch = epochs[-1]["seconds"]
    rows.append(["**the finish, after the last epoch's line**", f"**{whole:.2f}**"])
    tutorial = results.get("tutorial")
    race = ""
    if tutorial is not None:
        reached = _to_accuracy(run, _best(tutorial))
        race = (f"\n\nThe race at the defaults (EXPORT=savedmodel, the finish included): the "
                f"tutorial {tutorial['wall']:.1f} s, the job {run['wall']:.1f} s, "
                f"{tutorial['wall'] / run['wall']:.2f}x; best val_accuracy "
                f"{_best(tutorial):.3f} against {_best(run):.3f}; the job reached the "
                f"tutorial's best ({_best(tutorial):.3f}) "
                + ("never" if reached is None else f"{reached:.1f} s after its start") + ".")
    again = ""
    if restart is not None:
        redone = [str(row["message"]) for row in restart["lines"]
                  if str(row.get("message", "")).startswith(("finish part ", "training setup"))]
        again = (f" Restarted with only `manifest.json` missing (every part recorded), the same "
                 f"run took {restart['wall']:.1f} s, whole process, "
                 + (f"and logged {', '.join(redone)}." if redone else
                    "building no model and making no part again."))
    return f"""## 6b. The finish phase, by parts

The race's job at the user's defaults (`EXPORT=savedmodel`), one run: seconds of each part of
what follows the last epoch, from the time of the log line before it to its own `finish part ...
done` line (the first part includes saving the last epoch's state, best.h5 and curves). The
last epoch trained in {epoch:.1f} s; the whole finish cost {whole / epoch:.2f} epochs.{again}

""" + _table(["part", "seconds"], rows) + race


def _prefix(results: R) -> str:
    p = results["prefix"]
    return f"""## 7. An S3 prefix of {p['objects']:,} small objects

`bench/s3_prefix.py` `measure("{p['server']}")`: {p['objects']:,} objects of
{p['object_bytes']:,} bytes mirrored by `trainer.store.s3.download_uri` into an empty cache one at a
time against {p['concurrency']} at a time, directly on loopback and through a proxy that adds
{p['latency'] * 1000:.0f} ms before each response (as a distant store does).

""" + _table(["", "one at a time, s", "concurrent, s", "ratio"], [
        ["loopback", p["one_at_a_time_seconds"], p["concurrent_seconds"], f"**{p['ratio']}**"],
        [f"+{p['latency'] * 1000:.0f} ms per response", p["latency_one_at_a_time_seconds"],
         p["latency_concurrent_seconds"], f"**{p['latency_ratio']}**"],
        ["again, everything cached (listing only)", "", p["cached_seconds"], ""]]) + f"""

**Reading.** With a distant store (+{p['latency'] * 1000:.0f} ms per response) fetching
{p['concurrency']} at a time is {p['latency_ratio']}x as fast as one at a time. On loopback
({p['ratio']}x) the S3 server runs on the same 2 cores as the client, so requests wait for CPU,
not for the network, and concurrency has little to overlap. A second fetch of an unchanged prefix
only lists it."""


def _streaming(results: R) -> str:
    s = results["streaming"]
    return f"""## 7b. Shards streamed from S3 (target >= {TARGET_STREAMING})

`bench/streaming.py`: `digits` as PNGs ({s['images_per_round']:,} images per round) in
{s['shards']} WebDataset shards, {s['dataset_bytes']:,} bytes, trained on by the job's loop
(MobileNetV2 at 32x32, batch 32, float32, STEPS_PER_CALL=10) through the job's pipeline, from a
local folder and from an rclone S3 server on loopback (sharing the 2 cores), {s['rounds']}
rounds each, alternating, each round an epoch of its own order. `DATA_CACHE_BYTES` is a tenth
of the dataset; a thread sampled the bytes in the cache's folder every 2 ms during the S3 rounds.

""" + _table(["", "value"], [
        ["training images/s, local disk", s["images_per_second_local"]],
        ["training images/s, streamed from S3", s["images_per_second_s3"]],
        ["**S3 / local**", f"**{s['ratio']}**"],
        ["DATA_CACHE_BYTES", f"{s['cache_bytes']:,}"],
        ["peak bytes on disk, sampled", f"{s['peak_disk_bytes']:,}"],
        ["the cache's own high-water mark", f"{s['cache_peak_bytes']:,}"],
        ["shards downloaded over the rounds", s["shards_streamed"]]]) + f"""

**Reading.** Streamed from S3 the loop trains at {s['ratio']}x its speed from local disk (local
shards take the same reader, in place; a ratio above 1 is the noise of a shared machine): the next
shards are downloaded in the background while the model computes. The disk held at most
{s['peak_disk_bytes']:,} bytes for a dataset {s['dataset_over_cache']:g}x the cache: each shard is
deleted once read."""


def _precision(results: R) -> str:
    job, other = results["job"], results["precision_other"]
    setup = _line(job, "training setup") or {}
    chosen = setup.get("precision", "?")
    pair = {chosen: job, _field(other, "precision"): other}
    f32, bf16 = pair.get("float32"), pair.get("mixed_bfloat16")
    if f32 is None or bf16 is None:
        return "## 8. Precision\n\nNot measured: the runs did not give one of each precision."
    matmul = results.get("profile", {}).get("matmul_gflops")
    rows = [[name, _f(run["wall"]), _f(_train_seconds(run)), _f(_rate(run)), f"{_best(run):.3f}"]
            for name, run in (("float32", f32), ("mixed_bfloat16", bf16))]
    speed = _rate(bf16) / _rate(f32)
    text = f"""## 8. Precision: float32 against bfloat16

The race's job (VGG16, `digits` at 32x32, 3 epochs, batch 64, `AUGMENT=none`) with
`PRECISION=auto`, which chose `{chosen}` here ("{setup.get('precision_reason', '?')}"), and
the same job with the other precision.

""" + _table(["precision", "whole process, s", "training s", "images/s", "best val_accuracy"],
             rows)
    text += f"\n\nbfloat16 trains at **{speed:.2f}x** the images per second of float32 here"
    if matmul:
        text += (f"; a bare 2048x2048 matrix multiply reaches {matmul['bfloat16']:.0f} GFLOP/s "
                 f"in bfloat16 against {matmul['float32']:.0f} in float32")
    flags = results["machine"]["flags"]
    text += (f". This CPU has `avx512_bf16` {'yes' if flags['avx512_bf16'] else 'no'}, "
             f"`amx_bf16` {'yes' if flags['amx_bf16'] else 'no'}. ")
    agrees = (speed >= 1.2) == (chosen == "mixed_bfloat16")
    text += ("`PRECISION=auto` picks bfloat16 on a CPU with AMX-BF16, or with AVX512-BF16 where "
             "a half-second convolution test at start finds bfloat16 at least 1.2x as fast "
             f"(trainer.cluster.distribution.resolve_precision); it chose `{chosen}`, "
             "and the whole "
             f"job {'agrees' if agrees else 'disagrees'}.")
    if chosen == "mixed_bfloat16":
        text += (f" Best val_accuracy {_best(bf16):.3f} in bfloat16 against {_best(f32):.3f} "
                 "in float32 on the same epochs and data.")
    return text


NAMES = {"tutorial": "1. tutorial", "job": "1. job", "job_xla": "1. job, XLA=on",
         "upload_rclone": "3. job into rclone S3", "upload_moto": "3. job into moto S3",
         "job_again": "3. job, local again", "tutorial_again": "3. tutorial again",
         "precision_other": "8. job, other precision", "startup_job": "4. job, start-up",
         "startup_bare": "4. bare script"}


def _load(results: R) -> str:
    rows = [[label, _f(run["wall"]), _f(run["cpu"]), _f(run["other_cpu"]), _f(run["steal"])]
            for key, label in NAMES.items() if (run := results.get(key)) and "other_cpu" in run]
    if not rows:
        return ""
    return """## Load on the machine during each run

CPU seconds of every other process on this machine while each run went on (from
`/proc/stat`, less the run's own; for the S3 runs this includes the S3 server), and seconds the
hypervisor gave to other guests (steal). A comparison whose two sides saw different loads here
is not a fair one.

""" + _table(["run", "wall, s", "own CPU, s", "other processes' CPU, s", "steal, s"], rows)


def _gpu(results: R) -> str:
    counted = results.get("flops_resnet50")
    macs = counted["forward_macs"] if counted else 3.86e9
    params = counted["parameters"] if counted else 25.6e6
    variables = counted.get("variables", 214) if counted else 214
    bn_layers = counted.get("batch_norm_layers", 53) if counted else 53
    source = "counted from the model's layers by `bench/flops.py` in this run" if counted \
        else "the usual published figure"
    train = 6 * macs  # FLOPs per image trained: forward + 2x backward, 2 FLOPs per MAC
    goal = 5000
    mfu_goal = goal * train / (H200["peak"] * 1e12)
    step_images = 256
    step_seconds = step_images / goal
    f32_bytes, bf16_bytes = params * 4, params * 2
    ring = 2 * 7 / 8

    def allreduce_ms(size: float) -> float:
        return size * ring / (NVLINK_BUS_GBS * 1e9) * 1e3

    node = 8 * goal * (1 - allreduce_ms(f32_bytes) / 1e3 / step_seconds)
    a100, a100_hbm = 2375, 1.555  # images/s, TB/s: NVIDIA's TF ResNet50 on one A100 40GB
    low = a100 * H100["hbm"] / a100_hbm
    high = min(a100 * H200["hbm"] / a100_hbm, a100 * H200["peak"] / 312)
    return f"""## 9. GPUs: an estimate on paper, not a measurement

This machine has no GPU: nothing in this section was measured. `bash bench/gpu.sh` on a GPU node
measures it (ResNet50 at 224x224, `mixed_bfloat16`, XLA, the job's own loop on in-memory batches,
on one GPU and then on all GPUs of the node; images/s per GPU and MFU from the model's counted
FLOPs); paste its table here.

- **Work per image.** ResNet50 (keras.applications, 224x224, 1000 classes): {macs / 1e9:.2f} G
  multiply-adds forward ({source}), so training is about 3 x 2 x {macs / 1e9:.2f} =
  **{train / 1e9:.1f} GFLOP per image**; {params / 1e6:.1f} M trainable parameters.
- **One H100 or H200 (SXM), dense bfloat16 peak {H100['peak']:.0f} TFLOPS.** The goal of
  {goal:,} images/s is {goal * train / 1e12:.0f} TFLOPS, an MFU of **{mfu_goal:.1%}**. ResNet50
  does not reach transformer MFUs: BatchNorm, ReLU and the residual adds move memory without
  matrix work. NVIDIA's published TensorFlow ResNet-50 v1.5 (DeepLearningExamples, NGC 20.06,
  mixed precision, XLA, DALI, batch 256) reached 2,375 images/s on one A100 40GB, about
  {a100 * train / 312e12:.0%} of its 312 TFLOPS.
  Scaled by memory bandwidth (the bound for the non-matrix part; H100 {H100['hbm']} TB/s, H200
  {H200['hbm']} TB/s, A100 1.56 TB/s) and capped by the compute ratio (989 / 312), that is
  about **{low:,.0f} images/s per H100** ({low * train / (H100['peak'] * 1e12):.0%} MFU), and
  **{low:,.0f} to {high:,.0f} per H200** (the same compute, more bandwidth: the low end if the
  extra bandwidth buys nothing, the high end if the whole step scales with it;
  {low * train / (H200['peak'] * 1e12):.0%}-{high * train / (H200['peak'] * 1e12):.0%} MFU).
  So **>= {goal:,}
  images/s per H200 is within reach** for the job's loop with `PRECISION=auto` (bfloat16 on
  compute capability >= 8.0), `XLA=auto` (on with one GPU), batch 256 per GPU, and an input
  pipeline that delivers it (below).
- **8 GPUs of a node.** The job all-reduces the gradients once per step after the backward
  pass (MirroredStrategy, NCCL), not overlapped with it. Under `mixed_bfloat16` the variables,
  and so the gradients, are float32: {f32_bytes / 1e6:.0f} MB per step ({bf16_bytes / 1e6:.0f} MB if
  cast to bfloat16 first). A ring all-reduce moves 2 x 7/8 of that per GPU; at
  {NVLINK_BUS_GBS:.0f} GB/s of NCCL bus bandwidth over NVLink 4 (450 GB/s each way, about 80%
  reached) that is **{allreduce_ms(f32_bytes):.2f} ms** in float32
  ({allreduce_ms(bf16_bytes):.2f} ms in bfloat16) against a step of {step_seconds * 1e3:.0f} ms
  ({step_images} images at {goal:,}/s): about
  {allreduce_ms(f32_bytes) / (step_seconds * 1e3):.1%} of the step even without overlap, so
  **about {node:,.0f} images/s per node** from the gradients' side. Synchronized BatchNorm
  (`BATCH_NORM_SYNC=step`) adds about {bn_layers} x 5 = {bn_layers * 5} small collectives per step
  (three
  all-reduces per layer forward, two backward), each latency-bound (tens of microseconds
  through NCCL and TensorFlow's collective ops): some 3-10 ms per step, 5-20% of it, on the
  critical path; and it keeps XLA off (trainer/cluster/distribution.py). With `BATCH_NORM_SYNC=save`
  and `XLA=on`, 8 H200s at {goal:,} images/s each should give about {node:,.0f} images/s;
  NVIDIA's 8-GPU A100 figure
  (17,400, 7.3x one GPU) shows the same kind of scaling with data loading included.
- **What the estimate assumes and the job must prove.** The input pipeline: {8 * goal:,}
  JPEGs decoded, cropped and resized per second on the node's CPUs is about 100 cores' worth
  at a few hundred images per core and second; TFRecords of images stored at training size,
  or GPU decoding, are what keep the GPUs fed. Adam's update outside the XLA cluster (one set
  of small kernels per variable, {variables} variables) and the host side of each call are per-step
  costs that `bench/gpu.sh` will show."""

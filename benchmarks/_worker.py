"""Measures ONE framework configuration and prints one JSON line (used by `bench.py`).

Each run is a fresh process, so frameworks never share an interpreter (and
importing torchvision after TensorFlow, which segfaults here, cannot happen).
The driver sets thread counts, the CPU affinity and, for `--device cpu`,
`CUDA_VISIBLE_DEVICES=""`; the worker sets each configuration's variables
(`ENVIRONMENT`: Keras backend, keras_maxvit kernels, tf-keras) before
importing any framework.

Within the process: build the model (random weights), then

1. inference throughput: `iters` calls on a batch, synchronized once at the end;
2. single-image latency: `latency_iters` calls on one image, each synchronized;
3. training-step throughput: `iters` steps of forward, cross-entropy,
   backward and AdamW update on a batch, synchronized once at the end;

each after `warmup` untimed calls, the first of which (compilation included) is
timed on its own (`first_predict_s`, `first_latency_s`, `first_train_step_s`).
keras_maxvit runs as users run it (`_keras_runners.py`: `compile()` defaults,
`predict_on_batch`, `train_on_batch`); the peers at their best
(`_torch_runners.py`, `_tf_runners.py`). Peak memory is the process's peak RSS
on CPU and the framework allocator's peak on CUDA.

Other tasks: `compile-time` (build, then the first and second
`train_on_batch` of a keras_maxvit configuration), `probe` (is there a GPU,
which) and `flops` (FLOPs per image, counted on timm's model).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback

from _common import (
    RESULT_PREFIX,
    VARIANTS,
    Skip,
    cpu_ticks,
    error_text,
    rss_peak_mib,
    steal_percent,
)

KERAS_BACKENDS = {"jax": "jax", "tf": "tensorflow", "torch": "torch"}

# Set before the first import of Keras or TensorFlow in the process.
ENVIRONMENT = {
    **{f"keras-{short}": {"KERAS_BACKEND": name} for short, name in KERAS_BACKENDS.items()},
    **{
        f"keras-{short}-reference": {"KERAS_BACKEND": name, "KERAS_MAXVIT_KERNELS": "reference"}
        for short, name in KERAS_BACKENDS.items()
    },
    # kecam's MaxViT is built with Keras 2 (tf-keras); it does not build on Keras 3.
    "kecam": {"TF_USE_LEGACY_KERAS": "1", "KECAM_BACKEND": "tensorflow"},
    "kecam-xla": {"TF_USE_LEGACY_KERAS": "1", "KECAM_BACKEND": "tensorflow"},
}
# Cleared first, so that the caller's shell cannot change a configuration.
CLEARED = ("TF_USE_LEGACY_KERAS", "KERAS_MAXVIT_KERNELS")


def _build_keras(args):
    from _keras_runners import KerasRunner

    return KerasRunner(args)


def _build_kecam(args):
    from _tf_runners import KecamRunner

    return KecamRunner(args)


def _build_timm(args):
    from _torch_runners import build_timm

    return build_timm(args)


def _build_torchvision(args):
    from _torch_runners import build_torchvision

    return build_torchvision(args)


RUNNERS = {
    **{fid: _build_keras for fid in ENVIRONMENT if fid.startswith("keras-")},
    "kecam": _build_kecam,
    "kecam-xla": _build_kecam,
    "timm": _build_timm,
    "timm-compile": _build_timm,
    "torchvision": _build_torchvision,
    "torchvision-compile": _build_torchvision,
}


# ----------------------------------------------------------------------------- timing


def _timed_throughput(fn, sync, warmup, iters):
    """(seconds of the first call, seconds for `iters` calls synchronized at
    the end, CPU steal % during them or None)."""
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        sync(fn())
    ticks = cpu_ticks()
    start = time.perf_counter()
    out = None
    for _ in range(iters):
        out = fn()
    sync(out)
    seconds = time.perf_counter() - start
    return first, seconds, steal_percent(ticks, cpu_ticks())


def _timed_latency(fn, sync, warmup, iters):
    """(seconds of the first call, list of per-call seconds, each synchronized)."""
    start = time.perf_counter()
    sync(fn())
    first = time.perf_counter() - start
    for _ in range(max(warmup - 1, 0)):
        sync(fn())
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        sync(fn())
        samples.append(time.perf_counter() - start)
    return first, samples


def _set_environment(framework: str) -> None:
    for name in CLEARED:
        os.environ.pop(name, None)
    os.environ.update(ENVIRONMENT.get(framework, {}))


def _build(args):
    _set_environment(args.framework)
    start = time.perf_counter()
    runner = RUNNERS[args.framework](args)
    return runner, time.perf_counter() - start


def bench(args) -> dict:
    runner, build_s = _build(args)
    result = {"framework": args.framework, "status": "ok", "metrics": {}, "errors": {}}
    result["build_s"] = build_s
    result["jit_compile"] = runner.info.get("jit_compile")
    metrics, errors = result["metrics"], result["errors"]
    batch = args.batch_size

    runner.set_mode(training=False)
    runner.reset_peak_memory()
    try:
        x, _ = runner.inputs(batch)
        first, seconds, steal = _timed_throughput(
            lambda: runner.infer(x), runner.sync, args.warmup, args.iters
        )
        metrics["first_predict_s"] = first
        metrics["infer_img_s"] = batch * args.iters / seconds
        metrics["infer_steal_pct"] = steal
    except Exception as exc:  # recorded, the other phases still run
        errors["infer"] = error_text(exc)
    if args.latency_iters > 0:
        try:
            x1, _ = runner.inputs(1)
            first, samples = _timed_latency(
                lambda: runner.infer(x1), runner.sync, args.warmup, args.latency_iters
            )
            metrics["first_latency_s"] = first
            metrics["latency_ms"] = 1000.0 * statistics.median(samples)
            metrics["latency_ms_min"] = 1000.0 * min(samples)
        except Exception as exc:
            errors["latency"] = error_text(exc)
    metrics["infer_peak_rss_mib"] = rss_peak_mib()
    infer_device_peak = runner.device_peak_mib()
    if infer_device_peak is not None:
        metrics["infer_peak_device_mib"] = infer_device_peak

    runner.set_mode(training=True)
    runner.reset_peak_memory()
    try:
        x, y = runner.inputs(batch)
        first, seconds, steal = _timed_throughput(
            lambda: runner.train_step(x, y), runner.sync, args.warmup, args.iters
        )
        metrics["first_train_step_s"] = first
        metrics["train_img_s"] = batch * args.iters / seconds
        metrics["train_steal_pct"] = steal
    except Exception as exc:
        errors["train"] = error_text(exc)
    metrics["peak_rss_mib"] = rss_peak_mib()
    train_device_peak = runner.device_peak_mib()
    if train_device_peak is not None:
        metrics["train_peak_device_mib"] = train_device_peak

    # Reported peak: device allocator on CUDA, process RSS on CPU.
    if args.device == "cuda":
        peaks = [p for p in (infer_device_peak, train_device_peak) if p is not None]
        if peaks:
            metrics["peak_mem_mib"] = max(peaks)
    else:
        metrics["peak_mem_mib"] = metrics["peak_rss_mib"]
    runner.record_compiler_stats()
    result["info"] = runner.info
    if not any(k in metrics for k in ("infer_img_s", "latency_ms", "train_img_s")):
        result["status"] = "error"
        result["reason"] = "; ".join(f"{k}: {v}" for k, v in errors.items())
    return result


def compile_time(args) -> dict:
    """Build, then time the first `train_on_batch` (tracing and compilation
    included) and the second (the step alone)."""
    if not args.framework.startswith("keras-"):
        raise Skip("--task compile-time measures keras_maxvit configurations only")
    runner, build_s = _build(args)
    x, y = runner.inputs(args.batch_size)
    metrics = {"build_s": build_s}
    for key in ("first_train_step_s", "second_train_step_s"):
        start = time.perf_counter()
        runner.sync(runner.train_step(x, y))
        metrics[key] = time.perf_counter() - start
    metrics["peak_rss_mib"] = rss_peak_mib()
    if runner.device_peak_mib() is not None:
        metrics["peak_device_mib"] = runner.device_peak_mib()
    return {
        "framework": args.framework,
        "status": "ok",
        "jit_compile": runner.info.get("jit_compile"),
        "metrics": metrics,
        "info": runner.info,
    }


def probe(args) -> dict:
    """Whether torch sees a CUDA GPU, and which."""
    info = {"cuda": False}
    try:
        import torch

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(
                cuda=True,
                name=torch.cuda.get_device_name(0),
                count=torch.cuda.device_count(),
                memory_gib=props.total_memory / 2**30,
                capability=f"{props.major}.{props.minor}",
                cuda_version=torch.version.cuda,
            )
    except Exception as exc:  # no torch: no GPU known
        info["error"] = error_text(exc)
    return info


def flops(args) -> dict:
    """Matmul and convolution FLOPs per image (2 x multiply-adds), on timm's model.

    The forward pass is counted by torch's `FlopCounterMode` (elementwise ops
    and softmax are not counted, as usual), with timm's fused attention off so
    that the attention matmuls are visible to it. A training step is taken as
    3x the forward pass (backward = 2x forward): the counter's formula for
    the backward of grouped (depthwise) convolutions overcounts them.
    """
    import timm
    import torch
    from timm.layers import set_fused_attn
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    set_fused_attn(False)
    name = f"maxvit_{args.variant}_tf_224"
    model = timm.create_model(name, pretrained=False, img_size=args.resolution).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, args.resolution, args.resolution))
    forward = int(counter.get_total_flops())
    return {
        "model": f"{name} (img_size={args.resolution})",
        "forward_flops": forward,
        "train_flops": 3 * forward,
        "by_op": {str(op): int(n) for op, n in counter.get_flop_counts()["Global"].items()},
    }


TASKS = {"bench": bench, "compile-time": compile_time, "probe": probe, "flops": flops}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="bench", choices=sorted(TASKS))
    parser.add_argument("--framework", choices=sorted(RUNNERS))
    parser.add_argument("--variant", default="tiny", choices=VARIANTS)
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--interop-threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--latency-iters", type=int, default=10)
    parser.add_argument("--compile-mode", default="default")
    args = parser.parse_args(argv)
    if args.task in ("bench", "compile-time") and not args.framework:
        parser.error(f"--framework is required for --task {args.task}")
    args.compile = bool(args.framework) and args.framework.endswith("-compile")

    start = time.perf_counter()
    try:
        result = TASKS[args.task](args)
    except Skip as exc:
        result = {"framework": args.framework, "status": "skipped", "reason": str(exc)}
    except Exception as exc:  # reported to the driver as data
        traceback.print_exc()
        result = {"framework": args.framework, "status": "error", "reason": error_text(exc)}
    result["wall_s"] = time.perf_counter() - start
    result["python"] = platform.python_version()
    sys.stdout.flush()
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

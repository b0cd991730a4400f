"""Benchmarks keras_maxvit as users run it against timm, torchvision and kecam at their best.

For one variant, resolution, batch size and dtype, every framework
configuration is measured in its own fresh process (`_worker.py`): inference
throughput, single-image latency, training-step throughput (forward, backward,
AdamW), peak memory and the first call of each (compilation included). The
configurations are alternated round-robin (the starting one rotates) for
`--repeats` rounds and the medians are reported (a run whose timed batches
lost more than `--max-steal` percent of their CPUs to other guests of the
host is measured again), in `results.json`,
`results.md` and `results.png` under `--output-dir` (`_report.py`).

keras_maxvit runs through `compile()` with its defaults, `predict_on_batch`
and `train_on_batch`, with its default kernels and (the `-reference` ids)
with `KERAS_MAXVIT_KERNELS=reference`. The peers run eager and compiled
(`torch.compile`, `tf.function` with and without XLA); the report marks each
peer family's fastest configuration and the ratios against the fastest peer.

    python benchmarks/bench.py --variant tiny --resolution 224 --batch-size 8
    nox -s bench -- --device cuda --batch-size 128

This script imports no framework itself. With `--device cuda` (or `auto` and a
visible GPU) the default dtype is bfloat16 and the table adds the achieved
TFLOP/s and its fraction of the card's dense bf16 peak.
"""

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from _environment import cpu_model, git_state, gpu_peak_tflops, versions
from _report import add_derived, fmt, summarize, write_chart, write_markdown

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_worker.py"
RESULT_PREFIX = "BENCH_RESULT:"  # as in _common.py
VARIANTS = ("tiny", "small", "base", "large", "xlarge")

# id: (label, family), in the order of the table. The ids are those of
# `_worker.py`, which sets each one's environment variables.
FRAMEWORKS = {
    "keras-jax": ("keras_maxvit-jax (compile() defaults)", "keras_maxvit"),
    "keras-tf": ("keras_maxvit-tensorflow (compile() defaults)", "keras_maxvit"),
    "keras-torch": ("keras_maxvit-torch (compile() defaults)", "keras_maxvit"),
    "keras-jax-reference": (
        "keras_maxvit-jax (compile() defaults, reference kernels)",
        "keras_maxvit-reference",
    ),
    "keras-tf-reference": (
        "keras_maxvit-tensorflow (compile() defaults, reference kernels)",
        "keras_maxvit-reference",
    ),
    "keras-torch-reference": (
        "keras_maxvit-torch (compile() defaults, reference kernels)",
        "keras_maxvit-reference",
    ),
    "kecam": ("kecam (tf.function)", "kecam"),
    "kecam-xla": ("kecam (tf.function, XLA)", "kecam"),
    "timm": ("timm (eager)", "timm"),
    "timm-compile": ("timm (torch.compile)", "timm"),
    "torchvision": ("torchvision maxvit_t (eager)", "torchvision"),
    "torchvision-compile": ("torchvision maxvit_t (torch.compile)", "torchvision"),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--variant", default="tiny", choices=VARIANTS, help="default: %(default)s")
    add("--resolution", type=int, default=224, help="a multiple of 32 (default: %(default)s)")
    add("--batch-size", type=int, default=None, help="default: 8 on CPU, 128 on CUDA")
    add(
        "--dtype",
        default=None,
        choices=("float32", "bfloat16"),
        help="default: float32 on CPU, bfloat16 on CUDA (Keras mixed_bfloat16, torch autocast)",
    )
    add("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default: %(default)s")
    add("--repeats", type=int, default=3, help="rounds over the frameworks (default: %(default)s)")
    add(
        "--warmup",
        type=int,
        default=2,
        help="untimed calls per phase, the first of which compiles (default: %(default)s)",
    )
    add(
        "--iters",
        "--steps",
        type=int,
        default=10,
        help="timed batches of inference and of training (default: %(default)s)",
    )
    add(
        "--latency-iters",
        type=int,
        default=10,
        help="timed batch-1 calls; 0 skips the latency phase (default: %(default)s)",
    )
    add(
        "--frameworks",
        nargs="+",
        default=list(FRAMEWORKS),
        metavar="ID",
        help=f"space or comma separated subset of: {', '.join(FRAMEWORKS)} (default: all)",
    )
    add(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="CPU threads of every framework; the workers are pinned to this many cores "
        "(default: all, %(default)s)",
    )
    add(
        "--interop-threads",
        type=int,
        default=1,
        help="torch and TensorFlow inter-op threads (default: %(default)s)",
    )
    add(
        "--max-steal",
        type=float,
        default=10.0,
        help="CPU steal %% (the hypervisor running others on the workers' cores) above which "
        "a run's timed batches are measured again, --steal-retries times at most "
        "(default: %(default)s)",
    )
    add("--steal-retries", type=int, default=2, help="default: %(default)s")
    add("--compile-mode", default="default", help="torch.compile mode (default: %(default)s)")
    add("--peak-tflops", type=float, default=None, help="GPU peak (default: from its name)")
    add("--no-flops", action="store_true", help="do not count FLOPs")
    add("--timeout", type=float, default=3600.0, help="seconds per worker (default: %(default)s)")
    add(
        "--time-budget",
        type=float,
        default=None,
        help="seconds for the whole benchmark: each worker's timeout is cut to what is left, "
        "and no worker starts once it is spent (default: none)",
    )
    add("--output-dir", default=str(HERE / "results"), help="default: benchmarks/results")
    add("--verbose", action="store_true", help="show the workers' stderr")
    args = parser.parse_args(argv)

    ids = [i for item in args.frameworks for i in item.split(",") if i]
    unknown = sorted(set(ids) - set(FRAMEWORKS))
    if unknown:
        parser.error(f"unknown --frameworks {unknown}; choose from {list(FRAMEWORKS)}")
    args.frameworks = [i for i in FRAMEWORKS if i in ids]
    if args.resolution <= 0 or args.resolution % 32:
        parser.error(f"--resolution must be a positive multiple of 32, got {args.resolution}")
    for name in ("repeats", "warmup", "iters", "latency_iters", "threads", "interop_threads"):
        if getattr(args, name) < (0 if name == "latency_iters" else 1):
            parser.error(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    for name in ("max_steal", "steal_retries"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
    if args.time_budget is not None and args.time_budget <= 0:
        parser.error(f"--time-budget must be positive, got {args.time_budget}")
    return args


# ----------------------------------------------------------------------------- running workers


def _worker_env(args) -> dict:
    env = dict(os.environ)
    threads = str(args.threads)
    env.update(
        OMP_NUM_THREADS=threads,
        MKL_NUM_THREADS=threads,
        OPENBLAS_NUM_THREADS=threads,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        XLA_PYTHON_CLIENT_PREALLOCATE="false",
    )
    if args.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", JAX_PLATFORMS="cpu")
    return env


def cpu_set(threads: int) -> set[int]:
    available = sorted(os.sched_getaffinity(0))
    return set(available[:threads])


def worker_command(task: str, args, framework: str | None = None) -> list[str]:
    command = [sys.executable, str(WORKER), "--task", task]
    if task != "probe":
        options = {
            "variant": args.variant,
            "resolution": args.resolution,
            "batch-size": args.batch_size,
            "dtype": args.dtype,
            "device": args.device,
            "threads": args.threads,
            "interop-threads": args.interop_threads,
            "warmup": args.warmup,
            "iters": args.iters,
            "latency-iters": args.latency_iters,
            "compile-mode": args.compile_mode,
        }
        for name, value in options.items():
            command += [f"--{name}", str(value)]
    if framework is not None:
        command += ["--framework", framework]
    return command


def run_worker(task: str, args, framework: str | None = None, timeout: float | None = None):
    """Runs `_worker.py` in a fresh process; returns its JSON (or an error record).

    On a timeout the worker's whole process group is killed (torch.compile's
    compile workers included).
    """
    timeout = args.timeout if timeout is None else timeout
    cpus = cpu_set(args.threads)
    start = time.perf_counter()
    proc = subprocess.Popen(
        worker_command(task, args, framework),
        cwd=REPO,
        env=_worker_env(args),
        stdout=subprocess.PIPE,
        stderr=None if args.verbose else subprocess.PIPE,
        text=True,
        start_new_session=True,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {
            "framework": framework,
            "status": "error",
            "reason": f"timed out after {timeout:.0f} s",
        }
    finally:  # also when this driver is interrupted or terminated (see main)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result["process_s"] = time.perf_counter() - start
            return result
    return {
        "framework": framework,
        "status": "error",
        "reason": f"worker exited with code {proc.returncode} and no result",
        "stderr_tail": (stderr or stdout or "")[-1500:],
    }


# ----------------------------------------------------------------------------- environment


def environment_info(args) -> dict:
    """Host, packages and commit; with `--device auto|cuda`, the GPU (which may
    set `args.device`), then the defaults of `args.dtype` and `args.batch_size`."""
    environment = {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "worker_cpus": sorted(cpu_set(args.threads)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": versions(),
        "git": git_state(),
    }
    if args.threads > environment["affinity_cpus"]:
        print(
            f"warning: --threads {args.threads} > {environment['affinity_cpus']} available cores",
            file=sys.stderr,
        )
    gpu = {}
    if args.device != "cpu":
        gpu = run_worker("probe", args, timeout=min(args.timeout, 120.0))
        if args.device == "cuda" and not gpu.get("cuda"):
            raise SystemExit(f"--device cuda, but torch sees no GPU: {gpu}")
        args.device = "cuda" if gpu.get("cuda") else "cpu"
        if gpu.get("cuda"):
            environment["gpu"] = {k: v for k, v in gpu.items() if k not in ("python", "wall_s")}
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.device == "cuda":
        # The table holds bfloat16 peaks; for float32 only --peak-tflops gives one.
        known = gpu_peak_tflops(gpu["name"]) if args.dtype == "bfloat16" else None
        environment["gpu_peak_tflops"] = args.peak_tflops or known
        if not environment["gpu_peak_tflops"]:
            print(
                "note: no peak TFLOP/s for this GPU and dtype; see --peak-tflops", file=sys.stderr
            )
    if args.batch_size is None:
        args.batch_size = 128 if args.device == "cuda" else 8
    environment["device_name"] = (
        environment.get("gpu", {}).get("name")
        or f"{environment['cpu_model']}, {args.threads} threads"
    )
    environment["threads"] = args.threads
    environment["interop_threads"] = args.interop_threads
    return environment


# ----------------------------------------------------------------------------- main


def max_steal(result: dict):
    """The larger CPU steal % of a run's timed inference and training batches (None: unknown)."""
    metrics = result.get("metrics", {})
    values = [metrics.get(f"{phase}_steal_pct") for phase in ("infer", "train")]
    values = [value for value in values if value is not None]
    return max(values) if values else None


def _print_run(prefix: str, result: dict) -> None:
    m = result["metrics"]
    steal = max_steal(result)
    print(
        f"{prefix}: infer {fmt(m.get('infer_img_s'))} img/s, "
        f"latency {fmt(m.get('latency_ms'), 2)} ms, "
        f"train {fmt(m.get('train_img_s'))} img/s, "
        f"peak {fmt(m.get('peak_mem_mib'), 0)} MiB, "
        f"first predict / train step {fmt(m.get('first_predict_s'))} / "
        f"{fmt(m.get('first_train_step_s'))} s"
        + (
            f", jit_compile={result['jit_compile']}"
            if result.get("jit_compile") is not None
            else ""
        )
        + (f", CPU steal {steal:.0f}%" if steal is not None else "")
        + f" ({result.get('process_s', 0):.0f} s)"
        + (f" errors: {result['errors']}" if result.get("errors") else ""),
        flush=True,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    # As Ctrl-C: a `timeout` around this script also ends the running worker.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
    environment = environment_info(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k not in ("verbose",)},
        "environment": environment,
        "frameworks": {
            fid: {
                "label": FRAMEWORKS[fid][0],
                "family": FRAMEWORKS[fid][1],
                "keras_maxvit": FRAMEWORKS[fid][1].startswith("keras_maxvit"),
                "status": "pending",
                "runs": [],
            }
            for fid in args.frameworks
        },
        "order": [],
    }

    def time_left() -> float:
        return args.timeout if deadline is None else min(args.timeout, deadline - time.monotonic())

    if not args.no_flops:
        print("counting FLOPs on timm's model ...", flush=True)
        results["flops"] = run_worker("flops", args, timeout=max(time_left(), 1.0))
        if "forward_flops" in results["flops"]:
            print(
                f"  forward {results['flops']['forward_flops'] / 1e9:.2f} GFLOPs/img, "
                f"train {results['flops']['train_flops'] / 1e9:.2f} GFLOPs/img",
                flush=True,
            )

    active = list(args.frameworks)
    for rep in range(args.repeats):
        # Rotate the starting framework so that none always runs first.
        shift = rep % max(len(active), 1)
        for fid in active[shift:] + active[:shift]:
            entry = results["frameworks"][fid]
            if entry["status"] in ("skipped", "error"):
                continue
            if time_left() <= 0:
                break
            prefix = f"[{rep + 1}/{args.repeats}] {entry['label']}"
            for retry in range(args.steal_retries + 1):
                timeout = time_left()
                result = run_worker("bench", args, fid, timeout=timeout)
                result["repeat"] = rep
                entry["runs"].append(result)
                results["order"].append(fid)
                steal = max_steal(result)
                clean = steal is None or steal <= args.max_steal
                last = retry == args.steal_retries or time_left() <= 0
                if clean or last or result.get("status") != "ok":
                    break
                result["status"] = "stolen"  # kept in the runs, left out of the medians
                print(f"{prefix}: {steal:.0f}% CPU steal, measured again", flush=True)
            status = result.get("status", "error")
            if status == "error" and timeout < args.timeout and time_left() <= 0:
                # Stopped by the budget, not by its own timeout: earlier rounds stand.
                result["status"] = "stopped"
                if entry["status"] == "pending":
                    entry.update(status="skipped", reason="stopped at the time budget")
                print(f"{prefix}: stopped at the time budget", flush=True)
                break
            if status != "ok":
                # Skips and crashes are deterministic here: do not retry.
                entry["status"] = status
                entry["reason"] = result.get("reason")
                print(f"{prefix}: {status}: {entry['reason']}", flush=True)
                continue
            entry["status"] = "ok"
            entry["info"] = result.get("info", {})
            _print_run(prefix, result)
        # Write after every round, so a long run that is stopped keeps its data.
        for entry in results["frameworks"].values():
            entry["summary"] = summarize(entry["runs"])
        add_derived(results)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        if time_left() <= 0:
            print(f"time budget of {args.time_budget:.0f} s spent after round {rep + 1}")
            break
    for entry in results["frameworks"].values():
        if entry["status"] == "pending":
            entry.update(status="skipped", reason="the time budget was spent before it ran")
    (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    text = write_markdown(results, output_dir / "results.md")
    write_chart(results, output_dir / "results.png")
    print()
    print(text)
    print(f"wrote {output_dir / 'results.json'}, results.md and results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

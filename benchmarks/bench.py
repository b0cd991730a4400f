"""Benchmarks keras_maxvit against timm, torchvision and kecam (one process per run).

For one variant, resolution, batch size and dtype, every framework
configuration is measured in its own fresh process (`_worker.py`): inference
throughput, single-image latency, training-step throughput (forward, backward,
AdamW) and peak memory. The configurations are alternated round-robin (the
starting one rotates) for `--repeats` rounds and the medians are reported, in
`results.json`, `results.md` and `results.png` under `--output-dir`.

    python benchmarks/bench.py --variant tiny --resolution 224 --batch-size 16
    nox -s bench -- --device cuda --batch-size 256

This script imports no framework itself. With `--device cuda` (or `auto` and a
visible GPU) the default dtype is bfloat16 and the table adds the achieved
TFLOP/s and its fraction of the card's dense bf16 peak.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORKER = HERE / "_worker.py"
RESULT_PREFIX = "BENCH_RESULT:"  # as in _worker.py
VARIANTS = ("tiny", "small", "base", "large", "xlarge")

# id: (label, whether it is keras_maxvit itself), in the order of the table.
# The ids are those of `_worker.py`, which sets each one's backend variables.
FRAMEWORKS = {
    "keras-jax": ("keras_maxvit-jax (XLA)", True),
    "keras-tf": ("keras_maxvit-tensorflow (XLA)", True),
    "keras-torch": ("keras_maxvit-torch (eager)", True),
    "keras-torch-compile": ("keras_maxvit-torch (compile)", True),
    "timm": ("timm (eager)", False),
    "timm-compile": ("timm (compile)", False),
    "torchvision": ("torchvision maxvit_t (eager)", False),
    "kecam": ("kecam (TensorFlow)", False),
}

# Dense (no sparsity) bfloat16 tensor-core peak TFLOP/s from the vendor data
# sheets, matched in this order against torch.cuda.get_device_name().
GPU_PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H200", 989.0),  # also GH200
    ("H800", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("A800", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
    ("A10", 125.0),
    ("RTX 4090", 165.2),
    ("RTX 6000 Ada", 364.2),
    ("RTX A6000", 154.8),
)

PACKAGES = (
    "keras-maxvit",
    "keras",
    "jax",
    "jaxlib",
    "tensorflow",
    "tf-keras",
    "torch",
    "torchvision",
    "timm",
    "keras-cv-attention-models",
    "numpy",
)

METRICS = (
    "infer_img_s",
    "latency_ms",
    "train_img_s",
    "peak_mem_mib",
    "infer_peak_rss_mib",
    "peak_rss_mib",
    "infer_peak_device_mib",
    "train_peak_device_mib",
    # Seconds of the first call of each phase, compilation included.
    "first_infer_s",
    "first_latency_s",
    "first_train_s",
)


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
    add("--latency-iters", type=int, default=10, help="timed batch-1 calls (default: %(default)s)")
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
    add("--compile-mode", default="default", help="torch.compile mode (default: %(default)s)")
    add("--peak-tflops", type=float, default=None, help="GPU peak (default: from its name)")
    add("--no-flops", action="store_true", help="do not count FLOPs")
    add("--timeout", type=float, default=3600.0, help="seconds per worker (default: %(default)s)")
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
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f"--batch-size must be positive, got {args.batch_size}")
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


def _cpu_set(threads: int) -> set[int]:
    available = sorted(os.sched_getaffinity(0))
    return set(available[:threads])


def run_worker(task: str, args, framework: str | None = None) -> dict:
    """Runs `_worker.py` in a fresh process; returns its JSON (or an error record)."""
    command = [sys.executable, str(WORKER), "--task", task]
    if task != "probe":
        command += [
            "--variant",
            args.variant,
            "--resolution",
            str(args.resolution),
            "--batch-size",
            str(args.batch_size),
            "--dtype",
            args.dtype,
            "--device",
            args.device,
            "--threads",
            str(args.threads),
            "--interop-threads",
            str(args.interop_threads),
            "--warmup",
            str(args.warmup),
            "--iters",
            str(args.iters),
            "--latency-iters",
            str(args.latency_iters),
            "--compile-mode",
            args.compile_mode,
        ]
    if framework is not None:
        command += ["--framework", framework]
    cpus = _cpu_set(args.threads)
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            command,
            cwd=REPO,
            env=_worker_env(args),
            stdout=subprocess.PIPE,
            stderr=None if args.verbose else subprocess.PIPE,
            text=True,
            timeout=args.timeout,
            preexec_fn=lambda: os.sched_setaffinity(0, cpus),
        )
    except subprocess.TimeoutExpired:
        return {
            "framework": framework,
            "status": "error",
            "reason": f"timed out after {args.timeout:.0f} s",
        }
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX) :])
            result["process_s"] = time.perf_counter() - start
            return result
    tail = (proc.stderr or proc.stdout or "")[-1500:]
    return {
        "framework": framework,
        "status": "error",
        "reason": f"worker exited with code {proc.returncode} and no result",
        "stderr_tail": tail,
    }


# ----------------------------------------------------------------------------- environment


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git() -> dict:
    def git(*args):
        out = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        return out.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {}


def _versions() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def gpu_peak_tflops(name: str) -> float | None:
    for key, peak in GPU_PEAK_BF16_TFLOPS:
        if key.lower() in name.lower():
            return peak
    return None


# ----------------------------------------------------------------------------- summary


def summarize(runs: list[dict]) -> dict:
    """Median, min, max and samples of every metric over the successful runs."""
    summary = {}
    for metric in METRICS:
        values = [
            r["metrics"][metric] for r in runs if r.get("metrics", {}).get(metric) is not None
        ]
        if values:
            summary[metric] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "n": len(values),
                "samples": values,
            }
    return summary


def _median(entry: dict, metric: str):
    return entry.get("summary", {}).get(metric, {}).get("median")


def add_derived(results: dict) -> None:
    """Speed-up against the fastest peer, and TFLOP/s (of the GPU's peak)."""
    frameworks = results["frameworks"]
    for metric in ("infer_img_s", "train_img_s"):
        peers = [_median(e, metric) for e in frameworks.values() if not e["keras_maxvit"]]
        peers = [v for v in peers if v]
        best = max(peers) if peers else None
        results[f"best_peer_{metric}"] = best
        for entry in frameworks.values():
            value = _median(entry, metric)
            if best and value:
                entry.setdefault("derived", {})[f"{metric}_vs_best_peer"] = value / best
    flops = results.get("flops") or {}
    peak = results["environment"].get("gpu_peak_tflops")
    for entry in frameworks.values():
        derived = entry.setdefault("derived", {})
        for metric, key, kind in (
            ("infer_img_s", "forward_flops", "infer"),
            ("train_img_s", "train_flops", "train"),
        ):
            value = _median(entry, metric)
            if value and flops.get(key):
                tflops = flops[key] * value / 1e12
                derived[f"{kind}_tflops"] = tflops
                if peak:
                    derived[f"{kind}_fraction_of_peak"] = tflops / peak


def _fmt(value, digits=1, suffix=""):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{suffix}"


def write_markdown(results: dict, path: Path) -> str:
    env, args = results["environment"], results["args"]
    gpu = env.get("gpu") or {}
    on_gpu = args["device"] == "cuda"
    device = f"{gpu.get('name')} (peak {_fmt(env.get('gpu_peak_tflops'), 0)} TFLOP/s)"
    if not on_gpu:
        device = f"{env['cpu_model']}, threads: {args['threads']}"
    lines = [
        f"# MaxViT-{args['variant'].title()} at {args['resolution']}x{args['resolution']}, "
        f"batch {args['batch_size']}, {args['dtype']}, {args['device']}",
        "",
        f"Device: {device}. Medians of {args['repeats']} alternated runs, each a fresh process: "
        f"{args['warmup']} warm-up then {args['iters']} timed batches (inference, training step: "
        f"forward, cross-entropy, backward, AdamW), {args['latency_iters']} timed batch-1 calls. "
        "Peak memory: "
        + ("the framework allocator's peak on the GPU." if on_gpu else "peak RSS of the process.")
        + " Speed-up: against the fastest peer (not keras_maxvit).",
        "",
    ]
    header = [
        "Framework",
        "Inference img/s",
        "Latency ms (batch 1)",
        "Train img/s",
        "Peak memory MiB",
        "Inference vs best peer",
        "Train vs best peer",
    ]
    if on_gpu:
        header += ["Inference TFLOP/s (% peak)", "Train TFLOP/s (% peak)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for entry in results["frameworks"].values():
        derived = entry.get("derived", {})
        if entry["status"] != "ok":
            notes.append(f"- **{entry['label']}**: {entry['status']}: {entry.get('reason')}")
            row = [entry["label"], *(["—"] * (len(header) - 1))]
            lines.append("| " + " | ".join(row) + " |")
            continue
        row = [
            entry["label"],
            _fmt(_median(entry, "infer_img_s")),
            _fmt(_median(entry, "latency_ms"), 2),
            _fmt(_median(entry, "train_img_s")),
            _fmt(_median(entry, "peak_mem_mib"), 0),
            _fmt(derived.get("infer_img_s_vs_best_peer"), 2, "×"),
            _fmt(derived.get("train_img_s_vs_best_peer"), 2, "×"),
        ]
        if on_gpu:
            for kind in ("infer", "train"):
                tflops = derived.get(f"{kind}_tflops")
                fraction = derived.get(f"{kind}_fraction_of_peak")
                cell = "—" if tflops is None else f"{tflops:.3g}"
                if fraction is not None:
                    cell += f" ({100 * fraction:.3g}%)"
                row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
        errors = {k: v for run in entry["runs"] for k, v in run.get("errors", {}).items()}
        for phase, message in errors.items():
            notes.append(f"- **{entry['label']}** {phase}: {message}")
        info = entry.get("info", {})
        if "graph_breaks" in info:
            notes.append(
                f"- **{entry['label']}**: torch.compile made {info.get('unique_graphs')} graphs "
                f"with {info['graph_breaks']} graph breaks."
            )
        if isinstance(info.get("compiler"), dict):
            modes = sorted(set(info["compiler"].values()))
            notes.append(f"- **{entry['label']}**: compiled with {', '.join(modes)}.")
    first_calls = [
        f"{e['label']} {_fmt(_median(e, 'first_infer_s'))} / {_fmt(_median(e, 'first_train_s'))}"
        for e in results["frameworks"].values()
        if e["status"] == "ok"
    ]
    if first_calls:
        notes.append(
            "- First call in s (compilation included), inference / training step: "
            + "; ".join(first_calls)
            + "."
        )
    models = {}
    for entry in results["frameworks"].values():
        info = entry.get("info", {}) if entry["status"] == "ok" else {}
        if info.get("trainable_params"):
            models.setdefault(f"{info.get('model')}: {info['trainable_params'] / 1e6:.2f} M", None)
    if models:
        notes.append(f"- Models and trainable parameters: {'; '.join(models)}.")
    flops = results.get("flops") or {}
    if flops.get("forward_flops"):
        notes.append(
            f"- FLOPs per image ({flops['model']}, matmul and conv, counted by torch's "
            f"FlopCounterMode): forward {flops['forward_flops'] / 1e9:.2f} G; a training "
            f"step is counted as 3x that, {flops['train_flops'] / 1e9:.2f} G."
        )
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    notes.append(f"- Versions: {versions}.")
    if env.get("git"):
        dirty = " (with uncommitted changes)" if env["git"].get("dirty") else ""
        notes.append(f"- keras_maxvit commit {env['git']['commit'][:10]}{dirty}.")
    lines += ["", "Notes:", "", *notes, ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def write_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches
    import matplotlib.pyplot as plt

    entries = [e for e in results["frameworks"].values() if e["status"] == "ok"]
    if not entries:
        return
    args = results["args"]
    fig, axes = plt.subplots(1, 2, figsize=(13, 0.55 * len(entries) + 1.6), sharey=True)
    labels = [e["label"] for e in entries]
    colors = ["tab:blue" if e["keras_maxvit"] else "tab:gray" for e in entries]
    for ax, metric, title in (
        (axes[0], "infer_img_s", f"Inference (batch {args['batch_size']})"),
        (axes[1], "train_img_s", "Training step (forward + backward + AdamW)"),
    ):
        stats = [e.get("summary", {}).get(metric, {}) for e in entries]
        values = [st.get("median", 0.0) for st in stats]
        errors = [
            [st.get("median", 0.0) - st.get("min", 0.0) for st in stats],
            [st.get("max", 0.0) - st.get("median", 0.0) for st in stats],
        ]
        bars = ax.barh(labels, values, xerr=errors, color=colors, capsize=3)
        ax.bar_label(bars, labels=[f"{v:,.1f}" if v else "n/a" for v in values], padding=4)
        ax.set_title(title)
        ax.set_xlabel("images / s (median; whiskers: min–max)")
        ax.margins(x=0.2)
    axes[0].invert_yaxis()  # shared y axis: the table's order, top to bottom
    handles = [
        matplotlib.patches.Patch(color="tab:blue", label="keras_maxvit"),
        matplotlib.patches.Patch(color="tab:gray", label="peers"),
    ]
    axes[1].legend(handles=handles, loc="lower right")
    fig.suptitle(
        f"MaxViT-{args['variant'].title()} {args['resolution']}px, {args['dtype']}, "
        f"{results['environment']['device_name']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    args = parse_args(argv)
    environment = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "worker_cpus": sorted(_cpu_set(args.threads)),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": _versions(),
        "git": _git(),
    }
    if args.threads > environment["affinity_cpus"]:
        print(
            f"warning: --threads {args.threads} > {environment['affinity_cpus']} available cores",
            file=sys.stderr,
        )

    if args.device != "cpu":
        gpu = run_worker("probe", args)
        if args.device == "cuda" and not gpu.get("cuda"):
            print(f"--device cuda, but torch sees no GPU: {gpu}", file=sys.stderr)
            return 2
        args.device = "cuda" if gpu.get("cuda") else "cpu"
        if gpu.get("cuda"):
            environment["gpu"] = {k: v for k, v in gpu.items() if k not in ("python", "wall_s")}
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    if args.device == "cuda":
        # The table holds bfloat16 peaks; for float32 only --peak-tflops gives one.
        known = gpu_peak_tflops(gpu["name"]) if args.dtype == "bfloat16" else None
        environment["gpu_peak_tflops"] = args.peak_tflops or known
    if args.batch_size is None:
        args.batch_size = 128 if args.device == "cuda" else 8
    environment["device_name"] = (
        environment.get("gpu", {}).get("name")
        or f"{environment['cpu_model']}, {args.threads} threads"
    )
    environment["threads"] = args.threads
    environment["interop_threads"] = args.interop_threads
    if args.device == "cuda" and not environment.get("gpu_peak_tflops"):
        print("note: no peak TFLOP/s for this GPU and dtype; see --peak-tflops", file=sys.stderr)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k not in ("verbose",)},
        "environment": environment,
        "frameworks": {
            fid: {
                "label": FRAMEWORKS[fid][0],
                "keras_maxvit": FRAMEWORKS[fid][1],
                "status": "pending",
                "runs": [],
            }
            for fid in args.frameworks
        },
        "order": [],
    }

    if not args.no_flops:
        print("counting FLOPs on timm's model ...", flush=True)
        results["flops"] = run_worker("flops", args)
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
            result = run_worker("bench", args, fid)
            result["repeat"] = rep
            entry["runs"].append(result)
            results["order"].append(fid)
            status = result.get("status", "error")
            if status != "ok":
                # Skips and crashes are deterministic here: do not retry.
                entry["status"] = status
                entry["reason"] = result.get("reason")
                print(f"[{rep + 1}/{args.repeats}] {entry['label']}: {status}: {entry['reason']}")
                continue
            entry["status"] = "ok"
            entry["info"] = result.get("info", {})
            m = result["metrics"]
            print(
                f"[{rep + 1}/{args.repeats}] {entry['label']}: "
                f"infer {_fmt(m.get('infer_img_s'))} img/s, "
                f"latency {_fmt(m.get('latency_ms'), 2)} ms, "
                f"train {_fmt(m.get('train_img_s'))} img/s, "
                f"peak {_fmt(m.get('peak_mem_mib'), 0)} MiB "
                f"({result.get('process_s', 0):.0f} s)"
                + (f" errors: {result['errors']}" if result.get("errors") else ""),
                flush=True,
            )
        # Write after every round, so a long run that is stopped keeps its data.
        for entry in results["frameworks"].values():
            entry["summary"] = summarize([r for r in entry["runs"] if r.get("status") == "ok"])
        add_derived(results)
        (output_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    text = write_markdown(results, output_dir / "results.md")
    write_chart(results, output_dir / "results.png")
    print()
    print(text)
    print(f"wrote {output_dir / 'results.json'}, results.md and results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""First-call (compile) time of keras_maxvit's training step, as users meet it.

For each model and resolution and each backend, a fresh process
(`_worker.py --task compile-time`) builds the model, compiles it with
`compile()` defaults and times its first `train_on_batch` (tracing and XLA
compilation included) and its second (the step alone); the difference is what
compilation costs. The table goes to `compile-time.md` and `compile-time.json`
under `--output-dir`.

    python benchmarks/compile_time.py
    python benchmarks/compile_time.py --models tiny:224 --frameworks keras-jax
"""

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import bench
from _report import fmt

DEFAULT_MODELS = ("tiny:224", "tiny:384", "base:384")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add(
        "--models",
        nargs="+",
        default=list(DEFAULT_MODELS),
        metavar="VARIANT:RESOLUTION",
        help=f"default: {' '.join(DEFAULT_MODELS)}",
    )
    add(
        "--frameworks",
        nargs="+",
        default=["keras-jax", "keras-tf"],
        choices=[f for f in bench.FRAMEWORKS if f.startswith("keras-")],
        metavar="ID",
        help="keras_maxvit ids of bench.py (default: %(default)s)",
    )
    add("--batch-size", type=int, default=2, help="default: %(default)s")
    add("--dtype", default="float32", choices=("float32", "bfloat16"), help="default: %(default)s")
    add("--device", default="cpu", choices=("cpu", "cuda"), help="default: %(default)s")
    add("--threads", type=int, default=len(os.sched_getaffinity(0)), help="default: all cores")
    add("--interop-threads", type=int, default=1, help="default: %(default)s")
    add("--timeout", type=float, default=1800.0, help="seconds per run (default: %(default)s)")
    add("--output-dir", default=str(bench.HERE / "results"), help="default: benchmarks/results")
    add("--verbose", action="store_true", help="show the workers' stderr")
    args = parser.parse_args(argv)
    args.models = [m for item in args.models for m in item.split(",") if m]
    for model in args.models:
        variant, _, resolution = model.partition(":")
        if variant not in bench.VARIANTS or not resolution.isdigit() or int(resolution) % 32:
            parser.error(f"--models takes VARIANT:RESOLUTION (a multiple of 32), got {model!r}")
    # What `bench.worker_command` passes on; the timing options are unused here.
    args.warmup = args.iters = args.latency_iters = 1
    args.compile_mode = "default"
    args.peak_tflops = None
    return args


def write_markdown(results: dict, path: Path) -> str:
    env, args = results["environment"], results["args"]
    lines = [
        f"# First training step of keras_maxvit, batch {args['batch_size']}, {args['dtype']}, "
        f"{args['device']}",
        "",
        f"Device: {env['device_name']}. Each row a fresh process: build, "
        '`compile(optimizer="adamw", loss="sparse_categorical_crossentropy")` (defaults), '
        "then the first `train_on_batch` (tracing and compilation included) and the second. "
        "Compilation ≈ first − second.",
        "",
        "| Model | Framework | jit_compile | Imports and build s | First train step s "
        "| Second train step s | Compilation s | Peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in results["runs"]:
        m = row.get("metrics", {})
        label = bench.FRAMEWORKS[row["framework"]][0]
        if row.get("status") != "ok":
            reason = row.get("reason") or row.get("status")
            lines.append(f"| {row['model']} | {label} | {row.get('status')}: {reason} |||||")
            continue
        first, second = m.get("first_train_step_s"), m.get("second_train_step_s")
        lines.append(
            f"| {row['model']} | {label} | {row.get('jit_compile')} | {fmt(m.get('build_s'))} "
            f"({fmt(row.get('info', {}).get('import_s'))} imports) | "
            f"{fmt(first)} | {fmt(second, 2)} | "
            f"{fmt(first - second if first and second else None)} | "
            f"{fmt(m.get('peak_rss_mib'), 0)} |"
        )
    versions = ", ".join(f"{k} {v}" for k, v in env["packages"].items() if v)
    lines += ["", f"Versions: {versions}.", ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main(argv=None) -> int:
    args = parse_args(argv)
    environment = bench.environment_info(args)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    results = {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k != "verbose"},
        "environment": environment,
        "runs": [],
    }
    for model in args.models:
        variant, _, resolution = model.partition(":")
        args.variant, args.resolution = variant, int(resolution)
        name = f"MaxViT-{variant.title()} {resolution}"
        for fid in args.frameworks:
            result = bench.run_worker("compile-time", args, fid)
            result["model"] = name
            results["runs"].append(result)
            m = result.get("metrics", {})
            print(
                f"{name} {fid}: {result.get('status')}: train step "
                f"first {fmt(m.get('first_train_step_s'))} s, "
                f"second {fmt(m.get('second_train_step_s'), 2)} s, "
                f"jit_compile={result.get('jit_compile')}"
                + (f" ({result['reason']})" if result.get("reason") else ""),
                flush=True,
            )
            (output_dir / "compile-time.json").write_text(json.dumps(results, indent=2) + "\n")
    print()
    print(write_markdown(results, output_dir / "compile-time.md"))
    print(f"wrote {output_dir / 'compile-time.json'} and compile-time.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())

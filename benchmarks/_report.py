"""Summaries, ratios against the peers and targets, and the Markdown and PNG reports.

Works on the results dictionary of `bench.py` alone (as saved in
`results.json`): every entry carries its label and family.
"""

import statistics
from pathlib import Path

OURS = "keras_maxvit"  # the family of the default-kernel keras_maxvit configurations
PEER_FAMILIES = ("kecam", "timm", "torchvision")
SPEEDS = (("infer_img_s", "Inference"), ("train_img_s", "Training"))

METRICS = (
    "infer_img_s",
    "latency_ms",
    "train_img_s",
    "peak_mem_mib",
    "infer_peak_rss_mib",
    "peak_rss_mib",
    "infer_peak_device_mib",
    "train_peak_device_mib",
    # Seconds of the first call of each phase, tracing and compilation included.
    "first_predict_s",
    "first_latency_s",
    "first_train_step_s",
    # CPU steal % during the timed batches (the host running other guests).
    "infer_steal_pct",
    "train_steal_pct",
)

# (name, ours, baseline, target ratio). A selector is a framework id,
# "family:NAME" (its fastest configuration) or "peers" (the fastest peer).
TARGETS = (
    ("fastest keras_maxvit backend vs best peer", f"family:{OURS}", "peers", 1.5),
    ("keras_maxvit-tensorflow vs kecam's best", "keras-tf", "family:kecam", 1.3),
    ("keras_maxvit-torch vs timm eager", "keras-torch", "timm", 1.2),
)


def summarize(runs: list[dict]) -> dict:
    """Median, min, max and samples of every metric over the successful runs
    (status "ok": not the stolen, stopped or failed ones)."""
    runs = [r for r in runs if r.get("status") == "ok"]
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


def median(entry: dict, metric: str):
    return entry.get("summary", {}).get(metric, {}).get("median")


def _fastest(frameworks: dict, metric: str, fids) -> tuple:
    """(id, value) of the fastest of `fids` with a result, or (None, None)."""
    values = [(median(frameworks[f], metric), f) for f in fids if f in frameworks]
    values = [(v, f) for v, f in values if v]
    if not values:
        return None, None
    value, fid = max(values)
    return fid, value


def _select(frameworks: dict, metric: str, selector: str) -> tuple:
    if selector == "peers":
        fids = [f for f, e in frameworks.items() if e["family"] in PEER_FAMILIES]
    elif selector.startswith("family:"):
        fids = [f for f, e in frameworks.items() if e["family"] == selector[len("family:") :]]
    else:
        fids = [selector]
    return _fastest(frameworks, metric, fids)


def add_derived(results: dict) -> None:
    """Best configuration per family and overall, ratios, targets and TFLOP/s."""
    frameworks = results["frameworks"]
    best = results["best"] = {}
    for metric, _ in SPEEDS:
        families = sorted({e["family"] for e in frameworks.values()})
        peer_fid, peer_value = _select(frameworks, metric, "peers")
        best[metric] = {
            "peer": peer_fid,
            "families": {fam: _select(frameworks, metric, f"family:{fam}")[0] for fam in families},
        }
        results[f"best_peer_{metric}"] = peer_value
        for fid, entry in frameworks.items():
            derived = entry.setdefault("derived", {})
            value = median(entry, metric)
            if peer_value and value:
                derived[f"{metric}_vs_best_peer"] = value / peer_value
            reference = median(frameworks.get(f"{fid}-reference", {}), metric)
            if reference and value:
                derived[f"{metric}_vs_reference_kernels"] = value / reference
    results["targets"] = []
    for name, ours, baseline, target in TARGETS:
        row = {"name": name, "target": target}
        for metric, _ in SPEEDS:
            ours_fid, ours_value = _select(frameworks, metric, ours)
            base_fid, base_value = _select(frameworks, metric, baseline)
            if ours_value and base_value:
                row[metric] = {
                    "ours": ours_fid,
                    "ours_value": ours_value,
                    "baseline": base_fid,
                    "baseline_value": base_value,
                    "ratio": ours_value / base_value,
                    "met": ours_value / base_value >= target,
                }
        results["targets"].append(row)
    flops = results.get("flops") or {}
    peak = results["environment"].get("gpu_peak_tflops")
    for entry in frameworks.values():
        derived = entry.setdefault("derived", {})
        for metric, key, kind in (
            ("infer_img_s", "forward_flops", "infer"),
            ("train_img_s", "train_flops", "train"),
        ):
            value = median(entry, metric)
            if value and flops.get(key):
                tflops = flops[key] * value / 1e12
                derived[f"{kind}_tflops"] = tflops
                if peak:
                    derived[f"{kind}_fraction_of_peak"] = tflops / peak


def fmt(value, digits=1, suffix=""):
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{suffix}"


def _row_label(entry: dict) -> str:
    jit = entry.get("info", {}).get("jit_compile")
    if entry["family"].startswith(OURS) and jit is not None:
        return f"{entry['label']} → jit_compile={jit}"
    return entry["label"]


def _speed_cell(results: dict, fid: str, metric: str) -> str:
    """The median; bold for the fastest of its peer family, and the best peer named."""
    entry = results["frameworks"][fid]
    cell = fmt(median(entry, metric))
    best = results.get("best", {}).get(metric, {})
    if entry["family"] in PEER_FAMILIES and best.get("families", {}).get(entry["family"]) == fid:
        cell = f"**{cell}**"
        if best.get("peer") == fid:
            cell += " (best peer)"
    return cell


def _target_lines(results: dict) -> list[str]:
    lines = ["| Comparison | Inference | Training | Target |", "|---|---|---|---|"]
    for row in results.get("targets", []):
        cells = [row["name"]]
        for metric, _ in SPEEDS:
            r = row.get(metric)
            if r is None:
                cells.append("—")
                continue
            mark = "met" if r["met"] else "not met"
            cells.append(f"{r['ratio']:.2f}× (`{r['ours']}` / `{r['baseline']}`), {mark}")
        cells.append(f"≥ {row['target']:.1f}×")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _notes(results: dict) -> list[str]:
    env = results["environment"]
    notes = []
    for entry in results["frameworks"].values():
        label, info = entry["label"], entry.get("info", {})
        if entry["status"] != "ok":
            notes.append(f"- **{label}**: {entry['status']}: {entry.get('reason')}")
            continue
        errors = {k: v for run in entry["runs"] for k, v in run.get("errors", {}).items()}
        for phase, message in errors.items():
            notes.append(f"- **{label}** {phase}: {message}")
        if entry["family"].startswith(OURS):
            read = info.get("kernels_env_read_by_library")
            notes.append(
                f"- **{label}**: {info.get('compiler')}, kernels `{info.get('kernels')}`"
                + ("" if read or read is None else " (this keras_maxvit ignores the variable)")
                + f", dtype policy {info.get('dtype_policy')}."
            )
        elif info.get("compiler"):
            notes.append(f"- **{label}**: {info['compiler']}.")
        if "graph_breaks" in info:
            notes.append(
                f"- **{label}**: torch.compile made {info.get('unique_graphs')} graphs "
                f"with {info['graph_breaks']} graph breaks."
            )
    kernels = []
    for entry in results["frameworks"].values():
        infer = entry.get("derived", {}).get("infer_img_s_vs_reference_kernels")
        train = entry.get("derived", {}).get("train_img_s_vs_reference_kernels")
        if infer or train:
            kernels.append(f"{entry['label']} {fmt(infer, 2, '×')} / {fmt(train, 2, '×')}")
    if kernels:
        notes.append(
            "- Default kernels against `KERAS_MAXVIT_KERNELS=reference`, inference / training: "
            + "; ".join(kernels)
            + "."
        )
    notes += _steal_notes(results)
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
    return notes


def _steal_notes(results: dict) -> list[str]:
    """CPU steal of the runs in the medians, and the runs measured again for it."""
    cells, again = [], 0
    for entry in results["frameworks"].values():
        again += sum(run.get("status") == "stolen" for run in entry["runs"])
        infer, train = (median(entry, f"{phase}_steal_pct") for phase in ("infer", "train"))
        if infer is not None or train is not None:
            cells.append(f"{entry['label']} {fmt(infer, 0, '%')} / {fmt(train, 0, '%')}")
    if not cells:
        return []
    limit = results["args"].get("max_steal")
    return [
        "- CPU steal (the host running other guests on the workers' cores) during the timed "
        "batches, median, inference / training: "
        + "; ".join(cells)
        + f". Runs over {fmt(limit, 0, '%')} measured again: {again}."
    ]


def write_markdown(results: dict, path: Path) -> str:
    env, args = results["environment"], results["args"]
    gpu = env.get("gpu") or {}
    on_gpu = args["device"] == "cuda"
    device = f"{gpu.get('name')} (peak {fmt(env.get('gpu_peak_tflops'), 0)} TFLOP/s)"
    if not on_gpu:
        device = f"{env['cpu_model']}, threads: {args['threads']}"
    lines = [
        f"# MaxViT-{args['variant'].title()} at {args['resolution']}x{args['resolution']}, "
        f"batch {args['batch_size']}, {args['dtype']}, {args['device']}",
        "",
        f"Device: {device}. Medians of {args['repeats']} alternated runs, each a fresh process: "
        f"{args['warmup']} warm-up then {args['iters']} timed batches (inference, training step: "
        "forward, cross-entropy, backward, AdamW)"
        + (f", {args['latency_iters']} timed batch-1 calls. " if args["latency_iters"] else ". ")
        + 'keras_maxvit as users run it: `compile(optimizer="adamw", '
        'loss="sparse_categorical_crossentropy")` with its defaults, `predict_on_batch`, '
        "`train_on_batch`; the peers at their best (hand-written steps, eager and compiled). "
        "Peak memory: "
        + ("the framework allocator's peak on the GPU." if on_gpu else "peak RSS of the process.")
        + (
            f" A run whose timed batches lost over {fmt(args.get('max_steal'), 0, '%')} of the "
            "CPUs to steal (the host running other guests) was measured again, up to "
            f"{args.get('steal_retries')} times."
            if args.get("max_steal") is not None and not on_gpu
            else ""
        )
        + " **Bold**: the fastest configuration of its peer family; the ratios are against the "
        "best peer, the fastest peer configuration. First calls: seconds, compilation included.",
        "",
    ]
    header = [
        "Id",
        "Framework",
        "Inference img/s",
        "Latency ms (batch 1)",
        "Train img/s",
        "Peak memory MiB",
        "Inference vs best peer",
        "Train vs best peer",
        "First predict s",
        "First train step s",
    ]
    if on_gpu:
        header += ["Inference TFLOP/s (MFU)", "Train TFLOP/s (MFU)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for fid, entry in results["frameworks"].items():
        derived = entry.get("derived", {})
        if entry["status"] != "ok":
            row = [f"`{fid}`", entry["label"], *(["—"] * (len(header) - 2))]
            lines.append("| " + " | ".join(row) + " |")
            continue
        row = [
            f"`{fid}`",
            _row_label(entry),
            _speed_cell(results, fid, "infer_img_s"),
            fmt(median(entry, "latency_ms"), 2),
            _speed_cell(results, fid, "train_img_s"),
            fmt(median(entry, "peak_mem_mib"), 0),
            fmt(derived.get("infer_img_s_vs_best_peer"), 2, "×"),
            fmt(derived.get("train_img_s_vs_best_peer"), 2, "×"),
            fmt(median(entry, "first_predict_s")),
            fmt(median(entry, "first_train_step_s")),
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
    lines += ["", "Targets (ratios of medians):", "", *_target_lines(results)]
    lines += ["", "Notes:", "", *_notes(results), ""]
    text = "\n".join(lines)
    path.write_text(text)
    return text


COLORS = {OURS: "tab:blue", f"{OURS}-reference": "lightsteelblue"}


def write_chart(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.lines
    import matplotlib.patches
    import matplotlib.pyplot as plt

    entries = [e for e in results["frameworks"].values() if e["status"] == "ok"]
    if not entries:
        return
    args = results["args"]
    fig, axes = plt.subplots(
        1, 2, figsize=(14, 0.55 * len(entries) + 2.0), sharey=True, layout="constrained"
    )
    labels = [e["label"] for e in entries]
    colors = [COLORS.get(e["family"], "tab:gray") for e in entries]
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
        best = results.get(f"best_peer_{metric}")
        if best:
            ax.axvline(best, color="tab:orange", linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel("images / s (median; whiskers: min–max)")
        ax.margins(x=0.2)
    axes[0].invert_yaxis()  # shared y axis: the table's order, top to bottom
    handles = [
        matplotlib.patches.Patch(color=COLORS[OURS], label="keras_maxvit (compile() defaults)"),
        matplotlib.patches.Patch(color=COLORS[f"{OURS}-reference"], label="reference kernels"),
        matplotlib.patches.Patch(color="tab:gray", label="peers"),
        matplotlib.lines.Line2D([], [], color="tab:orange", linestyle="--", label="best peer"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles))
    fig.suptitle(
        f"MaxViT-{args['variant'].title()} {args['resolution']}px, {args['dtype']}, "
        f"{results['environment']['device_name']}"
    )
    fig.savefig(path, dpi=120)
    plt.close(fig)

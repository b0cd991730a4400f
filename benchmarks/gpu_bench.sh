#!/usr/bin/env bash
# GPU benchmark of MaxViT-T 224 in bfloat16, finished in under 10 minutes.
#
# keras_maxvit on JAX, TensorFlow and PyTorch as users run it (mixed_bfloat16,
# compile() defaults, predict_on_batch / train_on_batch) against timm eager and
# timm under torch.compile (autocast bfloat16): images/s, the achieved TFLOP/s
# and their fraction of the card's dense bf16 peak (MFU), through bench.py.
#
# Time budget: bench.py gets --time-budget (default 510 s) for the FLOP count,
# the GPU probe and all workers; each worker has --timeout (default 170 s) cut
# to what is left, and none starts once the budget is spent (what did not run
# is reported as skipped). An outer `timeout` stops everything at budget + 60 s,
# so the script ends within 10 minutes. The batch-1 latency phase is skipped
# (its recompilation would cost each compiled configuration a minute).
#
# Needs the package and the GPU builds installed, e.g.
#   pip install -e '.[bench]' 'jax[cuda12]' 'tensorflow[and-cuda]'
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benchmarks/gpu_bench.sh [--batch-size N] [--budget S] [--per-run S]
                               [--frameworks "ID ..."] [--output-dir DIR]
                               [--python PYTHON] [--dry-run] [-h|--help]

GPU benchmark of MaxViT-T 224, bfloat16, in under 10 minutes (see the header).

  --batch-size N      64..256 (default 128)
  --budget S          seconds for bench.py as a whole, at most 540 (default 510)
  --per-run S         seconds per framework process (default 170)
  --frameworks "..."  bench.py ids (default: keras-jax keras-tf keras-torch timm timm-compile)
  --output-dir DIR    default: benchmarks/results-gpu
  --python PYTHON     default: $PYTHON or python
  --dry-run           print the bench.py command, run nothing
EOF
}

BATCH=128
BUDGET=510
PER_RUN=170
FRAMEWORKS="keras-jax keras-tf keras-torch timm timm-compile"
OUTPUT_DIR=benchmarks/results-gpu
PY="${PYTHON:-python}"
DRY_RUN=0

while [[ $# -gt 0 ]]; do
    case "$1" in
        --batch-size) BATCH="$2"; shift 2 ;;
        --budget) BUDGET="$2"; shift 2 ;;
        --per-run) PER_RUN="$2"; shift 2 ;;
        --frameworks) FRAMEWORKS="$2"; shift 2 ;;
        --output-dir) OUTPUT_DIR="$2"; shift 2 ;;
        --python) PY="$2"; shift 2 ;;
        --dry-run) DRY_RUN=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
done

is_int() { [[ "$1" =~ ^[0-9]+$ ]]; }
if ! is_int "$BATCH" || ((BATCH < 64 || BATCH > 256)); then
    echo "--batch-size must be in 64..256, got $BATCH" >&2
    exit 2
fi
if ! is_int "$BUDGET" || ((BUDGET < 60 || BUDGET > 540)); then
    echo "--budget must be in 60..540 seconds (the script must end within 10 minutes)" >&2
    exit 2
fi
if ! is_int "$PER_RUN" || ((PER_RUN < 30)); then
    echo "--per-run must be an integer >= 30 seconds, got $PER_RUN" >&2
    exit 2
fi

cd "$(dirname "${BASH_SOURCE[0]}")/.."
read -r -a FRAMEWORK_IDS <<<"$FRAMEWORKS"
COMMAND=(
    "$PY" benchmarks/bench.py
    --device cuda --dtype bfloat16 --variant tiny --resolution 224
    --batch-size "$BATCH" --repeats 1 --warmup 3 --iters 25 --latency-iters 0
    --timeout "$PER_RUN" --time-budget "$BUDGET"
    --frameworks "${FRAMEWORK_IDS[@]}"
    --output-dir "$OUTPUT_DIR"
)

if ((DRY_RUN)); then
    printf '%q ' timeout --kill-after=10 "$((BUDGET + 60))" "${COMMAND[@]}"
    echo
    exit 0
fi

if ! command -v nvidia-smi >/dev/null; then
    echo "no nvidia-smi: this script needs a CUDA machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "budget ${BUDGET} s, at most ${PER_RUN} s per framework; results in ${OUTPUT_DIR}"
start=$SECONDS
status=0
timeout --kill-after=10 "$((BUDGET + 60))" "${COMMAND[@]}" || status=$?
echo "gpu_bench.sh: $((SECONDS - start)) s, exit status ${status}"
exit "$status"

"""Memory of a training step with and without `remat=True`.

Each setting runs in its own process: build the model, run one
`train_on_batch` to allocate the optimizer state, then sample the process's
resident memory while a second step runs. The rise above the level before
the step is what the step's activations cost.

    KERAS_BACKEND=torch python benchmarks/remat_memory.py --model tiny --batch-size 8

On CPU the saving shows under PyTorch (eager) and TensorFlow; XLA's CPU
scheduler does not keep recomputation late, so JAX on CPU shows none (on GPU,
XLA honours it).
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time


def resident_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(model_name: str, resolution: int, batch_size: int, remat: bool) -> dict:
    import keras
    import numpy as np

    import keras_maxvit

    constructor = getattr(keras_maxvit, f"MaxViT{model_name.capitalize()}".replace("Xl", "XL"))
    model = constructor(weights=None, input_shape=(resolution, resolution, 3), remat=remat)
    model.compile(keras.optimizers.AdamW(1e-4), "sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (batch_size, resolution, resolution, 3)).astype("float32")
    labels = rng.integers(0, 1000, batch_size)
    model.train_on_batch(images, labels)
    baseline = resident_mib()
    peak = [baseline]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample)
    sampler.start()
    start = time.perf_counter()
    model.train_on_batch(images, labels)
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    return {
        "remat": remat,
        "step_peak_mib": round(peak[0] - baseline, 1),
        "step_s": round(seconds, 2),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="tiny", choices=("tiny", "small", "base", "large", "xlarge")
    )
    parser.add_argument("--resolution", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--worker", choices=("plain", "remat"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        row = measure(args.model, args.resolution, args.batch_size, args.worker == "remat")
        print(json.dumps(row))
        return
    rows = []
    for mode in ("plain", "remat"):
        command = [sys.executable, __file__, "--worker", mode, "--model", args.model]
        command += ["--resolution", str(args.resolution), "--batch-size", str(args.batch_size)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    summary = {"backend": backend, **vars(args), "results": rows}
    del summary["worker"]
    print(json.dumps(summary, indent=1))
    plain, remat = rows[0]["step_peak_mib"], rows[1]["step_peak_mib"]
    print(
        f"{backend}: memory of one training step {plain} MiB -> {remat} MiB with remat=True; "
        f"step time {rows[0]['step_s']} s -> {rows[1]['step_s']} s"
    )


if __name__ == "__main__":
    main()

"""What every worker module shares: constants, the `Runner` interface, inputs.

No framework is imported here (the workers import theirs after setting the
backend variables).
"""

import os
import resource

RESULT_PREFIX = "BENCH_RESULT:"  # the driver reads the worker's last line with it
VARIANTS = ("tiny", "small", "base", "large", "xlarge")
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.05
NUM_CLASSES = 1000
SEED = 0


class Skip(Exception):
    """This configuration does not apply (the reason goes to the results)."""


def rss_peak_mib() -> float:
    """The process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_cpu_ticks(stat_text: str, cpus=None):
    """`(steal, total)` clock ticks of the CPUs `cpus` (all when None) in the
    text of Linux's /proc/stat, or None when it lists none of them."""
    steal = total = 0
    found = False
    for line in stat_text.splitlines():
        name, *fields = line.split() or [""]
        if not name.startswith("cpu"):
            continue
        if cpus is None and name != "cpu":
            continue
        if cpus is not None and not (name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        # user nice system idle iowait irq softirq steal (guest time is in user)
        ticks = [int(field) for field in fields[:8]]
        steal += ticks[7] if len(ticks) > 7 else 0
        total += sum(ticks)
        found = True
    return (steal, total) if found else None


def cpu_ticks():
    """`(steal, total)` ticks of the CPUs this process may run on, or None off Linux."""
    try:
        with open("/proc/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    return parse_cpu_ticks(text, os.sched_getaffinity(0))


def steal_percent(before, after):
    """The hypervisor's share (%) of this process's CPUs between two `cpu_ticks()`:
    time they were runnable but the host ran something else."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def error_text(exc: BaseException, limit: int = 600) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def images(batch: int, resolution: int, channels_first: bool, raw: bool = False, seed: int = SEED):
    """Seeded NumPy `(images, labels)`.

    `raw`: RGB values in [0, 255] (for models with their own preprocessing),
    otherwise normalized, standard-normal values.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    shape = (
        (batch, 3, resolution, resolution) if channels_first else (batch, resolution, resolution, 3)
    )
    if raw:
        x = rng.uniform(0.0, 255.0, size=shape).astype(np.float32)
    else:
        x = rng.standard_normal(shape, dtype=np.float32)
    y = rng.integers(0, NUM_CLASSES, size=(batch,), dtype=np.int32)
    return x, y


class Runner:
    """What the timing loop needs from a framework configuration.

    `infer(x)` and `train_step(x, y)` may return without waiting for the
    device; `sync(out)` waits for `out`. `inputs(batch)` returns device-resident
    `(images, labels)` made once, so no host-to-device copy is timed.
    """

    def __init__(self, args):
        self.resolution = args.resolution
        self.info = {}

    def inputs(self, batch):
        raise NotImplementedError

    def infer(self, x):
        raise NotImplementedError

    def train_step(self, x, y):
        raise NotImplementedError

    def sync(self, out):
        pass

    def set_mode(self, training: bool):
        """Called before the inference and the training phase."""

    def reset_peak_memory(self):
        """Starts a new device-memory peak where the framework allows it (CUDA)."""

    def device_peak_mib(self):
        """Peak device memory in MiB (CUDA), or None on CPU."""
        return None

    def record_compiler_stats(self):
        """Adds compiler statistics to `info` once every function is compiled."""

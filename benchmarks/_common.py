"""What every worker module shares: constants, the `Runner` interface, inputs.

No framework is imported here (the workers import theirs after setting the
backend variables).
"""

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

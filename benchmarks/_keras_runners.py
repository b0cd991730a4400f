"""keras_maxvit as users run it: `compile()` defaults, `train_on_batch`, `predict_on_batch`.

    model = keras_maxvit.MaxViTTiny(weights=None, input_shape=(224, 224, 3))
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    model.train_on_batch(x, y)
    model.predict_on_batch(x)

No `jit_compile` argument: Keras resolves `"auto"` (XLA on JAX and
TensorFlow when every layer supports it, eager on torch), and the result
records what it resolved to. The model keeps its defaults (preprocessing layer,
softmax classifier), so its inputs are raw RGB in [0, 255]. Both calls
synchronize (they return NumPy), so a timed call is a finished call.

The kernels are chosen by keras_maxvit from `KERAS_MAXVIT_KERNELS` (`auto`,
the default, or `reference`), which `_worker.py` sets per configuration.
"""

import math
import os
import time
from pathlib import Path

from _common import SEED, Runner, images


def kernels_env_read(keras_maxvit) -> bool:
    """Whether this keras_maxvit reads `KERAS_MAXVIT_KERNELS` at all (older ones do not)."""
    root = Path(keras_maxvit.__file__).resolve().parent
    return any("KERAS_MAXVIT_KERNELS" in p.read_text(errors="ignore") for p in root.rglob("*.py"))


def constructor_name(variant: str) -> str:
    return {"xlarge": "MaxViTXLarge"}.get(variant, f"MaxViT{variant.title()}")


def compiler_name(backend: str, jit_compile: bool) -> str:
    """What `compile()` made of the train and predict functions."""
    if backend == "torch":
        return "torch.compile" if jit_compile else "eager"
    if backend == "tensorflow":
        return "tf.function with XLA" if jit_compile else "tf.function without XLA"
    return "jax.jit (XLA)" if jit_compile else "no jax.jit (op by op)"


class KerasRunner(Runner):
    """keras_maxvit on the backend of `KERAS_BACKEND` (set by `_worker.py`)."""

    def __init__(self, args):
        super().__init__(args)
        self.device = args.device
        backend = os.environ["KERAS_BACKEND"]
        self.backend = backend
        # Threads and devices first: TensorFlow and torch only take them before any work.
        # The torch settings are those of the torch peers (recorded in `info`).
        if backend == "tensorflow":
            from _tf_runners import tf_info, tf_setup

            self.tf = tf_setup(args)
            self.info.update(tf_info(self.tf))
        elif backend == "torch":
            from _torch_runners import torch_device, torch_info, torch_setup

            self.torch = torch_setup(args)
            torch_device(self.torch, args)
            self.info.update(torch_info(self.torch))
        elif backend == "jax":
            import jax

            self.jax = jax
            self.jax_device = jax.devices()[0]
            if args.device == "cuda" and self.jax_device.platform == "cpu":
                raise RuntimeError("--device cuda but JAX sees no GPU (pip install 'jax[cuda12]')")
            self.info["jax_device"] = str(self.jax_device)
        start = time.perf_counter()
        import keras

        import keras_maxvit

        self.info["import_s"] = time.perf_counter() - start
        self.keras = keras
        if args.dtype == "bfloat16":
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        keras.utils.set_random_seed(SEED)
        name = constructor_name(args.variant)
        model = getattr(keras_maxvit, name)(
            weights=None, input_shape=(args.resolution, args.resolution, 3)
        )
        model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
        self.model = model
        self.jit_compile = model.jit_compile
        self.info.update(
            model=f"keras_maxvit.{name}(weights=None)",
            trainable_params=sum(math.prod(v.shape) for v in model.trainable_variables),
            keras_version=keras.__version__,
            keras_backend=keras.backend.backend(),
            dtype_policy=keras.mixed_precision.global_policy().name,
            jit_compile=model.jit_compile,
            compiler=compiler_name(backend, model.jit_compile),
            kernels=os.environ.get("KERAS_MAXVIT_KERNELS", "auto"),
            kernels_env_read_by_library=kernels_env_read(keras_maxvit),
        )
        x, _ = self.inputs(1)
        if backend == "torch":
            self.is_cuda = x.device.type == "cuda"
            if args.device == "cuda" and not self.is_cuda:
                raise RuntimeError("--device cuda but Keras placed tensors on the CPU")

    def inputs(self, batch):
        """Backend tensors on the model's device (as a prefetching `fit` pipeline gives)."""
        if self.backend == "tensorflow":
            from _tf_runners import tf_inputs

            return tf_inputs(self.tf, batch, self.resolution, raw=True)
        x, y = images(batch, self.resolution, channels_first=False, raw=True)
        if self.backend == "jax":
            # Uncommitted (no device argument), as NumPy inputs are: with arrays
            # committed to a device, Keras's JAX trainer compiles its second call again.
            return self.jax.device_put(x), self.jax.device_put(y)
        ops = self.keras.ops
        return ops.convert_to_tensor(x), ops.convert_to_tensor(y)

    def infer(self, x):
        return self.model.predict_on_batch(x)

    def train_step(self, x, y):
        return self.model.train_on_batch(x, y)

    def reset_peak_memory(self):
        if self.device != "cuda":
            return
        if self.backend == "tensorflow":
            from _tf_runners import tf_reset_peak

            tf_reset_peak(self.tf)
        elif self.backend == "torch":
            self.torch.cuda.reset_peak_memory_stats()
        # JAX cannot reset its peak: it reports the process's peak so far.

    def device_peak_mib(self):
        if self.device != "cuda":
            return None
        if self.backend == "tensorflow":
            from _tf_runners import tf_peak_mib

            return tf_peak_mib(self.tf)
        if self.backend == "torch":
            from _torch_runners import cuda_peak_mib

            return cuda_peak_mib(self.torch)
        stats = self.jax_device.memory_stats() or {}
        return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None

    def record_compiler_stats(self):
        if self.backend == "torch" and self.jit_compile:
            from _torch_runners import dynamo_stats

            self.info.update(dynamo_stats())

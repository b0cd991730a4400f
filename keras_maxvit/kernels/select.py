"""Which implementation a MaxViT layer runs: its Keras sublayers, or a kernel.

Every MaxViT layer computes through its Keras sublayers (`Conv2D`,
`DepthwiseConv2D`, `BatchNormalization`, `Dense`, `LayerNormalization`):
that is the reference path, the one that runs on GPU and TPU, after
`quantize()`, with LoRA or a dtype policy map. A kernel is a faster
implementation of one step, beside the layers in `keras_maxvit/kernels/`,
taken where `use_kernel` says so. That is the one place with the conditions.

The mode is `keras_maxvit.set_kernels(...)` or, unset, the environment
variable `KERAS_MAXVIT_KERNELS`, read at every call:

- `"auto"` (default): each kernel where it was measured faster, by backend,
  device platform of the inputs, compiled (XLA, `torch.compile`) or eager,
  and dtype (see `KERNELS`);
- `"reference"`: never a kernel, only sublayer calls;
- `"fast"`: every kernel wherever it can run (any device, mode and dtype).

A kernel never runs where it would bypass a sublayer's own `call` that does
more than its weights say: a quantized layer, a layer with LoRA, or a layer
whose dtype policy differs from the input's dtype (a `DTypePolicyMap`).
"""

import contextlib
import os
import threading
from dataclasses import dataclass

import keras

from keras_maxvit.distributed import ALL_REDUCED

MODES = ("auto", "reference", "fast")
ENV_VAR = "KERAS_MAXVIT_KERNELS"
HALF = ("float16", "bfloat16")


@dataclass(frozen=True)
class Kernel:
    """Where a kernel is taken in `"auto"` mode.

    Attributes:
        cpu_xla: Backends where it runs on CPU under XLA (JAX `jit`,
            TensorFlow `jit_compile=True`) in float32.
        cpu_eager: Backends where it runs on CPU in eager mode in float32.
        fast: Backends that have an implementation at all (`"fast"` mode).
        gpu_half: Backends where it runs on a CUDA GPU in float16/bfloat16.
        gpu_any: Backends where it runs on a CUDA GPU in any dtype.
        torch_cpu_capability: PyTorch CPU capabilities
            (`torch.backends.cpu.get_cpu_capability()`) its `cpu_eager`
            PyTorch entry is limited to; empty: any.
    """

    cpu_xla: tuple[str, ...] = ()
    cpu_eager: tuple[str, ...] = ()
    fast: tuple[str, ...] = ("jax", "tensorflow", "torch")
    gpu_half: tuple[str, ...] = ()
    gpu_any: tuple[str, ...] = ()
    torch_cpu_capability: tuple[str, ...] = ()


# Each entry was measured faster than the sublayer calls in exactly these
# settings, on a 2-core AVX-512 CPU, `chunked_gelu` on a 2-core AVX2 one (see
# README "Performance"); anywhere else the reference path runs.
KERNELS = {
    # Per-pixel projections (1x1 convs, Dense) as 2-D matmuls (XLA) or a 1x1
    # conv on a channels-last view (PyTorch): `linear.project`.
    "linear": Kernel(cpu_xla=("jax", "tensorflow"), cpu_eager=("torch",)),
    # BatchNorm with moving statistics folded into the neighbouring 1x1 /
    # depthwise kernels: `batch_norm.batch_norm_affine`.
    "fold_batch_norm": Kernel(cpu_xla=("jax", "tensorflow"), cpu_eager=("torch",)),
    # Training BatchNorm with its closed-form gradient: `batch_norm.batch_norm_train`.
    # It ignores `synchronized` (never taken for a synchronized layer).
    "batch_norm_train": Kernel(cpu_xla=("tensorflow",), cpu_eager=("torch",)),
    # 3x3 depthwise conv as shifted sums (XLA) or on a channels-first view
    # (PyTorch): `depthwise.depthwise_conv`.
    "depthwise": Kernel(cpu_xla=("jax", "tensorflow"), cpu_eager=("torch",)),
    # A "same" Conv2D (the stem's) as one channels-first conv with its bias,
    # and MBConv's shortcut pooling on the channels-first view (PyTorch):
    # `channels_first.same_conv` (in `layers.StemConv2D`), `.average_pool`.
    "conv": Kernel(cpu_eager=("torch",), fast=("torch",)),
    "pool": Kernel(cpu_eager=("torch",), fast=("torch",)),
    # GELU written into the new map it follows, without autograd (PyTorch):
    # `activation.gelu_tanh_of_new`.
    "in_place_gelu": Kernel(cpu_eager=("torch",), fast=("torch",)),
    # GELU as x * sigmoid(v) over cache-sized chunks, with its own backward
    # (PyTorch; measured on AVX2 only): `activation.gelu_tanh_of_new`.
    "chunked_gelu": Kernel(cpu_eager=("torch",), fast=("torch",), torch_cpu_capability=("AVX2",)),
    # q, k, v as three column projections each with one 6-D transpose (XLA),
    # or the fused projection with one 8-D transpose (PyTorch): `attention.py`.
    "qkv": Kernel(cpu_xla=("jax", "tensorflow"), cpu_eager=("torch",)),
    # `ops.dot_product_attention` with the relative-position bias: cuDNN on
    # JAX (half precision), SDPA on PyTorch CUDA. Never on TPU (Keras' splash
    # path drops a bias) nor on CPU, and not in `"fast"` mode (not a CPU kernel).
    "fused_attention": Kernel(fast=(), gpu_half=("jax",), gpu_any=("torch",)),
}

_state = threading.local()
_global = {"mode": None}


def set_kernels(mode: str | None) -> None:
    """Sets the kernel mode for every MaxViT model: `"auto"`, `"reference"`,
    `"fast"`, or None to follow `KERAS_MAXVIT_KERNELS` again.

    Read at call time: it applies to models already built, from their next
    call or trace on (a compiled function keeps the kernels it was traced with).
    """
    _global["mode"] = None if mode is None else _check_mode(mode, "mode")


def get_kernels() -> str:
    """The kernel mode in force (`set_kernels`, else the environment, else "auto")."""
    if _global["mode"] is not None:
        return _global["mode"]
    return _check_mode(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto", ENV_VAR)


def _check_mode(mode, argument):
    if mode not in MODES:
        raise ValueError(f"`{argument}` must be one of {MODES}. Received: {argument}={mode!r}")
    return mode


@contextlib.contextmanager
def force_kernels(**enabled: bool):
    """Forces kernels on or off by name inside the block, whatever the mode
    (for tests, e.g. `force_kernels(fused_attention=True)` on CPU)."""
    for name in enabled:
        if name not in KERNELS:
            raise ValueError(f"Unknown kernel {name!r}; known kernels: {sorted(KERNELS)}")
    previous = getattr(_state, "forced", {})
    _state.forced = {**previous, **enabled}
    try:
        yield
    finally:
        _state.forced = previous


@contextlib.contextmanager
def compiled_scope(compiled: bool):
    """Tells the kernels whether the code traced inside runs under XLA.

    `MaxViTModel`'s train/test/predict steps run in it with the model's
    `jit_compile` (JAX's trainer differentiates with tracers also when it
    does not `jit`); elsewhere a JAX tracer or a TensorFlow XLA context says so.
    """
    previous = getattr(_state, "compiled", None)
    _state.compiled = bool(compiled)
    try:
        yield
    finally:
        _state.compiled = previous


def is_compiled(x) -> bool:
    """Whether `x` is being traced for XLA (JAX, TensorFlow) or `torch.compile`."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return bool(torch.compiler.is_compiling())
    scoped = getattr(_state, "compiled", None)
    if scoped is not None:
        return scoped
    if backend == "jax":
        import jax

        return isinstance(x, jax.core.Tracer)
    return _tensorflow_xla_context()


def _tensorflow_xla_context() -> bool:
    """Whether TensorFlow is tracing a graph that XLA compiles
    (`tf.function(jit_compile=True)`, also from an enclosing function)."""
    import tensorflow as tf

    if tf.executing_eagerly():
        return False
    try:  # what tf.function itself asks (no public API says it)
        from tensorflow.python.framework import ops
        from tensorflow.python.ops import control_flow_util
    except ImportError:
        return False
    return bool(control_flow_util.GraphOrParentsInXlaContext(ops.get_default_graph()))


def device_platform(x) -> str:
    """`"cpu"`, `"gpu"` or `"tpu"`: where `x` is (or, traced, where it will run)."""
    backend = keras.backend.backend()
    if backend == "torch":
        device = getattr(x, "device", None)
        kind = device.type if device is not None else "cpu"
        if kind == "meta":  # symbolic build: the device Keras puts tensors on
            from keras.src.backend.torch.core import get_device

            kind = str(get_device()).split(":")[0]
        return "gpu" if kind == "cuda" else kind
    if backend == "jax":
        import jax

        devices = getattr(x, "devices", None)
        if callable(devices) and not isinstance(x, jax.core.Tracer):
            return next(iter(devices())).platform
        return jax.default_backend()
    import tensorflow as tf

    name = getattr(x, "device", "") or ""
    if "TPU" in name or isinstance(tf.distribute.get_strategy(), tf.distribute.TPUStrategy):
        return "tpu"
    if "GPU" in name or (not name and tf.config.list_logical_devices("GPU")):
        return "gpu"
    return "cpu"


def _plain(layer, dtype) -> bool:
    """Whether `layer(x)` computes nothing but its weights say (a kernel may
    then stand in for the call)."""
    if getattr(layer, "quantization_mode", None) is not None:
        return False
    if getattr(layer, "lora_enabled", False):
        return False
    if getattr(layer, "synchronized", False):
        return False
    if getattr(layer, ALL_REDUCED, False):  # its moments are all-reduced over processes
        return False
    policy = layer.dtype_policy
    if getattr(policy, "quantization_mode", None) is not None:
        return False
    return keras.backend.standardize_dtype(policy.compute_dtype) == dtype


def use_kernel(name: str, x, *layers) -> bool:
    """Whether kernel `name` replaces the calls of `layers` on input `x`."""
    forced = getattr(_state, "forced", {}).get(name)
    dtype = keras.backend.standardize_dtype(x.dtype)
    if not all(_plain(layer, dtype) for layer in layers):
        return False
    if forced is not None:
        return forced
    mode = get_kernels()
    if mode == "reference":
        return False
    kernel = KERNELS[name]
    backend = keras.backend.backend()
    if mode == "fast":
        return backend in kernel.fast
    platform = device_platform(x)
    if platform == "gpu":
        return backend in kernel.gpu_any or (backend in kernel.gpu_half and dtype in HALF)
    if platform != "cpu" or dtype != "float32":
        return False
    if is_compiled(x):
        return backend in kernel.cpu_xla
    if backend == "torch" and kernel.torch_cpu_capability:
        import torch

        if torch.backends.cpu.get_cpu_capability() not in kernel.torch_cpu_capability:
            return False
    return backend in kernel.cpu_eager

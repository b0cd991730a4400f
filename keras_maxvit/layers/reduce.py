"""Per-channel sums over every other axis, as a matmul where XLA reduces slowly.

TensorFlow's XLA on CPU lowers a sum over the leading axes of a tensor that
is computed in the same step (`sum(x * y)` over batch and pixels: every
BatchNorm's variance and gradient) as a strided reduce-window, one output
channel at a time. For a (8, 56, 56, 256) map that takes 8 ms; a matmul of
the materialized product with a row of ones takes 3 ms, and BatchNorm in
training as a whole went from 14 to 6 ms forward + backward. On GPUs and on
the other backends the plain sum is kept (it is fast there, and a float32
matmul may run in TF32 on a GPU).
"""

import functools
import math

import keras
from keras import ops

from keras_maxvit.layers.depthwise import LOW_PRECISION

MATMUL_SUM_BACKENDS = ("tensorflow",)


@functools.cache
def _cpu_only() -> bool:
    return all(device.startswith("cpu") for device in keras.distribution.list_devices())


def matmul_sums() -> bool:
    """Whether `channel_sum` runs as a matmul with this backend and device."""
    return keras.backend.backend() in MATMUL_SUM_BACKENDS and _cpu_only()


def channel_sum(x):
    """The sum of `x` over all axes but the last: shape `(channels,)` (float32
    for half-precision inputs)."""
    if keras.backend.standardize_dtype(x.dtype) in LOW_PRECISION:
        x = ops.cast(x, "float32")
    if not matmul_sums():
        return ops.sum(x, axis=tuple(range(len(x.shape) - 1)))
    flat = ops.reshape(x, (-1, x.shape[-1]))
    ones = ops.transpose(ops.ones_like(flat[:, :1]))  # (1, rows), also for an unknown batch
    return ops.matmul(ones, flat)[0]


def channel_moments(x):
    """`(mean, variance)` of `x` over all axes but the last (two passes, as
    `ops.moments`: the variance is the mean of squared deviations)."""
    if not matmul_sums():
        return ops.moments(x, tuple(range(len(x.shape) - 1)))
    count = ops.cast(ops.size(x) // x.shape[-1], x.dtype)
    mean = channel_sum(x) / count
    return mean, channel_sum(ops.square(x - mean)) / count


def add_bias(x, bias):
    """`x + bias` for a `bias` that matches the trailing axes of `x`.

    Where `channel_sum` is a matmul, the bias gradient (the upstream gradient
    summed over the leading axes) is one too, through a custom gradient.
    """
    if not matmul_sums():
        return x + bias

    @ops.custom_gradient
    def add(x, bias):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            size = math.prod(bias.shape)
            summed = channel_sum(ops.reshape(upstream, (-1, size)))
            return upstream, ops.cast(ops.reshape(summed, bias.shape), bias.dtype)

        return x + bias, grad

    return add(x, bias)

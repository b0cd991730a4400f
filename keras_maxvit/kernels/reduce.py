"""Per-channel sums over every other axis, computed on a 2-D view.

TensorFlow's XLA on CPU rewrites a large sum into a reduce-window over the
summed axes. Over batch, height and width of a 4-D map, keeping the
channels, the windows are strided, one channel at a time; over the rows of
the same data viewed as (pixels, channels) they are contiguous and several
times faster. So the factors are reshaped to 2-D before they are
multiplied (a reshape after the product is simplified away again).
`batch_norm_train` sums this way on every backend (the same arithmetic).
"""

import keras
from keras import ops

from keras_maxvit.kernels.select import HALF


def channel_sum(*factors):
    """The product of `factors` (same shape) summed over all axes but the
    last: shape `(channels,)`, float32 for half-precision inputs."""
    product = None
    for factor in factors:
        if keras.backend.standardize_dtype(factor.dtype) in HALF:
            factor = ops.cast(factor, "float32")
        factor = ops.reshape(factor, (-1, factor.shape[-1]))
        product = factor if product is None else product * factor
    return ops.sum(product, axis=0)


def channel_moments(x):
    """`(mean, variance)` of `x` over all axes but the last."""
    return ops.moments(ops.reshape(x, (-1, x.shape[-1])), axes=(0,))

"""Per-channel sums over every other axis, computed on a 2-D view.

TensorFlow's XLA on CPU rewrites a large sum into a reduce-window over the
summed axes. Over batch, height and width of a (8, 56, 56, 256) map, keeping
the channels, the windows are strided, one channel at a time: 8-9 ms for
`sum(x * x)`. Over the rows of the same data viewed as (25088, 256) they are
contiguous: 2 ms. So the factors are reshaped to 2-D before they are
multiplied (a reshape after the product is simplified away again).
`batch_norm_train` sums this way on every backend (the same arithmetic).
"""

import keras
from keras import ops

from keras_maxvit.layers.depthwise import LOW_PRECISION


def channel_sum(*factors):
    """The product of `factors` (same shape) summed over all axes but the
    last: shape `(channels,)`, float32 for half-precision inputs."""
    product = None
    for factor in factors:
        if keras.backend.standardize_dtype(factor.dtype) in LOW_PRECISION:
            factor = ops.cast(factor, "float32")
        factor = ops.reshape(factor, (-1, factor.shape[-1]))
        product = factor if product is None else product * factor
    return ops.sum(product, axis=0)


def channel_moments(x):
    """`(mean, variance)` of `x` over all axes but the last."""
    return ops.moments(ops.reshape(x, (-1, x.shape[-1])), axes=(0,))

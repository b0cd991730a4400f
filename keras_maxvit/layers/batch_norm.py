"""BatchNormalization arithmetic for MBConv: folded in inference, lean in training.

The `keras.layers.BatchNormalization` sublayers keep the weights (names,
checkpoints and `.keras` files are unchanged); MBConv computes with them:

- with moving statistics (inference, or a frozen layer) the normalization is
  an affine map per channel, folded into the neighbouring matmul or conv
  kernel (`batch_norm_affine`), so it costs no pass over the feature map;
- with batch statistics on PyTorch, `batch_norm_train` normalizes with
  in-place passes (one new buffer) and has its own, closed-form gradient.
  Automatic differentiation of Keras' formula makes many more passes in eager
  PyTorch, each into a fresh buffer: BatchNorm was 520 ms of a 2.76 s MaxViT-T
  training step (batch 8, 2-core CPU); forward + backward of one
  (8, 56, 56, 256) BatchNorm went from 40 to 17 ms.
- with batch statistics on TensorFlow, `batch_norm_train` too: its
  statistics and gradient sums run on a 2-D view of the map (`reduce.py`),
  which TensorFlow's XLA sums 4x faster on CPU than over the axes of the
  4-D map, as Keras' layer does. MaxViT-T training step: 1.87 -> 1.44 s.
"""

import keras
from keras import ops

from keras_maxvit.layers.depthwise import LOW_PRECISION
from keras_maxvit.layers.reduce import channel_moments, channel_sum


def uses_moving_statistics(norm, training) -> bool:
    """Whether a BatchNormalization layer normalizes with its moving
    statistics in this call (inference, or a frozen layer), as Keras decides."""
    return not (training and norm.trainable)


def batch_norm_affine(norm):
    """`(scale, offset)` with `norm(x) == x * scale + offset` when `norm` uses
    its moving statistics (float32, per channel)."""
    scale = ops.rsqrt(norm.moving_variance + norm.epsilon)
    if norm.scale:
        scale = scale * norm.gamma
    offset = -norm.moving_mean * scale
    if norm.center:
        offset = offset + norm.beta
    return scale, offset


def _affine(x, scale, offset):
    """`x * scale + offset` per channel, as one new tensor (on PyTorch the
    other passes run in place: fresh buffers of a (8, 112, 112, 256) map
    cost more in page faults than the arithmetic)."""
    zeros = ops.zeros_like(scale)
    return ops.batch_normalization(x, zeros, zeros + 1.0, -1, offset, scale, epsilon=0.0)


def _normalize_with_gradient(x, mean, variance, gamma, beta, epsilon):
    """`(x - mean) * rsqrt(variance + epsilon) * gamma + beta` over the last
    axis, where `mean` and `variance` are the batch statistics of `x`.

    The gradient for `x` is the total one (through the statistics too), so the
    statistics must come in without a gradient of their own.
    """

    @ops.custom_gradient
    def normalize(x, mean, variance, gamma, beta):
        inv_std = ops.rsqrt(variance + epsilon)
        scale = gamma * inv_std

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            count = ops.cast(ops.size(x), "float32") / x.shape[-1]
            sum_g = channel_sum(upstream)
            mean_g = sum_g / count
            # mean(g * x_hat), x_hat the normalized input
            mean_g_xhat = inv_std * (channel_sum(upstream, x) / count - mean * mean_g)
            # dx = scale * (g - mean_g - x_hat * mean_g_xhat)
            slope = -inv_std * mean_g_xhat
            grad_x = (upstream + _affine(x, slope, -mean_g - slope * mean)) * scale
            zeros = ops.zeros_like(mean)
            return grad_x, zeros, zeros, mean_g_xhat * count, sum_g

        return _affine(x, scale, beta - mean * scale), grad

    return normalize(x, mean, variance, gamma, beta)


def batch_norm_train(norm, x):
    """`norm(x, training=True)` for a channels-last `x`: normalizes with the
    batch statistics and updates the moving ones, as Keras does (float32
    arithmetic for half-precision inputs)."""
    x = ops.convert_to_tensor(x)
    dtype = x.dtype
    if keras.backend.standardize_dtype(dtype) in LOW_PRECISION:
        x = ops.cast(x, "float32")
    mean, variance = channel_moments(ops.stop_gradient(x))
    momentum = norm.momentum
    norm.moving_mean.assign(norm.moving_mean * momentum + mean * (1.0 - momentum))
    norm.moving_variance.assign(norm.moving_variance * momentum + variance * (1.0 - momentum))
    # Read as tensors here (a cast, not the variables themselves): TensorFlow's
    # custom gradient would otherwise want gradients for captured variables.
    gamma = ops.cast(norm.gamma, "float32") if norm.scale else ops.ones_like(mean)
    beta = ops.cast(norm.beta, "float32") if norm.center else ops.zeros_like(mean)
    y = _normalize_with_gradient(x, mean, variance, gamma, beta, norm.epsilon)
    return ops.cast(y, dtype)

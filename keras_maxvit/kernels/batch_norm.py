"""Kernels "fold_batch_norm" and "batch_norm_train": MBConv's BatchNorms.

The `keras.layers.BatchNormalization` sublayers keep the weights (names,
checkpoints and `.keras` files are unchanged); where `use_kernel` takes a
kernel, MBConv computes with them instead of calling them:

- "fold_batch_norm": a norm that uses its moving statistics (inference, or a
  frozen layer) is an affine map per channel, folded into the neighbouring
  1x1 or depthwise kernel (`batch_norm_affine`, `expand`), so it costs no
  pass over the feature map;
- "batch_norm_train": a norm with batch statistics normalizes with few
  passes (one new buffer, the rest in place on PyTorch, where automatic
  differentiation of Keras' formula makes many passes into fresh buffers)
  and has its own closed-form gradient; its statistics and gradient sums
  run on a 2-D view of the map (`reduce.py`), which TensorFlow's XLA sums
  faster on CPU than over the axes of the 4-D map.
"""

import math

import keras
from keras import ops

from keras_maxvit.kernels.linear import matmul_bias
from keras_maxvit.kernels.reduce import channel_moments, channel_sum
from keras_maxvit.kernels.select import HALF, use_kernel


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
    if keras.backend.standardize_dtype(dtype) in HALF:
        x = ops.cast(x, "float32")
    if keras.backend.backend() == "torch" and math.prod(x.shape[:-1]) > 1:
        from keras_maxvit.kernels import torch_eager

        gamma = ops.cast(norm.gamma, "float32") if norm.scale else None
        beta = ops.cast(norm.beta, "float32") if norm.center else None
        y, mean, variance = torch_eager.batch_norm_train(x, gamma, beta, norm.epsilon)
    else:
        mean, variance = channel_moments(ops.stop_gradient(x))
        # Read as tensors here (a cast, not the variables themselves): TensorFlow's
        # custom gradient would otherwise want gradients for captured variables.
        gamma = ops.cast(norm.gamma, "float32") if norm.scale else ops.ones_like(mean)
        beta = ops.cast(norm.beta, "float32") if norm.center else ops.zeros_like(mean)
        y = _normalize_with_gradient(x, mean, variance, gamma, beta, norm.epsilon)
    momentum = norm.momentum
    norm.moving_mean.assign(norm.moving_mean * momentum + mean * (1.0 - momentum))
    norm.moving_variance.assign(norm.moving_variance * momentum + variance * (1.0 - momentum))
    return ops.cast(y, dtype)


def batch_norm(norm, x, training):
    """`norm(x, training=training)`, or the "batch_norm_train" kernel where
    `norm` uses batch statistics and `use_kernel` takes it."""
    if not uses_moving_statistics(norm, training) and use_kernel("batch_norm_train", x, norm):
        return batch_norm_train(norm, x)
    return norm(x, training=training)


def expand(pre_norm, conv, norm, x, training):
    """`norm(conv(pre_norm(x)))` for a 1x1 `conv` without bias, with each norm
    that uses its moving statistics folded into the conv's kernel (as one
    2-D matmul); the others are `batch_norm` calls.

    Folded in float32 (the norms' statistics are float32 under mixed precision).
    """
    kernel = ops.cast(conv.kernel, "float32")
    kernel = ops.reshape(kernel, kernel.shape[-2:])
    bias = None
    if uses_moving_statistics(pre_norm, training):
        scale, offset = batch_norm_affine(pre_norm)
        bias = ops.matmul(offset[None], kernel)[0]
        kernel = kernel * scale[:, None]
    else:
        x = batch_norm(pre_norm, x, training)
    fold_norm = uses_moving_statistics(norm, training)
    if fold_norm:
        scale, offset = batch_norm_affine(norm)
        kernel = kernel * scale
        bias = offset if bias is None else bias * scale + offset
    x = matmul_bias(x, ops.cast(kernel, x.dtype), bias)
    return x if fold_norm else batch_norm(norm, x, training)

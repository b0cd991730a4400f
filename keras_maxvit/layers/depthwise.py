"""The 3x3 depthwise convolution of MBConv as shifted sums, with its own gradient.

XLA's CPU depthwise convolution is slow (5-7x the shifted sum below for
MaxViT-T's stage-1 maps, forward and backward), so under JAX and TensorFlow
MBConv runs its depthwise conv as a sum of shifted, scaled copies of the
input, which XLA fuses into one loop. Left to automatic differentiation, the
kernel gradient of that sum is nine reductions over sliced inputs, which XLA
CPU does not fuse (it copies every slice first): 2-4x the forward and
backward of the rest of the block. `depthwise_conv_same` therefore carries
its own gradient:

- input gradient: the transposed convolution, again a shifted sum (of the
  upstream gradient, dilated by the stride, with the kernel flipped);
- kernel gradient: for each tap, the products of upstream gradient and
  shifted input are summed over the output rows by explicit adds (one fused
  loop over row slices), then over batch and columns by one reduction.
"""

import keras
from keras import ops

LOW_PRECISION = ("float16", "bfloat16")


def same_padding(size: int, kernel_size: int, strides: int):
    """TensorFlow "same" padding `(before, after)` and output size for one side."""
    out = -(-size // strides)
    total = max((out - 1) * strides + kernel_size - size, 0)
    return (total // 2, total - total // 2), out


def _shifted_sum(padded, kernel, strides, out_height, out_width):
    """`sum_ij padded[:, s*h + i, s*w + j, :] * kernel[i, j]` over the output grid."""
    size_h, size_w = kernel.shape[0], kernel.shape[1]
    span_h, span_w = (out_height - 1) * strides + 1, (out_width - 1) * strides + 1
    out = None
    for i in range(size_h):
        for j in range(size_w):
            window = padded[:, i : i + span_h : strides, j : j + span_w : strides, :]
            term = window * kernel[i, j, :, 0]
            out = term if out is None else out + term
    return out


def _forward(x, kernel, strides):
    _, height, width, _ = x.shape
    pad_h, out_height = same_padding(height, kernel.shape[0], strides)
    pad_w, out_width = same_padding(width, kernel.shape[1], strides)
    padded = ops.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    return _shifted_sum(padded, kernel, strides, out_height, out_width)


def _dilate(x, strides):
    """Puts `strides - 1` zeros between neighbouring rows and columns of `(B, H, W, C)`."""
    if strides == 1:
        return x
    batch, height, width, channels = x.shape
    batch = -1 if batch is None else batch
    x = ops.reshape(x, (batch, height, 1, width, 1, channels))
    x = ops.pad(x, ((0, 0), (0, 0), (0, strides - 1), (0, 0), (0, strides - 1), (0, 0)))
    x = ops.reshape(x, (batch, height * strides, width * strides, channels))
    return x[:, : (height - 1) * strides + 1, : (width - 1) * strides + 1, :]


def _input_grad(upstream, kernel, input_shape, strides):
    """Gradient for the input: the transposed convolution, cropped to the input."""
    _, height, width, _ = input_shape
    size_h, size_w = kernel.shape[0], kernel.shape[1]
    (top, _), _ = same_padding(height, size_h, strides)
    (left, _), _ = same_padding(width, size_w, strides)
    grad = _dilate(upstream, strides)
    grad = ops.pad(grad, ((0, 0), (size_h - 1, size_h - 1), (size_w - 1, size_w - 1), (0, 0)))
    flipped = ops.flip(ops.flip(kernel, 0), 1)
    full = _shifted_sum(grad, flipped, 1, grad.shape[1] - size_h + 1, grad.shape[2] - size_w + 1)
    return full[:, top : top + height, left : left + width, :]


def _kernel_grad(x, upstream, kernel_shape, strides):
    """Gradient for the kernel, `(k, k, C, 1)`; accumulated in float32 for half types."""
    _, height, width, channels = x.shape
    size_h, size_w = kernel_shape[0], kernel_shape[1]
    pad_h, out_height = same_padding(height, size_h, strides)
    pad_w, out_width = same_padding(width, size_w, strides)
    if keras.backend.standardize_dtype(x.dtype) in LOW_PRECISION:
        x, upstream = ops.cast(x, "float32"), ops.cast(upstream, "float32")
    padded = ops.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    span_w = (out_width - 1) * strides + 1
    taps = []
    for i in range(size_h):
        for j in range(size_w):
            rows = None  # (B, out_width, C): this tap's products summed over output rows
            for row in range(out_height):
                window = padded[:, i + row * strides, j : j + span_w : strides, :]
                term = window * upstream[:, row]
                rows = term if rows is None else rows + term
            taps.append(rows)
    grad = ops.sum(ops.stack(taps), axis=(1, 2))  # (k * k, C)
    return ops.reshape(grad, (size_h, size_w, channels, 1))


def depthwise_conv_same(x, kernel, strides: int):
    """Depthwise conv with TensorFlow "same" padding as a sum of shifted inputs.

    Args:
        x: `(B, H, W, C)` map with static `H` and `W`.
        kernel: `(k, k, C, 1)` depthwise kernel (a tensor, not a variable).
        strides: 1 or 2.

    Returns:
        `(B, ceil(H / strides), ceil(W / strides), C)`, equal to
        `ops.depthwise_conv(x, kernel, strides, padding="same")`, with the
        gradients described in the module docstring.
    """

    @ops.custom_gradient
    def conv(x, kernel):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            kernel_grad = _kernel_grad(x, upstream, kernel.shape, strides)
            return (
                _input_grad(upstream, kernel, x.shape, strides),
                ops.cast(kernel_grad, kernel.dtype),
            )

        return _forward(x, kernel, strides), grad

    return conv(x, kernel)

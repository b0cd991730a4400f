"""Kernel "depthwise": MBConv's 3x3 depthwise conv without the sublayer's call.

Under XLA (JAX, TensorFlow) it runs as shifted sums with its own gradient;
on PyTorch as one channels-first conv on a transposed view that adds the
folded BatchNorm's offset too (`torch_eager.depthwise_conv`).

XLA's CPU depthwise convolution is slow, so the kernel is a sum of shifted,
scaled copies of the input, which XLA fuses into one loop. Left to automatic
differentiation, the kernel gradient of that sum is nine reductions over
sliced inputs, which XLA CPU does not fuse (it copies every slice first), so
`depthwise_conv_same` carries its own gradient:

- input gradient: the transposed convolution, again shifted sums of the
  upstream gradient, one per output phase (rows and columns modulo the
  stride), interleaved;
- kernel gradient: for each tap, the products of upstream gradient and
  shifted input are summed over the output rows by explicit adds (one fused
  loop over row slices), then over batch and columns by one reduction.
  The adds are unrolled over the output rows, so the traced graph grows
  with the map's height (56 rows at stage 1 of a 224 model).
"""

import keras
from keras import ops

from keras_maxvit.kernels.select import HALF, use_kernel


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


def _pad_same(x, kernel_shape, strides):
    """`x` padded as TensorFlow "same" does, and the output's height and width."""
    _, height, width, _ = x.shape
    pad_h, out_height = same_padding(height, kernel_shape[0], strides)
    pad_w, out_width = same_padding(width, kernel_shape[1], strides)
    return ops.pad(x, ((0, 0), pad_h, pad_w, (0, 0))), out_height, out_width


def _forward(x, kernel, strides):
    padded, out_height, out_width = _pad_same(x, kernel.shape, strides)
    return _shifted_sum(padded, kernel, strides, out_height, out_width)


def _input_grad(upstream, kernel, input_shape, strides):
    """Gradient for the input: the transposed convolution, cropped to the input.

    Computed per output phase (rows and columns modulo `strides`): phase
    `(a, b)` of the padded input's gradient is a shifted sum of the upstream
    gradient with the taps `(i, j) = (a, b) mod strides`; the phases are then
    interleaved by one reshape. No zero-dilated copy of the upstream gradient
    is made (for stride 2 that is 4x the work, and XLA CPU copies it first).
    """
    batch, height, width, channels = input_shape
    batch = -1 if batch is None else batch
    _, out_height, out_width, _ = upstream.shape
    size_h, size_w = kernel.shape[0], kernel.shape[1]
    (top, _), _ = same_padding(height, size_h, strides)
    (left, _), _ = same_padding(width, size_w, strides)
    # Rows and columns per phase: the padded input has (out - 1) * s + k of them.
    rows = -(-((out_height - 1) * strides + size_h) // strides)
    cols = -(-((out_width - 1) * strides + size_w) // strides)
    reach_h, reach_w = (size_h - 1) // strides, (size_w - 1) // strides
    grad = ops.pad(
        upstream,
        ((0, 0), (reach_h, rows - out_height), (reach_w, cols - out_width), (0, 0)),
    )
    phases = []
    for a in range(strides):
        for b in range(strides):
            phase = None
            for i in range(a, size_h, strides):
                for j in range(b, size_w, strides):
                    di, dj = reach_h - (i - a) // strides, reach_w - (j - b) // strides
                    term = grad[:, di : di + rows, dj : dj + cols, :] * kernel[i, j, :, 0]
                    phase = term if phase is None else phase + term
            phases.append(phase)
    if strides == 1:
        full = phases[0]
    else:
        full = ops.stack(phases, axis=3)  # (B, rows, cols, a * strides + b, C)
        full = ops.reshape(full, (batch, rows, cols, strides, strides, channels))
        full = ops.reshape(
            ops.transpose(full, (0, 1, 3, 2, 4, 5)),
            (batch, rows * strides, cols * strides, channels),
        )
    return full[:, top : top + height, left : left + width, :]


def _kernel_grad(x, upstream, kernel_shape, strides):
    """Gradient for the kernel, `(k, k, C, 1)`; accumulated in float32 for half types."""
    size_h, size_w, channels, _ = kernel_shape
    if keras.backend.standardize_dtype(x.dtype) in HALF:
        x, upstream = ops.cast(x, "float32"), ops.cast(upstream, "float32")
    padded, out_height, out_width = _pad_same(x, kernel_shape, strides)
    span_w = (out_width - 1) * strides + 1
    taps = []
    for i in range(size_h):
        for j in range(size_w):
            summed = None  # (B, out_width, C): this tap's products summed over output rows
            for row in range(out_height):
                window = padded[:, i + row * strides, j : j + span_w : strides, :]
                term = window * upstream[:, row]
                summed = term if summed is None else summed + term
            taps.append(summed)
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


def depthwise_conv(x, kernel, strides: int, bias=None):
    """`ops.depthwise_conv(x, kernel, strides, padding="same")` (plus `bias`,
    cast to `x`'s dtype) by this backend's kernel: shifted sums (JAX,
    TensorFlow, static sizes) or one channels-first convolution that adds
    the bias too (PyTorch, `torch_eager.depthwise_conv`)."""
    backend = keras.backend.backend()
    if backend == "torch":
        from keras_maxvit.kernels import torch_eager

        return torch_eager.depthwise_conv(x, kernel, strides, bias)
    if x.shape[1] is not None and x.shape[2] is not None:
        x = depthwise_conv_same(x, kernel, strides)
    else:
        x = ops.depthwise_conv(x, kernel, strides, padding="same")
    return x if bias is None else x + ops.cast(bias, x.dtype)


def depthwise(layer, x):
    """`layer(x)` for a bias-free "same" `DepthwiseConv2D`, or the "depthwise"
    kernel where `use_kernel` takes it."""
    if use_kernel("depthwise", x, layer):
        return depthwise_conv(x, ops.cast(layer.kernel, x.dtype), layer.strides[0])
    return layer(x)

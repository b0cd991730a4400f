"""Kernel "linear": per-pixel (per-token) linear maps as a 2-D matmul (XLA) or
a 1x1 conv on a channels-last view (PyTorch), instead of the `Dense` or 1x1
`Conv2D` sublayer's call."""

import keras
from keras import ops

from keras_maxvit.kernels.select import use_kernel

# On PyTorch, maps of at least this many pixels (batch x height x width) are
# projected by a 1x1 convolution (`matmul_bias`).
CONV_MIN_PIXELS = 256


def flat_matmul(x, kernel):
    """`x @ kernel` over the last axis, computed on `x` flattened to 2-D.

    The same numbers as `ops.matmul(x, kernel)` for a `(..., C_in)` input and
    a `(C_in, C_out)` kernel. XLA on CPU differentiates a 4-D matmul into a
    contraction over three axes that it runs slower than the 2-D one.
    """
    if keras.backend.backend() == "torch":
        return matmul_bias(x, kernel)
    lead = x.shape[:-1]
    y = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), kernel)
    if all(size is not None for size in lead[1:]):
        return ops.reshape(y, (-1, *lead[1:], kernel.shape[-1]))
    dynamic = ops.shape(x)  # unknown spatial sizes (TensorFlow graphs)
    sizes = tuple(dynamic[i] if size is None else size for i, size in enumerate(lead))
    return ops.reshape(y, sizes + (kernel.shape[-1],))


def _conv_sized(x) -> bool:
    """Whether a PyTorch map is large enough for the 1x1-conv projection."""
    sizes = x.shape[:-1]
    # Plain ints only: a symbolic size (torch.export with a dynamic batch)
    # would otherwise become a guard on the batch size.
    known = len(sizes) == 3 and all(type(size) is int for size in sizes)
    return known and sizes[0] * sizes[1] * sizes[2] >= CONV_MIN_PIXELS


def matmul_bias(x, kernel, bias=None):
    """`flat_matmul(x, kernel) + bias`, the bias (if any) cast to `x`'s dtype.

    On PyTorch one call adds the bias too: a 1x1 convolution on a
    channels-last view for maps of at least `CONV_MIN_PIXELS` pixels (oneDNN,
    faster than MKL's matmul there; below it the convolution's per-call
    weight reordering costs more than it saves), else one `addmm`.
    """
    if keras.backend.backend() == "torch":
        from keras_maxvit.kernels import torch_eager

        if _conv_sized(x):
            return torch_eager.conv1x1(x, kernel, bias)
        return torch_eager.linear(x, kernel, bias)
    x = flat_matmul(x, kernel)
    return x if bias is None else x + ops.cast(bias, x.dtype)


def project(layer, x, columns: slice | None = None):
    """A `Dense` or 1x1 `Conv2D` layer's weights applied to the last axis of `x`.

    With `columns`, only those output channels (a slice of the kernel's
    columns and of the bias) are computed.

    Equal to `layer(x)` for those layers without activation, as a 2-D
    matmul (`flat_matmul`) and without the NHWC <-> NCHW transposes the
    PyTorch backend wraps around a convolution. The weights stay the
    sublayer's (names, checkpoints and `.keras` files are unchanged); the
    sublayer's `call` is not used, so `use_kernel` must have found it plain
    (no LoRA, no quantization).
    """
    kernel = ops.cast(layer.kernel, x.dtype)
    if len(kernel.shape) > 2:  # a 1x1 Conv2D kernel
        kernel = ops.reshape(kernel, kernel.shape[-2:])
    bias = layer.bias if layer.use_bias else None
    if columns is not None:
        kernel = kernel[:, columns]
        bias = None if bias is None else bias[columns]
    return matmul_bias(x, kernel, None if bias is None else ops.convert_to_tensor(bias))


def linear(layer, x):
    """`layer(x)` for a `Dense` or 1x1 `Conv2D` layer without activation, or
    the "linear" kernel where `use_kernel` takes it."""
    if use_kernel("linear", x, layer):
        return project(layer, x)
    return layer(x)

"""Per-pixel (per-token) linear maps as one 2-D matmul."""

import keras
from keras import ops


def flat_matmul(x, kernel):
    """`x @ kernel` over the last axis, computed on `x` flattened to 2-D.

    The same numbers as `ops.matmul(x, kernel)` for a `(..., C_in)` input and
    a `(C_in, C_out)` kernel. XLA on CPU differentiates a 4-D matmul into a
    contraction over three axes that it runs ~2x slower than the 2-D one
    (MaxViT-T's stage-1 1x1 convs: forward + backward 103 ms -> 46 ms).
    """
    if keras.backend.backend() == "torch":
        return ops.matmul(x, kernel)  # folded to 2-D by PyTorch itself, without copies
    lead = x.shape[:-1]
    y = ops.matmul(ops.reshape(x, (-1, x.shape[-1])), kernel)
    if all(size is not None for size in lead[1:]):
        return ops.reshape(y, (-1, *lead[1:], kernel.shape[-1]))
    dynamic = ops.shape(x)  # unknown spatial sizes (TensorFlow graphs)
    sizes = tuple(dynamic[i] if size is None else size for i, size in enumerate(lead))
    return ops.reshape(y, sizes + (kernel.shape[-1],))


def project(layer, x, columns: slice | None = None):
    """A `Dense` or 1x1 `Conv2D` layer's weights applied to the last axis of `x`.

    With `columns`, only those output channels (a slice of the kernel's
    columns and of the bias) are computed.

    Equal to `layer(x)` for those layers without activation, as a 2-D
    matmul (`flat_matmul`) and without the NHWC <-> NCHW transposes the
    PyTorch backend wraps around a convolution. The weights stay the
    sublayer's (names, checkpoints and `.keras` files are unchanged); the
    sublayer's `call` is not used, so it must have no activation, LoRA or
    quantization.
    """
    kernel = ops.cast(layer.kernel, x.dtype)
    if len(kernel.shape) > 2:  # a 1x1 Conv2D kernel
        kernel = ops.reshape(kernel, kernel.shape[-2:])
    bias = layer.bias if layer.use_bias else None
    if columns is not None:
        kernel = kernel[:, columns]
        bias = None if bias is None else bias[columns]
    x = flat_matmul(x, kernel)
    if bias is not None:
        x = x + ops.cast(bias, x.dtype)
    return x

"""Kernels "conv" and "pool": Keras layers whose PyTorch form copies the map.

Keras' PyTorch convolution and pooling copy a channels-last map to NCHW
(and a convolution's input then to channels-last memory again) and add a
convolution's bias as a separate pass. The transposed view of a contiguous
NHWC map already is an NCHW tensor in channels-last memory, which the CPU
kernels read in place, and the output transposed back is a contiguous NHWC
map. Taken on eager PyTorch only (see `select.KERNELS`).
"""

from keras import ops

from keras_maxvit.kernels.select import use_kernel


def same_conv(layer, x):
    """`layer(x)` for a channels-last `Conv2D` with "same" padding: its
    convolution and bias as one channels-first conv (`torch_eager.conv`),
    then its activation."""
    from keras_maxvit.kernels import torch_eager

    bias = ops.convert_to_tensor(layer.bias) if layer.use_bias else None
    y = torch_eager.conv(x, ops.cast(layer.kernel, x.dtype), layer.strides, bias)
    return y if layer.activation is None else layer.activation(y)


def average_pool(layer, x):
    """`layer(x)` for a channels-last `AveragePooling2D`, or the "pool" kernel
    (the pooling on the channels-first view) where `use_kernel` takes it and
    the windows tile the map (no padding: "valid", or "same" on sizes the
    strides divide)."""
    pool, strides = tuple(layer.pool_size), tuple(layer.strides)
    sizes = x.shape[1:3]
    tiled = layer.padding == "valid" or (
        pool == strides
        and all(size is not None and size % s == 0 for size, s in zip(sizes, strides, strict=True))
    )
    if layer.data_format != "channels_last" or not tiled or not use_kernel("pool", x, layer):
        return layer(x)
    y = ops.average_pool(
        ops.transpose(x, (0, 3, 1, 2)), pool, strides, padding="valid", data_format="channels_first"
    )
    return ops.transpose(y, (0, 2, 3, 1))

"""PyTorch forms of the kernels, for eager PyTorch on CPU.

The backend-specific helper of `linear.py`, `depthwise.py` and
`batch_norm.py` (imported only on the PyTorch backend). Each function is one
`torch.nn.functional` call where `keras.ops` would make several passes over
the map, every pass into a fresh buffer (on CPU, the page faults of a fresh
buffer of a stage-1 map cost more than the arithmetic):

- the bias of a projection or of a folded BatchNorm is added by the
  convolution itself, not by a separate add;
- a stride-2 depthwise convolution with TensorFlow's uneven "same" padding
  runs without a padded copy of its input when no gradient is needed;
- a training BatchNorm normalizes by `F.batch_norm` on a `(pixels, channels)`
  view, one pass with its native backward.

Maps are channels-last `(B, H, W, C)`; their channels-first views are
channels-last memory to PyTorch, which oneDNN reads in place, so no layout
copy is made either way.
"""

import torch
import torch.nn.functional as F

from keras_maxvit.kernels.depthwise import same_padding


def conv1x1(x, kernel, bias=None):
    """`x @ kernel + bias` for a `(B, H, W, C_in)` map as one 1x1 convolution.

    `kernel` is `(C_in, C_out)`; it is laid out as a contiguous
    `(C_out, C_in)` matrix, the layout oneDNN's weight reordering is fastest from.
    """
    weight = kernel.t().contiguous()[:, :, None, None]
    if bias is not None:
        bias = bias.to(x.dtype)
    y = F.conv2d(x.permute(0, 3, 1, 2), weight, bias)
    return y.permute(0, 2, 3, 1)


def linear(x, kernel, bias=None):
    """`x @ kernel + bias` over the last axis as one `addmm` (small maps)."""
    return F.linear(x, kernel.t(), None if bias is None else bias.to(x.dtype))


def conv2d_same(x, weight, strides, bias=None, groups=1):
    """A convolution of the `(B, H, W, C)` map `x` with TensorFlow "same"
    padding (plus `bias`), channels-last out.

    `weight` is in PyTorch's layout, `(C_out, C_in / groups, k, k)`. Even
    padding is the convolution's own; uneven padding (one more row or column
    after, stride 2 on an even size) is, without gradient, a kernel with a
    leading zero tap and the larger padding on both sides (the same windows,
    no padded copy of the map); with gradient, a padded copy (the backward
    of that wider kernel is slower than the copy).
    """
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    pads = [same_padding(x.shape[1 + i], weight.shape[2 + i], strides[i])[0] for i in (0, 1)]
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    if all(before == after for before, after in pads):
        padding = (pads[0][0], pads[1][0])
    elif not needs_grad and all(after - before in (0, 1) for before, after in pads):
        weight = F.pad(weight, (pads[1][1] - pads[1][0], 0, pads[0][1] - pads[0][0], 0))
        padding = (pads[0][1], pads[1][1])
    else:
        x = F.pad(x, (0, 0, *pads[1], *pads[0]))
        padding = (0, 0)
    if bias is not None:
        bias = bias.to(x.dtype)
    y = F.conv2d(
        x.permute(0, 3, 1, 2),
        weight.to(x.dtype).contiguous(),
        bias,
        stride=strides,
        padding=padding,
        groups=groups,
    )
    return y.permute(0, 2, 3, 1)


def depthwise_conv(x, kernel, strides, bias=None):
    """`ops.depthwise_conv(x, kernel, strides, padding="same") + bias` for the
    Keras `(k, k, C, 1)` kernel (`conv2d_same`)."""
    channels = kernel.shape[2]
    weight = kernel[..., 0].permute(2, 0, 1).unsqueeze(1)  # (C, 1, k, k)
    return conv2d_same(x, weight, strides, bias, groups=channels)


def conv(x, kernel, strides, bias=None):
    """`ops.conv(x, kernel, strides, padding="same") + bias` for the Keras
    `(kh, kw, C_in, C_out)` kernel (`conv2d_same`); `strides` an int or a pair."""
    return conv2d_same(x, kernel.permute(3, 2, 0, 1), strides, bias)


def batch_norm_train(x, gamma, beta, epsilon):
    """BatchNorm of `x` with its batch statistics, over all axes but the last.

    Returns `(y, mean, variance)`, `variance` the biased one (as Keras keeps
    it). The statistics come from the same pass as the output: `F.batch_norm`
    writes them into zeroed buffers with momentum 1 (its running variance is
    the unbiased one, scaled back here). Needs at least 2 values per channel.
    """
    channels = x.shape[-1]
    flat = x.reshape(-1, channels)
    count = flat.shape[0]
    mean = torch.zeros(channels, dtype=flat.dtype, device=flat.device)
    variance = torch.zeros(channels, dtype=flat.dtype, device=flat.device)
    y = F.batch_norm(flat, mean, variance, gamma, beta, True, 1.0, epsilon)
    return y.reshape(x.shape), mean, variance * ((count - 1) / count)


def gelu_tanh_(x):
    """GELU (tanh approximation) of `x` written into `x` itself."""
    return torch.ops.aten.gelu_(x, approximate="tanh")

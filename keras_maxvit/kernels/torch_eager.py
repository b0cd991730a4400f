"""PyTorch forms of the kernels, for eager PyTorch on CPU.

The backend-specific helper of `linear.py`, `depthwise.py`, `batch_norm.py`,
`channels_first.py` and `activation.py` (imported only on the PyTorch backend). Each function is one
`torch.nn.functional` call where `keras.ops` would make several passes over
the map, every pass into a fresh buffer (on CPU, the page faults of a fresh
buffer of a stage-1 map cost more than the arithmetic):

- the bias of a projection or of a folded BatchNorm is added by the
  convolution itself, not by a separate add;
- a stride-2 depthwise convolution with TensorFlow's uneven "same" padding
  runs without a padded copy of its input (`conv2d_same`);
- a training BatchNorm normalizes by `F.batch_norm` on a `(pixels, channels)`
  view, one pass with its native backward;
- the stem's convolutions are one channels-first conv (`conv`);
- GELU without autograd overwrites its input, and can run as
  `x * sigmoid(v)` over cache-sized chunks with its own backward (`gelu_tanh`).

Maps are channels-last `(B, H, W, C)`; their channels-first views are
channels-last memory to PyTorch, which oneDNN reads in place, so no layout
copy is made either way.
"""

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

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
    padding is the convolution's own. Uneven padding (one more row or column
    after, stride 2 on an even size) is a kernel with a leading zero tap and
    the larger padding on both sides: the same windows, without a padded
    copy of the map. With autograd that runs as `_PadAfterConv` (3x3,
    stride 2, one row and column after: MBConv's downsampling), else on a
    padded copy.
    """
    strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
    pads = [same_padding(x.shape[1 + i], weight.shape[2 + i], strides[i])[0] for i in (0, 1)]
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
    weight = weight.to(x.dtype)
    bias = None if bias is None else bias.to(x.dtype)
    if all(before == after for before, after in pads):
        padding = (pads[0][0], pads[1][0])
    elif needs_grad and _pad_after_applies(x, weight, strides, pads):
        y = _PadAfterConv.apply(x.permute(0, 3, 1, 2), weight, bias, groups)
        return y.permute(0, 2, 3, 1)
    elif not needs_grad and all(after - before in (0, 1) for before, after in pads):
        weight = F.pad(weight, (pads[1][1] - pads[1][0], 0, pads[0][1] - pads[0][0], 0))
        padding = (pads[0][1], pads[1][1])
    else:
        x = F.pad(x, (0, 0, *pads[1], *pads[0]))
        padding = (0, 0)
    y = F.conv2d(
        x.permute(0, 3, 1, 2),
        weight.contiguous(),
        bias,
        stride=strides,
        padding=padding,
        groups=groups,
    )
    return y.permute(0, 2, 3, 1)


def _pad_after_applies(x, weight, strides, pads) -> bool:
    """Whether `_PadAfterConv` computes this conv: 3x3, stride 2, one row and
    column of padding after, maps of at least 4x4 (its weight gradient takes
    windows inside the map)."""
    three = tuple(weight.shape[2:]) == (3, 3)
    large = x.shape[1] >= 4 and x.shape[2] >= 4
    return three and large and strides == (2, 2) and pads == [(0, 1), (0, 1)]


class _PadAfterConv(torch.autograd.Function):
    """A 3x3, stride-2 conv of the NCHW view `x` (even height and width)
    with one zero row and column after, without a padded copy of `x`.

    Forward and input gradient use the 4x4 kernel with a leading zero tap
    and padding 1. oneDNN's weight gradient of that kernel is several times
    slower than the 3x3 one, and the 3x3 one wants the padded map; so the
    weight gradient is the 3x3 one over the windows inside `x` (all but the
    last output row and column) plus the last output row and column, each
    from a padded copy of the two rows or columns they read.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, groups):
        wide = F.pad(weight, (1, 0, 1, 0)).contiguous()
        ctx.save_for_backward(x, weight, wide)
        ctx.groups, ctx.has_bias = groups, bias is not None
        return F.conv2d(x, wide, bias, stride=2, padding=1, groups=groups)

    @staticmethod
    def backward(ctx, grad):
        x, weight, wide = ctx.saved_tensors
        groups = ctx.groups

        def conv_backward(grad, x, weight, padding, mask):
            return torch.ops.aten.convolution_backward(
                grad,
                x,
                weight,
                None,
                (2, 2),
                (padding, padding),
                (1, 1),
                False,
                (0, 0),
                groups,
                mask,
            )

        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = conv_backward(grad, x, wide, 1, [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            height, width = x.shape[2], x.shape[3]
            rows, cols = grad.shape[2] - 1, grad.shape[3] - 1
            grad_w = conv_backward(grad[:, :, :rows, :cols], x, weight, 0, [False, True, False])[1]
            last_rows = F.pad(x[:, :, height - 2 :, :], (0, 1, 0, 1))  # (N, C, 3, W + 1)
            grad_w = (
                grad_w
                + conv_backward(grad[:, :, rows:, :], last_rows, weight, 0, [False, True, False])[1]
            )
            last_cols = F.pad(x[:, :, : height - 1, width - 2 :], (0, 1))  # (N, C, H - 1, 3)
            grad_w = (
                grad_w
                + conv_backward(
                    grad[:, :, :rows, cols:], last_cols, weight, 0, [False, True, False]
                )[1]
            )
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None


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


# GELU (tanh approximation) as x * sigmoid(_K1 * x + _K3 * x**3): the same
# function as 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x**3))).
_K1 = 2.0 * math.sqrt(2.0 / math.pi)
_K3 = _K1 * 0.044715
_K1_TENSOR = torch.tensor(_K1)  # addcmul's float32 CPU "input" (the chunked form's only dtype)
# Elements per chunk: a chunk and its temporaries stay in the CPU's cache, so
# the passes over a chunk after the first one do not go to memory.
GELU_CHUNK = 1 << 18
# Smaller maps run ATen's GELU (fewer calls: the chunked form's calls cost more there).
GELU_MIN_SIZE = 1 << 17


def _chunks(*tensors):
    """Matching flat chunks of same-shaped contiguous tensors."""
    flat = [t.view(-1) for t in tensors]
    size = flat[0].numel()
    for start in range(0, size, GELU_CHUNK):
        yield [f[start : start + GELU_CHUNK] for f in flat]


def _sigmoid_v(x, out):
    """`out = sigmoid(_K1 * x + _K3 * x**3)` for a chunk `x`."""
    torch.addcmul(_K1_TENSOR, x, x, value=_K3, out=out)
    return out.mul_(x).sigmoid_()


def _gelu_into(x, out):
    """`out = gelu_tanh(x)` chunk by chunk (`out` may be `x`)."""
    buffer = torch.empty(min(GELU_CHUNK, x.numel()), dtype=x.dtype)
    for source, target in _chunks(x, out):
        s = _sigmoid_v(source, buffer[: source.numel()])
        torch.mul(source, s, out=target)
    return out


def _gelu_grad(grad, x):
    """The input gradient of `gelu_tanh` at `x`, chunk by chunk:
    `grad * s * (1 + x * v' * (1 - s))`, `s = sigmoid(v)`, `v = K1 x + K3 x**3`."""
    grad = grad.contiguous()
    out = torch.empty_like(x)
    buffers = torch.empty((2, min(GELU_CHUNK, x.numel())), dtype=x.dtype)
    for source, upstream, target in _chunks(x, grad, out):
        s = _sigmoid_v(source, buffers[0, : source.numel()])
        d = buffers[1, : source.numel()]
        torch.addcmul(_K1_TENSOR, source, source, value=3.0 * _K3, out=d)
        d.mul_(source)  # x * v'
        d.addcmul_(d, s, value=-1.0).add_(1.0).mul_(s)
        torch.mul(d, upstream, out=target)
    return out


class _GeluTanh(torch.autograd.Function):
    """`gelu_tanh` with the chunked forward and backward (saves only `x`, as ATen's)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return _gelu_into(x, torch.empty_like(x))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return _gelu_grad(grad, x)


def gelu_tanh(x, in_place=False, chunked=False):
    """GELU (tanh approximation) of `x`: written into `x` itself if `in_place`
    (no autograd), by `_GeluTanh`'s chunks if `chunked` (float32 CPU
    contiguous maps of at least `GELU_MIN_SIZE` values; ATen's GELU otherwise)."""
    float32_cpu = x.dtype == torch.float32 and x.device.type == "cpu"
    chunked = chunked and float32_cpu and x.is_contiguous() and x.numel() >= GELU_MIN_SIZE
    if chunked:
        return _gelu_into(x, x) if in_place else _GeluTanh.apply(x)
    if in_place:
        return torch.ops.aten.gelu_(x, approximate="tanh")
    return F.gelu(x, approximate="tanh")

"""Kernels "qkv" and "fused_attention" of `RelativePositionAttention`.

- "qkv", by backend:
  - XLA (JAX, TensorFlow): q, k and v as three projections (a third of the
    fused kernel's columns each) with one 6-D transpose each, so the backward
    pass has no slices of the fused map to pad and add back together;
  - PyTorch: the fused projection as one matmul and the partition, the q/k/v
    split and the heads in one 8-D transpose (and a 7-D one back), fewer
    eager calls.
- "fused_attention": `ops.dot_product_attention` with the relative-position
  bias as its additive bias (cuDNN on JAX GPUs, SDPA on PyTorch CUDA), in
  place of the einsum/softmax/einsum path.
"""

from keras import ops

from keras_maxvit.kernels.linear import project


def split_fused(qkv, size, heads, head_size, partition_type, group_rows, group_cols):
    """`(B, H, W, 3 * C)` fused projection -> query, key, value, each
    `(N, heads, T, head)` in the attention layer's group and token order,
    by one 8-D transpose."""
    rows, cols = size
    tokens = rows * cols
    if partition_type == "block":
        shape = (-1, group_rows, rows, group_cols, cols, 3, heads, head_size)
        order = (5, 0, 1, 3, 6, 2, 4, 7)
    else:
        shape = (-1, rows, group_rows, cols, group_cols, 3, heads, head_size)
        order = (5, 0, 2, 4, 6, 1, 3, 7)
    # (3, B, group_rows, group_cols, heads, rows, cols, head) -> (3, N, heads, T, head)
    qkv = ops.reshape(
        ops.transpose(ops.reshape(qkv, shape), order), (3, -1, heads, tokens, head_size)
    )
    return qkv[0], qkv[1], qkv[2]


def merge_fused(out, size, heads, head_size, partition_type, group_rows, group_cols):
    """Inverse of the partition in `split_fused` for the `(N, heads, T, head)`
    attention output, by one 7-D transpose: `(B, H, W, C)`."""
    rows, cols = size
    out = ops.reshape(out, (-1, group_rows, group_cols, heads, rows, cols, head_size))
    order = (0, 1, 4, 2, 5, 3, 6) if partition_type == "block" else (0, 4, 1, 5, 2, 3, 6)
    out = ops.transpose(out, order)
    return ops.reshape(out, (-1, group_rows * rows, group_cols * cols, heads * head_size))


def column_projections(qkv_layer, inputs, channels):
    """The fused `qkv` layer's weights applied as three projections, one per
    third of its kernel's columns: `[q, k, v]`, each `(..., channels)`."""
    return [
        project(qkv_layer, inputs, slice(part * channels, (part + 1) * channels))
        for part in range(3)
    ]


def fused_attention(query, key, value, bias, scale):
    """`softmax(scale * q k^T + bias) v` by `ops.dot_product_attention`.

    Args:
        query, key, value: `(N, heads, T, head)`.
        bias: `(1, heads, T, T)` float32 additive bias.
        scale: The logits' scale.

    Returns:
        `(N, heads, T, head)`.
    """

    def tokens_first(x):  # (N, heads, T, head) -> (N, T, heads, head)
        return ops.transpose(x, (0, 2, 1, 3))

    out = ops.dot_product_attention(
        tokens_first(query),
        tokens_first(key),
        tokens_first(value),
        bias=ops.cast(bias, query.dtype),
        scale=scale,
    )
    return tokens_first(out)

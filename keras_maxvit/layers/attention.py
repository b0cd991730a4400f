"""Relative-position multi-head self-attention over block or grid partitions."""

import keras
import numpy as np
from keras import ops

from keras_maxvit.kernels import attention as kernels
from keras_maxvit.kernels.linear import linear
from keras_maxvit.kernels.select import use_kernel
from keras_maxvit.layers.partition import to_pair
from keras_maxvit.layers.stochastic_depth import check_rate

PARTITION_TYPES = ("block", "grid")


def relative_position_index(size) -> np.ndarray:
    """Index of each (query, key) pair's bias in a flattened bias table.

    With `(p, q) = size`, the table has shape `(2p - 1, 2q - 1)`. For query
    pixel `(i, j)` and key pixel `(k, l)` of a `p x q` window (flattened
    row-major as `i * q + j`), the bias is `table[k - i + p - 1, l - j + q - 1]`
    (key minus query), i.e. entry `(k - i + p - 1) * (2q - 1) + (l - j + q - 1)`
    of the flattened table. Returns an int32 array of shape `(p*q, p*q)`.
    """
    p, q = to_pair(size)
    rows = np.repeat(np.arange(p), q)  # row of each flattened position
    cols = np.tile(np.arange(q), p)  # column of each flattened position
    d_rows = rows[None, :] - rows[:, None] + p - 1  # key - query
    d_cols = cols[None, :] - cols[:, None] + q - 1
    return (d_rows * (2 * q - 1) + d_cols).astype("int32")


# Added to the logits of padded keys: exp() of it underflows to exactly 0 in
# float32, so padded positions get no attention weight whatever they hold.
MASK_VALUE = -1e9


def pad_to_partition(x, pad_height, pad_width):
    """Pads a `(B, H, W, C)` map at the bottom and right (with zeros)."""
    return ops.pad(x, ((0, 0), (0, pad_height), (0, pad_width), (0, 0)))


def padding_mask(height, width, size, partition_type):
    """Which tokens of each partition group are real pixels, not padding.

    The map of `height x width` is padded at the bottom/right up to multiples
    of `size = (rows, cols)`. Returns a boolean `(groups, rows * cols)`
    tensor in the order the attention layer lays out its groups and tokens.
    Sizes may be Python ints or scalar tensors (unknown static shape).
    """
    rows, cols = size
    # Ceil division of non-negative numbers only (exporters such as tf2onnx
    # turn integer floor division into truncation).
    group_rows, group_cols = (height + rows - 1) // rows, (width + cols - 1) // cols
    padded_height, padded_width = group_rows * rows, group_cols * cols
    valid = ops.logical_and(
        ops.expand_dims(ops.arange(padded_height) < height, 1),
        ops.expand_dims(ops.arange(padded_width) < width, 0),
    )
    if partition_type == "block":  # pixel (r * rows + i, c * cols + j)
        valid = ops.reshape(valid, (group_rows, rows, group_cols, cols))
        valid = ops.transpose(valid, (0, 2, 1, 3))
    else:  # pixel (i * group_rows + r, j * group_cols + c)
        valid = ops.reshape(valid, (rows, group_rows, cols, group_cols))
        valid = ops.transpose(valid, (1, 3, 0, 2))
    return ops.reshape(valid, (-1, rows * cols))


def check_partition_args(partition_type, partition_size, head_size) -> None:
    """Raises a ValueError naming the first invalid partition argument."""
    if partition_type not in PARTITION_TYPES:
        raise ValueError(
            f"`partition_type` must be one of {PARTITION_TYPES}. "
            f"Received: partition_type={partition_type!r}"
        )
    try:
        to_pair(partition_size)
    except (TypeError, ValueError):
        raise ValueError(
            "`partition_size` must be a positive integer or a pair of them. "
            f"Received: partition_size={partition_size!r}"
        ) from None
    if isinstance(head_size, bool) or not isinstance(head_size, int) or head_size < 1:
        raise ValueError(
            f"`head_size` must be a positive integer. Received: head_size={head_size!r}"
        )


@keras.saving.register_keras_serializable(package="keras_maxvit")
class RelativePositionAttention(keras.layers.Layer):
    """Max-SA: multi-head self-attention within block or grid partitions.

    Takes a channels-last feature map `(B, H, W, C)`, splits it into
    `partition_size x partition_size` groups (local windows for
    `partition_type="block"`, a dilated global grid for `"grid"`), runs
    multi-head self-attention with a learned relative-position bias inside
    each group, and returns a map of the same shape. `C` must be a multiple
    of `head_size`. `H` and `W` may be anything (also unknown, `None`): where
    they are not multiples of the partition's rows and columns, the map is
    padded at the bottom/right up to the next multiples, the padded
    positions are masked out of the softmax (no real pixel attends to them)
    and the output is cropped back, so the padding never changes the result.
    Multiples take the plain path, without padding or mask.

    The fused `qkv` projection lays out its `3 * C` outputs as
    `(3, heads, head_size)` and the bias table has shape
    `(heads, 2 * rows - 1, 2 * cols - 1)`, as in the
    official TensorFlow MaxViT weights. The bias is gathered from the table
    in every call, so the table trains.

    Args:
        partition_type: `"block"` or `"grid"`.
        partition_size: Side of a window (block) or of the grid, e.g. 7 at
            224x224 input; an int or a `(rows, cols)` pair.
        head_size: Channels per attention head.
        use_bias: Whether the qkv and output projections have biases.
        attention_dropout: Dropout rate on the attention weights.
    """

    def __init__(
        self,
        partition_type: str = "block",
        partition_size: int = 7,
        head_size: int = 32,
        use_bias: bool = True,
        attention_dropout: float = 0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_partition_args(partition_type, partition_size, head_size)
        check_rate("attention_dropout", attention_dropout)
        self.partition_type = partition_type
        # A pair comes back from JSON as a list: keep it a tuple.
        self.partition_size = (
            partition_size if isinstance(partition_size, int) else tuple(partition_size)
        )
        self._size = to_pair(partition_size)
        self.head_size = head_size
        self.use_bias = use_bias
        self.attention_dropout = attention_dropout

    def _check_input_shape(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                f"{self.__class__.__name__} expects a 4D (batch, height, "
                f"width, channels) input. Received: input_shape={input_shape}"
            )
        _, height, width, channels = input_shape
        if channels is None or channels % self.head_size != 0:
            raise ValueError(
                "The number of input channels must be a multiple of "
                f"head_size={self.head_size}. Received: input_shape={input_shape}"
            )

    def build(self, input_shape):
        self._check_input_shape(input_shape)
        channels = input_shape[-1]
        self.num_heads = channels // self.head_size
        num_tokens = self._size[0] * self._size[1]
        tokens_shape = (None, num_tokens, channels)
        self.qkv = keras.layers.Dense(
            3 * channels,
            use_bias=self.use_bias,
            dtype=self.dtype_policy,
            name="qkv",
        )
        self.qkv.build(tokens_shape)
        self.proj = keras.layers.Dense(
            channels,
            use_bias=self.use_bias,
            dtype=self.dtype_policy,
            name="proj",
        )
        self.proj.build(tokens_shape)
        self.relative_position_bias_table = self.add_weight(
            name="relative_position_bias_table",
            shape=(self.num_heads, 2 * self._size[0] - 1, 2 * self._size[1] - 1),
            initializer=keras.initializers.TruncatedNormal(stddev=0.02),
        )
        self._bias_index = relative_position_index(self._size).reshape(-1)
        self.dropout = keras.layers.Dropout(
            self.attention_dropout, dtype=self.dtype_policy, name="attn_drop"
        )
        self.built = True

    def relative_position_bias(self):
        """The `(heads, tokens, tokens)` bias added to the attention logits."""
        tokens = self._size[0] * self._size[1]
        # Gathered along the first axis (rows of the transposed table): the
        # form every exporter (ONNX, SavedModel, LiteRT) lowers to one gather.
        table = ops.reshape(self.relative_position_bias_table, (self.num_heads, -1))
        bias = ops.take(ops.transpose(table), self._bias_index, axis=0)
        return ops.reshape(ops.transpose(bias), (self.num_heads, tokens, tokens))

    def _split_groups(self, x, group_rows, group_cols):
        """`(B, H, W, C)` map -> `(N, heads, T, head)` groups of tokens.

        The map's rows and columns are `group_rows * rows` and `group_cols *
        cols`. Block: pixel `(r * rows + i, c * cols + j)`; grid: pixel
        `(i * group_rows + r, j * group_cols + c)`; group `(r, c)` of image `b`
        becomes entry `n = (b * group_rows + r) * group_cols + c`, token
        `i * cols + j`. One 6-D transpose (neighbour axes merged).
        """
        rows, cols = self._size
        heads, head_size = self.num_heads, self.head_size
        if self.partition_type == "block":  # (B * group_rows, rows, group_cols, ...)
            shape = (-1, rows, group_cols, cols, heads, head_size)
        else:  # (B, rows, group_rows, cols, group_cols * heads, head)
            shape = (-1, rows, group_rows, cols, group_cols * heads, head_size)
        x = ops.transpose(ops.reshape(x, shape), (0, 2, 4, 1, 3, 5))
        return ops.reshape(x, (-1, heads, rows * cols, head_size))

    def _query_key_value(self, inputs, pad_height, pad_width, group_rows, group_cols, kernel):
        """Query, key and value of the (padded) map, each `(N, heads, T, head)`.

        The projection is per pixel, so it runs before the padding. Every
        tensor stays at 6-D or less (LiteRT's builtin TRANSPOSE takes at most
        6 dims, so a TensorFlow model converts without Flex ops).
        """
        padded = pad_height is not None

        def pad(x):
            return pad_to_partition(x, pad_height, pad_width) if padded else x

        channels = inputs.shape[-1]
        if not kernel:
            parts = ops.split(self.qkv(inputs), 3, axis=-1)
        elif keras.backend.backend() == "torch":
            args = (self._size, self.num_heads, self.head_size, self.partition_type)
            return kernels.split_fused(pad(linear(self.qkv, inputs)), *args, group_rows, group_cols)
        else:
            parts = kernels.column_projections(self.qkv, inputs, channels)
        return [self._split_groups(pad(x), group_rows, group_cols) for x in parts]

    def _merge_groups(self, out, group_rows, group_cols, kernel):
        """Inverse of `_split_groups` for the `(N, heads, T, head)` attention
        output (with `kernel`, the "qkv" kernel's inverse on PyTorch)."""
        rows, cols = self._size
        heads, head_size = self.num_heads, self.head_size
        if kernel and keras.backend.backend() == "torch":
            args = (self._size, heads, head_size, self.partition_type)
            return kernels.merge_fused(out, *args, group_rows, group_cols)
        if self.partition_type == "block":
            shape = (-1, group_cols, heads, rows, cols, head_size)
        else:
            shape = (-1, group_rows, group_cols * heads, rows, cols, head_size)
        out = ops.transpose(ops.reshape(out, shape), (0, 3, 1, 4, 2, 5))
        return ops.reshape(out, (-1, group_rows * rows, group_cols * cols, heads * head_size))

    def _layout(self, inputs):
        """(height, width, padded, group_rows, group_cols, pad_height, pad_width)
        of a map: its size, whether it is padded to whole partitions, how many
        partitions it has and the padding (None when not padded)."""
        rows, cols = self._size
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:  # unknown until run (TensorFlow graphs)
            dynamic = ops.shape(inputs)
            height = dynamic[1] if height is None else height
            width = dynamic[2] if width is None else width
            padded = True
        else:
            padded = height % rows != 0 or width % cols != 0
        group_rows, group_cols = (height + rows - 1) // rows, (width + cols - 1) // cols
        pad_height = pad_width = None
        if padded:
            pad_height, pad_width = group_rows * rows - height, group_cols * cols - width
        return height, width, padded, group_rows, group_cols, pad_height, pad_width

    def call(self, inputs, training=None):
        height, width, padded, group_rows, group_cols, pad_height, pad_width = self._layout(inputs)
        kernel = use_kernel("qkv", inputs, self.qkv)
        query, key, value = self._query_key_value(
            inputs, pad_height, pad_width, group_rows, group_cols, kernel
        )

        dropout = bool(training) and self.attention_dropout > 0.0
        if not padded and not dropout and use_kernel("fused_attention", query):
            bias = self.relative_position_bias()[None]
            out = kernels.fused_attention(query, key, value, bias, self.head_size**-0.5)
        else:
            groups = (group_rows, group_cols)
            out = self._attend(query, key, value, padded, height, width, groups, training)

        out = self._merge_groups(out, group_rows, group_cols, kernel)
        if padded:
            out = out[:, :height, :width, :]
        return linear(self.proj, out)

    def attention_weights(self, inputs):
        """The softmax attention weights of every partition, in float32.

        `inputs` is what the layer is called on, a `(B, H, W, C)` map.
        Returns `(B, group_rows, group_cols, heads, T, T)` with `T = rows *
        cols`: entry `[b, r, c, h, t, s]` is how much token `t` of partition
        `(r, c)` attends to token `s` in head `h` (each row sums to 1; padded
        keys get 0). Tokens and partitions are laid out as `_split_groups`
        says: block partition `(r, c)` token `i * cols + j` is pixel
        `(r * rows + i, c * cols + j)`, grid partition `(r, c)` token
        `i * cols + j` is pixel `(i * group_rows + r, j * group_cols + c)`.
        Always computed through the sublayers (no kernel), without dropout.
        """
        height, width, padded, group_rows, group_cols, pad_height, pad_width = self._layout(inputs)
        query, key, _ = self._query_key_value(
            inputs, pad_height, pad_width, group_rows, group_cols, kernel=False
        )
        weights = self._softmax(query, key, padded, height, width, (group_rows, group_cols))
        tokens = self._size[0] * self._size[1]
        return ops.reshape(weights, (-1, group_rows, group_cols, self.num_heads, tokens, tokens))

    def _softmax(self, query, key, padded, height, width, groups):
        """Float32 `(N, heads, T, T)` softmax weights of `(N, heads, T, head)`
        q and k with the relative-position bias (padded keys masked out)."""
        rows, cols = self._size
        group_rows, group_cols = groups
        heads, tokens = self.num_heads, rows * cols
        query = query * ops.cast(self.head_size**-0.5, query.dtype)
        logits = ops.einsum("nhqd,nhkd->nhqk", query, key)
        # Softmax in float32 so mixed precision keeps its accuracy.
        logits = ops.cast(logits, "float32")
        bias = ops.cast(self.relative_position_bias(), "float32")[None]
        if padded:
            # (groups, T) -> a (groups, 1, 1, T) additive mask on the keys.
            mask = padding_mask(height, width, self._size, self.partition_type)
            mask = ops.where(mask, 0.0, MASK_VALUE)[:, None, None, :]
            logits = ops.reshape(logits, (-1, group_rows * group_cols, heads, tokens, tokens))
            bias = bias + mask
        weights = ops.softmax(logits + bias, axis=-1)
        return ops.reshape(weights, (-1, heads, tokens, tokens))

    def _attend(self, query, key, value, padded, height, width, groups, training):
        """Softmax attention of `(N, heads, T, head)` q, k, v with the
        relative-position bias (and the padded keys masked out)."""
        weights = self._softmax(query, key, padded, height, width, groups)
        weights = ops.cast(weights, value.dtype)
        if training and self.attention_dropout > 0.0:
            weights = self.dropout(weights, training=training)
        return ops.einsum("nhqk,nhkd->nhqd", weights, value)  # (N, heads, T, head)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "partition_type": self.partition_type,
                "partition_size": self.partition_size,
                "head_size": self.head_size,
                "use_bias": self.use_bias,
                "attention_dropout": self.attention_dropout,
            }
        )
        return config

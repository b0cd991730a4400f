"""Relative-position multi-head self-attention over block or grid partitions."""

import keras
import numpy as np
from keras import ops

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
    each group, and returns a map of the same shape. `H` and `W` must be
    multiples of the partition's rows and columns; `C` must be a multiple of `head_size`.

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
        for side, part in zip((height, width), self._size, strict=True):
            if side is not None and side % part != 0:
                raise ValueError(
                    "Input height and width must be multiples of "
                    f"partition_size={self.partition_size}. "
                    f"Received: input_shape={input_shape}"
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

    def call(self, inputs, training=None):
        _, height, width, channels = inputs.shape
        rows, cols = self._size
        group_rows, group_cols = height // rows, width // cols
        heads, head_size = self.num_heads, self.head_size
        num_tokens = rows * cols
        # The projections are per pixel, so they run on the map and the
        # partition is folded into the one transpose that splits q, k, v and
        # heads (and its inverse into the one that merges them): two
        # transposes per layer instead of four.
        qkv = self.qkv(inputs)  # (B, H, W, 3 * C) laid out as (3, heads, head)
        if self.partition_type == "block":  # pixel (r * rows + i, c * cols + j)
            qkv = ops.reshape(qkv, (-1, group_rows, rows, group_cols, cols, 3, heads, head_size))
            qkv = ops.transpose(qkv, (5, 0, 1, 3, 6, 2, 4, 7))
        else:  # pixel (i * group_rows + r, j * group_cols + c)
            qkv = ops.reshape(qkv, (-1, rows, group_rows, cols, group_cols, 3, heads, head_size))
            qkv = ops.transpose(qkv, (5, 0, 2, 4, 6, 1, 3, 7))
        # (3, B, group_rows, group_cols, heads, rows, cols, head) -> (3, N, heads, T, head)
        qkv = ops.reshape(qkv, (3, -1, heads, num_tokens, head_size))
        query, key, value = qkv[0], qkv[1], qkv[2]

        query = query * ops.cast(head_size**-0.5, query.dtype)
        logits = ops.matmul(query, ops.transpose(key, (0, 1, 3, 2)))
        bias = ops.cast(self.relative_position_bias(), "float32")
        # Softmax in float32 so mixed precision keeps its accuracy.
        weights = ops.softmax(ops.cast(logits, "float32") + bias[None], axis=-1)
        weights = self.dropout(ops.cast(weights, value.dtype), training=training)
        out = ops.matmul(weights, value)  # (N, heads, T, head)

        out = ops.reshape(out, (-1, group_rows, group_cols, heads, rows, cols, head_size))
        if self.partition_type == "block":
            out = ops.transpose(out, (0, 1, 4, 2, 5, 3, 6))
        else:
            out = ops.transpose(out, (0, 4, 1, 5, 2, 3, 6))
        out = ops.reshape(out, (-1, height, width, channels))
        return self.proj(out)

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

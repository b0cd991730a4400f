"""The pre-norm transformer layer around block or grid attention."""

import keras

from keras_maxvit.kernels.activation import gelu_tanh_of_new
from keras_maxvit.kernels.linear import linear
from keras_maxvit.layers.attention import (
    RelativePositionAttention,
    check_partition_args,
)
from keras_maxvit.layers.remat import check_remat, remat_call
from keras_maxvit.layers.stochastic_depth import StochasticDepth, check_rate, drop_path


@keras.saving.register_keras_serializable(package="keras_maxvit")
class PartitionAttentionBlock(keras.layers.Layer):
    """`x + Attn(LN(x))`, then `x + MLP(LN(x))`, on a `(B, H, W, C)` map.

    `Attn` is `RelativePositionAttention` over block or grid partitions;
    the MLP is `Dense(C * mlp_ratio) -> GELU(tanh) -> Dense(C)`. Both
    residual branches go through stochastic depth.

    Args:
        partition_type: `"block"` or `"grid"`.
        partition_size: Window (block) or grid side.
        head_size: Channels per attention head.
        mlp_ratio: Hidden width of the MLP relative to the channels.
        drop_path_rate: Stochastic depth rate of both residual branches.
        epsilon: LayerNormalization epsilon.
        seed: Optional seed of the stochastic depth.
        remat: If True, the block's activations are recomputed in the
            backward pass of training instead of being kept.
    """

    def __init__(
        self,
        partition_type: str = "block",
        partition_size: int = 7,
        head_size: int = 32,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        epsilon: float = 1e-5,
        seed: int | None = None,
        remat: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if mlp_ratio <= 0:
            raise ValueError(f"`mlp_ratio` must be positive. Received: mlp_ratio={mlp_ratio}")
        self.partition_type = partition_type
        # A pair comes back from JSON as a list: keep it a tuple.
        self.partition_size = (
            partition_size if isinstance(partition_size, int) else tuple(partition_size)
        )
        self.head_size = head_size
        self.mlp_ratio = mlp_ratio
        self.drop_path_rate = drop_path_rate
        self.epsilon = epsilon
        self.seed = seed
        self.remat = check_remat(remat)
        check_partition_args(partition_type, partition_size, head_size)
        check_rate("drop_path_rate", drop_path_rate)

    def build(self, input_shape):
        channels = input_shape[-1]
        hidden_shape = tuple(input_shape[:-1]) + (int(channels * self.mlp_ratio),)

        def norm(name):
            layer = keras.layers.LayerNormalization(
                epsilon=self.epsilon, dtype=self.dtype_policy, name=name
            )
            layer.build(input_shape)
            return layer

        self.norm1 = norm("norm1")
        self.attn = RelativePositionAttention(
            partition_type=self.partition_type,
            partition_size=self.partition_size,
            head_size=self.head_size,
            dtype=self.dtype_policy,
            name="attn",
        )
        self.attn.build(input_shape)
        self.norm2 = norm("norm2")
        self.mlp_fc1 = keras.layers.Dense(hidden_shape[-1], dtype=self.dtype_policy, name="mlp_fc1")
        self.mlp_fc1.build(input_shape)
        self.mlp_fc2 = keras.layers.Dense(channels, dtype=self.dtype_policy, name="mlp_fc2")
        self.mlp_fc2.build(hidden_shape)
        seed2 = None if self.seed is None else self.seed + 1
        self.drop_path1 = StochasticDepth(
            self.drop_path_rate, seed=self.seed, dtype=self.dtype_policy, name="drop_path1"
        )
        self.drop_path1.build(input_shape)
        self.drop_path2 = StochasticDepth(
            self.drop_path_rate, seed=seed2, dtype=self.dtype_policy, name="drop_path2"
        )
        self.drop_path2.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        if self.remat and training:
            return remat_call(self, lambda x: self._forward(x, True), inputs)
        return self._forward(inputs, training)

    def _forward(self, inputs, training):
        attended = self.attn(self.norm1(inputs), training=training)
        x = inputs + drop_path(self.drop_path1, attended, training)
        hidden = gelu_tanh_of_new(linear(self.mlp_fc1, self.norm2(x)))
        return x + drop_path(self.drop_path2, linear(self.mlp_fc2, hidden), training)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "partition_type": self.partition_type,
                "partition_size": self.partition_size,
                "head_size": self.head_size,
                "mlp_ratio": self.mlp_ratio,
                "drop_path_rate": self.drop_path_rate,
                "epsilon": self.epsilon,
                "seed": self.seed,
                "remat": self.remat,
            }
        )
        return config

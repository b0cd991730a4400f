"""MBConv: the convolutional part of every MaxViT block."""

import keras
from keras import ops

from keras_maxvit.kernels.activation import gelu_tanh_of_new
from keras_maxvit.kernels.batch_norm import batch_norm, batch_norm_affine, expand
from keras_maxvit.kernels.batch_norm import uses_moving_statistics as moving
from keras_maxvit.kernels.channels_first import average_pool
from keras_maxvit.kernels.depthwise import depthwise, depthwise_conv
from keras_maxvit.kernels.linear import linear
from keras_maxvit.kernels.select import use_kernel
from keras_maxvit.layers.remat import check_remat, remat_call
from keras_maxvit.layers.stochastic_depth import StochasticDepth, check_rate, drop_path


def check_synchronized(synchronized, argument: str = "synchronized") -> bool:
    """Validates a `synchronized` BatchNorm flag: a bool, True only on TensorFlow."""
    if not isinstance(synchronized, bool):
        raise TypeError(
            f"`{argument}` must be True or False. Received: {argument}={synchronized!r}"
        )
    backend = keras.backend.backend()
    if synchronized and backend != "tensorflow":
        raise ValueError(
            f"`{argument}=True` needs the TensorFlow backend: Keras synchronizes "
            "BatchNormalization statistics across replicas of a tf.distribute strategy only "
            "(JAX's DataParallel already normalizes over the global batch). "
            f"Received: {argument}={synchronized!r} with KERAS_BACKEND={backend}"
        )
    return synchronized


@keras.saving.register_keras_serializable(package="keras_maxvit")
class MBConv(keras.layers.Layer):
    """Pre-norm inverted-bottleneck conv block with squeeze-excite.

    `BN -> 1x1 conv (filters * expand_ratio) -> BN -> GELU -> 3x3 depthwise
    conv (stride `strides`) -> BN -> GELU -> squeeze-excite -> 1x1 conv
    (filters) -> stochastic depth`, added to a shortcut. With `strides=2`
    the shortcut is a 2x2 average pool (then a 1x1 conv when the channel
    count changes); otherwise it is the identity, which needs the input to
    have `filters` channels. Stride-2 convs and pools use TensorFlow "same"
    padding, as the official weights do.

    Args:
        filters: Output channels.
        strides: 1 or 2.
        expand_ratio: Width of the inverted bottleneck relative to `filters`.
        se_ratio: Hidden width of squeeze-excite relative to `filters`.
        drop_path_rate: Stochastic depth rate of the residual branch.
        epsilon: BatchNormalization epsilon.
        seed: Optional seed of the stochastic depth.
        remat: If True, the block's activations are recomputed in the
            backward pass of training instead of being kept (less memory,
            about one more forward pass of compute).
        momentum: BatchNormalization momentum of the moving statistics
            (Keras' default 0.99; `keras-maxvit fit` from scratch uses 0.9).
        synchronized: If True, the BatchNormalizations compute their batch
            statistics over all replicas of a `tf.distribute` strategy
            (TensorFlow backend only, as in Keras).
    """

    def __init__(
        self,
        filters: int,
        strides: int = 1,
        expand_ratio: float = 4.0,
        se_ratio: float = 0.25,
        drop_path_rate: float = 0.0,
        epsilon: float = 1e-3,
        seed: int | None = None,
        remat: bool = False,
        momentum: float = 0.99,
        synchronized: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or filters < 1:
            raise ValueError(f"`filters` must be a positive integer. Received: filters={filters!r}")
        if strides not in (1, 2):
            raise ValueError(f"`strides` must be 1 or 2. Received: strides={strides!r}")
        if expand_ratio <= 0 or se_ratio <= 0:
            raise ValueError(
                "`expand_ratio` and `se_ratio` must be positive. Received: "
                f"expand_ratio={expand_ratio}, se_ratio={se_ratio}"
            )
        self.filters = filters
        self.strides = strides
        self.expand_ratio = expand_ratio
        self.se_ratio = se_ratio
        self.drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
        self.epsilon = epsilon
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)):
            raise TypeError(f"`momentum` must be a number. Received: momentum={momentum!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`momentum` must be in [0, 1]. Received: momentum={momentum!r}")
        self.momentum = float(momentum)
        self.synchronized = check_synchronized(synchronized)
        self.seed = seed
        self.remat = check_remat(remat)

    def _bn(self, name):
        return keras.layers.BatchNormalization(
            momentum=self.momentum,
            epsilon=self.epsilon,
            synchronized=self.synchronized,
            dtype=self.dtype_policy,
            name=name,
        )

    def _conv(self, filters, name, use_bias=True):
        return keras.layers.Conv2D(
            filters,
            1,
            use_bias=use_bias,
            dtype=self.dtype_policy,
            name=name,
        )

    def build(self, input_shape):
        if len(input_shape) != 4:
            raise ValueError(
                "MBConv expects a 4D (batch, height, width, channels) input. "
                f"Received: input_shape={input_shape}"
            )
        in_channels = input_shape[-1]
        if self.strides == 1 and in_channels != self.filters:
            raise ValueError(
                "With strides=1 the input must have `filters` channels "
                f"(filters={self.filters}). Received: input_shape={input_shape}"
            )
        batch, height, width, _ = input_shape
        mid = int(self.filters * self.expand_ratio)
        se_width = int(self.filters * self.se_ratio)
        out_height = None if height is None else -(-height // self.strides)
        out_width = None if width is None else -(-width // self.strides)
        mid_in = (batch, height, width, mid)
        mid_out = (batch, out_height, out_width, mid)

        self.pre_norm = self._bn("pre_norm")
        self.pre_norm.build(input_shape)
        self.conv1_1x1 = self._conv(mid, "conv1_1x1", use_bias=False)
        self.conv1_1x1.build(input_shape)
        self.norm1 = self._bn("norm1")
        self.norm1.build(mid_in)
        self.conv2_kxk = keras.layers.DepthwiseConv2D(
            3,
            strides=self.strides,
            padding="same",
            use_bias=False,
            dtype=self.dtype_policy,
            name="conv2_kxk",
        )
        self.conv2_kxk.build(mid_in)
        self.norm2 = self._bn("norm2")
        self.norm2.build(mid_out)
        self.se_fc1 = self._conv(se_width, "se_fc1")
        self.se_fc1.build((batch, 1, 1, mid))
        self.se_fc2 = self._conv(mid, "se_fc2")
        self.se_fc2.build((batch, 1, 1, se_width))
        self.conv3_1x1 = self._conv(self.filters, "conv3_1x1")
        self.conv3_1x1.build(mid_out)
        self.drop_path = StochasticDepth(
            self.drop_path_rate, seed=self.seed, dtype=self.dtype_policy, name="drop_path"
        )
        self.drop_path.build((batch, out_height, out_width, self.filters))

        self.shortcut_pool = None
        self.shortcut_expand = None
        if self.strides == 2:
            self.shortcut_pool = keras.layers.AveragePooling2D(
                2, strides=2, padding="same", dtype=self.dtype_policy, name="shortcut_pool"
            )
            if in_channels != self.filters:
                self.shortcut_expand = self._conv(self.filters, "shortcut_expand")
                self.shortcut_expand.build((batch, out_height, out_width, in_channels))
        self.built = True

    def call(self, inputs, training=None):
        if self.remat and training:
            return remat_call(self, lambda x: self._forward(x, True), inputs)
        return self._forward(inputs, training)

    def _forward(self, inputs, training):
        shortcut = inputs
        if self.shortcut_pool is not None:
            shortcut = average_pool(self.shortcut_pool, shortcut)
        if self.shortcut_expand is not None:
            shortcut = linear(self.shortcut_expand, shortcut)

        x = gelu_tanh_of_new(self._expand(inputs, training))
        x = gelu_tanh_of_new(self._depthwise(x, training))

        scale = ops.mean(x, axis=(1, 2), keepdims=True)
        scale = ops.silu(linear(self.se_fc1, scale))
        x = x * ops.sigmoid(linear(self.se_fc2, scale))

        x = linear(self.conv3_1x1, x)
        return shortcut + drop_path(self.drop_path, x, training)

    def _expand(self, inputs, training):
        """`norm1(conv1_1x1(pre_norm(inputs)))`."""
        norms = (self.pre_norm, self.norm1)
        foldable = any(moving(norm, training) for norm in norms)
        if foldable and use_kernel("fold_batch_norm", inputs, *norms, self.conv1_1x1):
            return expand(self.pre_norm, self.conv1_1x1, self.norm1, inputs, training)
        x = batch_norm(self.pre_norm, inputs, training)
        return batch_norm(self.norm1, linear(self.conv1_1x1, x), training)

    def _depthwise(self, x, training):
        """`norm2(conv2_kxk(x))`."""
        norm, conv = self.norm2, self.conv2_kxk
        if moving(norm, training) and use_kernel("fold_batch_norm", x, conv, norm):
            scale, offset = batch_norm_affine(norm)
            kernel = ops.cast(ops.cast(conv.kernel, "float32") * scale[:, None], x.dtype)
            return depthwise_conv(x, kernel, self.strides, bias=offset)
        return batch_norm(norm, depthwise(conv, x), training)

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape
        if self.strides == 2:
            height = None if height is None else -(-height // 2)
            width = None if width is None else -(-width // 2)
        return (batch, height, width, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "strides": self.strides,
                "expand_ratio": self.expand_ratio,
                "se_ratio": self.se_ratio,
                "drop_path_rate": self.drop_path_rate,
                "epsilon": self.epsilon,
                "momentum": self.momentum,
                "synchronized": self.synchronized,
                "seed": self.seed,
                "remat": self.remat,
            }
        )
        return config

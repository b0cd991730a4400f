"""Stochastic depth (drop path) for residual branches."""

import keras
from keras import ops


def check_rate(arg_name: str, value) -> float:
    """Returns `value` as a float, or raises if it is not a rate in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value < 1.0):
        raise ValueError(f"`{arg_name}` must be a number in [0, 1). Received: {arg_name}={value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="keras_maxvit")
class StochasticDepth(keras.layers.Layer):
    """Drops a whole residual branch per sample during training.

    Each sample of the batch is kept with probability `1 - rate` and, when
    kept, scaled by `1 / (1 - rate)`, so the expected output equals the input.
    At inference the layer is the identity. Randomness comes from a
    `keras.random.SeedGenerator`, so it works inside `jit` on JAX and in `fit`
    on every backend.

    Args:
        rate: Probability of dropping the branch, in `[0, 1)`.
        seed: Optional integer seed for reproducible masks.
    """

    def __init__(self, rate: float = 0.0, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.rate = check_rate("rate", rate)
        self.seed = seed
        self.supports_masking = True

    def build(self, input_shape):
        if self.rate > 0.0:
            self.seed_generator = keras.random.SeedGenerator(self.seed)
        self.built = True

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        batch = ops.shape(inputs)[0]
        mask_shape = (batch,) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(mask_shape, seed=self.seed_generator, dtype=inputs.dtype)
        mask = ops.cast(noise < keep, inputs.dtype)
        return inputs * mask / ops.cast(keep, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"rate": self.rate, "seed": self.seed})
        return config


def drop_path(layer, x, training):
    """`layer(x, training=training)` for a `StochasticDepth` layer, skipping
    the call (and its per-call overhead in eager PyTorch) where it is the
    identity."""
    if training and layer.rate > 0.0:
        return layer(x, training=training)
    return x

"""Activation used throughout MaxViT."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_maxvit")
def gelu_tanh(x):
    """GELU with the tanh approximation, as in the official MaxViT weights."""
    return ops.gelu(x, approximate=True)

"""keras-maxvit: MaxViT (Multi-Axis Vision Transformer) for Keras 3."""

from keras_maxvit import distributed, explain, kernels, layers
from keras_maxvit.imagenet import decode_predictions, preprocess_input
from keras_maxvit.kernels import get_kernels, set_kernels
from keras_maxvit.models.backbone import MaxViTBackbone as MaxViTBackbone
from keras_maxvit.models.maxvit import (
    MODEL_CONFIGS,
    MaxViT,
    MaxViTBase,
    MaxViTLarge,
    MaxViTSmall,
    MaxViTTiny,
    MaxViTXLarge,
)

__version__ = "0.1.0"

__all__ = [
    "MODEL_CONFIGS",
    "MaxViT",
    "MaxViTBase",
    "MaxViTLarge",
    "MaxViTSmall",
    "MaxViTTiny",
    "MaxViTXLarge",
    "decode_predictions",
    "distributed",
    "explain",
    "get_kernels",
    "kernels",
    "layers",
    "preprocess_input",
    "set_kernels",
]

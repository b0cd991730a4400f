"""MaxViT layers, written with `keras.ops` only."""

from keras_maxvit.layers.activations import gelu_tanh
from keras_maxvit.layers.attention import (
    RelativePositionAttention,
    relative_position_index,
)
from keras_maxvit.layers.conv import StemConv2D
from keras_maxvit.layers.mbconv import MBConv
from keras_maxvit.layers.partition import (
    block_partition,
    block_reverse,
    grid_partition,
    grid_reverse,
)
from keras_maxvit.layers.stochastic_depth import StochasticDepth
from keras_maxvit.layers.transformer import PartitionAttentionBlock

__all__ = [
    "MBConv",
    "PartitionAttentionBlock",
    "RelativePositionAttention",
    "StemConv2D",
    "StochasticDepth",
    "block_partition",
    "block_reverse",
    "gelu_tanh",
    "grid_partition",
    "grid_reverse",
    "relative_position_index",
]

"""Block and grid attention weights of a keras_maxvit model, in image coordinates."""

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from keras_maxvit.explain import _graph
from keras_maxvit.layers.transformer import PartitionAttentionBlock


@dataclass
class AttentionMaps:
    """Where chosen query pixels look, in one block or grid attention layer.

    Attributes:
        maps: `(batch, queries, heads, height, width)` at image resolution:
            the attention weight the query gives the key that covers each
            image pixel (every key is a `stride x stride` patch of the
            image). Pixels outside the query's partition are 0: a block
            attention query sees its window, a grid attention query the
            dilated grid across the image. Padded keys (odd sizes) are
            left out. Summed over the keys of the feature map (one pixel per
            patch), each head's weights are 1.
        queries: `(queries, 2)` the `(y, x)` image pixels asked about.
        layer: The attention layer's name.
        partition_type: `"block"` or `"grid"`.
        stride: Image pixels per feature-map pixel along each side.
    """

    maps: np.ndarray
    queries: np.ndarray
    layer: str
    partition_type: str
    stride: int

    def mean(self) -> np.ndarray:
        """`(batch, queries, height, width)`: the maps averaged over heads."""
        return self.maps.mean(axis=2)


def attention_layer_names(model) -> list[str]:
    """Names of the model's block and grid attention layers, in order."""
    return [layer.name for layer in model.layers if isinstance(layer, PartitionAttentionBlock)]


def _attention_block(model, layer):
    names = attention_layer_names(model)
    if layer is None:
        raise ValueError(f"`layer` must name an attention layer, e.g. {names[:2]}. Received: None")
    found = _graph.find_layer(model, layer, "a block or grid attention layer", names)
    if not isinstance(found, PartitionAttentionBlock):
        raise ValueError(
            f"`layer` must name a block or grid attention layer, e.g. {names[:2]}. "
            f"Received: layer={layer!r}, a {type(found).__name__}"
        )
    return found


def attention_weights(model, images, layer: str):
    """The softmax weights of one attention layer, for every partition.

    Args:
        model: A functional keras_maxvit model (also one loaded from a
            `.keras` file).
        images: `(batch, height, width, 3)` images as the model takes them.
        layer: The name of a block or grid attention layer, e.g.
            `"stage2_block0_block_attn"` (see `attention_layer_names`).

    Returns:
        `(weights, layer)`: float32 NumPy weights of shape `(batch,
        group_rows, group_cols, heads, T, T)` as
        `RelativePositionAttention.attention_weights` lays them out, and the
        `PartitionAttentionBlock` layer itself.
    """
    _graph.check_model(model)
    weights, block, _ = _weights(model, _graph.check_images(model, images), layer)
    return weights, block


def _weights(model, images, layer):
    """(weights, block, (height, width) of the block's input map) of checked images."""
    block = _attention_block(model, layer)
    trunk = keras.Model(model.inputs[0], block.input)

    def run(x):
        inputs = trunk(x, training=False)
        # A one-pixel-deep slice: its shape is the map's (static under jit).
        return block.attn.attention_weights(block.norm1(inputs)), inputs[:1, :, :, :1]

    weights, inputs = _graph.compiled(run, model.variables)(images)
    weights = np.asarray(ops.convert_to_numpy(weights), dtype="float32")
    return weights, block, (int(inputs.shape[1]), int(inputs.shape[2]))


def _stride(image_side: int, feature_side: int) -> int:
    """The power of 2 that takes an image side to the feature side ('same' strides)."""
    stride = 1
    while -(-image_side // stride) > feature_side:
        stride *= 2
    if -(-image_side // stride) != feature_side:
        raise ValueError(
            f"The layer's map side {feature_side} is not the image side {image_side} over a "
            "power of 2: the layer is not on the model's stride-2 pyramid"
        )
    return stride


def _check_queries(queries, height: int, width: int) -> np.ndarray:
    if queries is None:
        return np.array([[height // 2, width // 2]])
    points = np.asarray(queries)
    if points.ndim == 1:
        points = points[None]
    if (
        points.ndim != 2
        or points.shape[1] != 2
        or not np.issubdtype(points.dtype, np.integer)
        or (points < 0).any()
        or (points[:, 0] >= height).any()
        or (points[:, 1] >= width).any()
    ):
        raise ValueError(
            "`queries` must be integer (y, x) pixels inside the "
            f"{height}x{width} image. Received: queries={queries!r}"
        )
    return points.astype("int64")


def attention_maps(model, images, layer: str, queries=None) -> AttentionMaps:
    """What each query pixel attends to in one block or grid attention layer.

    Args:
        model: A functional keras_maxvit model; any input size it accepts.
        images: `(batch, height, width, 3)` images as the model takes them.
        layer: A block or grid attention layer, e.g.
            `"stage2_block0_grid_attn"`.
        queries: `(y, x)` image pixels, one pair or a list of them
            (default: the image centre). Each is the feature-map pixel that
            covers it.

    Returns:
        An `AttentionMaps`.
    """
    _graph.check_model(model)
    images = _graph.check_images(model, images)
    height, width = images.shape[1:3]
    points = _check_queries(queries, height, width)
    weights, block, (feature_height, feature_width) = _weights(model, images, layer)
    stride = _stride(height, feature_height)
    if _stride(width, feature_width) != stride:
        raise ValueError("The layer's map is not the image over one stride on both sides")
    _, group_rows, group_cols, heads, _, _ = weights.shape
    rows, cols = block.attn._size
    batch = weights.shape[0]
    maps = np.zeros((batch, len(points), heads, height, width), dtype="float32")
    for q, (y, x) in enumerate(points):
        fy, fx = y // stride, x // stride
        canvas = np.zeros((batch, heads, group_rows * rows, group_cols * cols), dtype="float32")
        if block.partition_type == "block":
            r, c, token = fy // rows, fx // cols, (fy % rows) * cols + fx % cols
            keys = weights[:, r, c, :, token].reshape(batch, heads, rows, cols)
            canvas[:, :, r * rows : (r + 1) * rows, c * cols : (c + 1) * cols] = keys
        else:
            r, c = fy % group_rows, fx % group_cols
            token = (fy // group_rows) * cols + fx // group_cols
            keys = weights[:, r, c, :, token].reshape(batch, heads, rows, cols)
            canvas[:, :, r::group_rows, c::group_cols] = keys
        canvas = canvas[:, :, :feature_height, :feature_width]  # padding out
        image = np.repeat(np.repeat(canvas, stride, axis=2), stride, axis=3)
        maps[:, q] = image[:, :, :height, :width]
    return AttentionMaps(
        maps=maps,
        queries=points,
        layer=block.name,
        partition_type=block.partition_type,
        stride=stride,
    )

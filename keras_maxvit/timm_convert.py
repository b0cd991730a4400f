"""Map timm `maxvit_*_tf_*` checkpoints onto keras_maxvit models.

Every Keras weight is named by its variable path (e.g.
`stage1_block0_block_attn/attn/qkv/kernel`); `timm_key` turns that path into
the one checkpoint key it comes from (`stages.1.blocks.0.attn_block.attn.qkv.
weight`) and the name of the transform that converts the PyTorch layout to the
Keras one.
"""

import re

import numpy as np

# Keras variable name -> timm parameter/buffer name.
_VARIABLE_NAMES = {
    "kernel": "weight",
    "bias": "bias",
    "gamma": "weight",
    "beta": "bias",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
    "relative_position_bias_table": "rel_pos.relative_position_bias_table",
}

# Top-level Keras layers that are not inside a stage block.
_TOP_LAYERS = {
    "stem_conv1": "stem.conv1",
    "stem_norm1": "stem.norm1",
    "stem_conv2": "stem.conv2",
    "head_norm": "head.norm",
    "head_pre_logits": "head.pre_logits.fc",
    "predictions": "head.fc",
}

# Sublayers of MBConv / PartitionAttentionBlock whose timm name differs.
_SUBLAYERS = {
    "se_fc1": "se.fc1",
    "se_fc2": "se.fc2",
    "shortcut_expand": "shortcut.expand",
    "mlp_fc1": "mlp.fc1",
    "mlp_fc2": "mlp.fc2",
}

_BLOCK_LAYER = re.compile(r"^stage(\d+)_block(\d+)_(mbconv|block_attn|grid_attn)$")
_BLOCK_PART = {"mbconv": "conv", "block_attn": "attn_block", "grid_attn": "attn_grid"}

# Named transforms from a timm (PyTorch) tensor to the Keras layout.
TRANSFORMS = {
    "identity": lambda t: t,
    # Linear (out, in) -> Dense (in, out).
    "linear": lambda t: np.transpose(t),
    # Conv2d (out, in, kh, kw) -> Conv2D (kh, kw, in, out).
    "conv": lambda t: np.transpose(t, (2, 3, 1, 0)),
    # Depthwise Conv2d (C, 1, kh, kw) -> DepthwiseConv2D (kh, kw, C, 1).
    "depthwise": lambda t: np.transpose(t, (2, 3, 0, 1)),
}


def timm_key(path: str, ndim: int) -> tuple[str, str]:
    """The timm checkpoint key and transform name of a Keras variable.

    Args:
        path: The variable's path, e.g. `stem_conv1/kernel`.
        ndim: The variable's rank (picks the kernel transform).
    """
    parts = path.split("/")
    layer, sublayers, variable = parts[0], parts[1:-1], parts[-1]
    match = _BLOCK_LAYER.match(layer)
    if variable not in _VARIABLE_NAMES or not (
        (layer in _TOP_LAYERS and not sublayers) or (match and sublayers)
    ):
        raise KeyError(f"No timm counterpart for the Keras weight {path!r}")
    if match is None:
        prefix = _TOP_LAYERS[layer]
    else:
        stage, block, part = match.groups()
        names = [_SUBLAYERS.get(s, s) for s in sublayers]
        prefix = ".".join([f"stages.{stage}.blocks.{block}", _BLOCK_PART[part], *names])
    key = f"{prefix}.{_VARIABLE_NAMES[variable]}"

    if variable != "kernel":
        return key, "identity"
    if ndim == 2:
        return key, "linear"
    if sublayers and sublayers[-1] == "conv2_kxk":
        return key, "depthwise"
    return key, "conv"

"""Map timm `maxvit_*_tf_*` checkpoints onto keras_maxvit models.

Every Keras weight is named by its variable path (e.g.
`stage1_block0_block_attn/attn/qkv/kernel`); `timm_key` turns that path into
the one checkpoint key it comes from (`stages.1.blocks.0.attn_block.attn.qkv.
weight`), and `timm_transform` names the transform that takes that tensor
from the PyTorch layout to the Keras one.
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

# Checkpoint entries that have no Keras counterpart by design.
IGNORED_SUFFIXES = ("num_batches_tracked",)


def is_maxvit_layer(name: str) -> bool:
    """Whether a top-level layer name is one of a MaxViT's weighted layers."""
    return name in _TOP_LAYERS or _BLOCK_LAYER.match(name) is not None


def timm_key(path: str) -> str:
    """The timm checkpoint key of a Keras variable path.

    `stage1_block0_block_attn/attn/qkv/kernel` ->
    `stages.1.blocks.0.attn_block.attn.qkv.weight`.
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
    return f"{prefix}.{_VARIABLE_NAMES[variable]}"


def timm_transform(key: str, ndim: int) -> str:
    """The name of the transform that takes timm tensor `key` to Keras."""
    if not key.endswith(".weight") or ndim == 1:
        return "identity"
    if ndim == 2:
        return "linear"
    if key.split(".")[-2:-1] == ["conv2_kxk"]:
        return "depthwise"
    return "conv"


def convert_state_dict(state_dict) -> dict[str, np.ndarray]:
    """A timm state dict with every tensor in the Keras layout (same keys)."""
    converted = {}
    for key, tensor in state_dict.items():
        if key.endswith(IGNORED_SUFFIXES):
            continue
        tensor = np.asarray(tensor)
        converted[key] = TRANSFORMS[timm_transform(key, tensor.ndim)](tensor)
    return converted


def _progression_positions(source: int, target: int) -> np.ndarray:
    """Source sample positions of timm's geometric bias-table resize.

    The `source` table entries are placed at offsets that grow geometrically
    away from the centre (ratio found by bisection) so that they span the
    `target` table; this is BEiT's scheme as timm's `resize_rel_pos_bias_table`
    implements it.
    """
    left, right = 1.01, 1.5
    ratio = left
    while right - left > 1e-6:
        ratio = (left + right) / 2.0
        progression = (1.0 - ratio ** (source // 2)) / (1.0 - ratio)
        if progression > target // 2:
            right = ratio
        else:
            left = ratio
    offsets, current = [], 1.0
    for i in range(source // 2):
        offsets.append(current)
        current += ratio ** (i + 1)
    return np.array([-d for d in reversed(offsets)] + [0.0] + offsets)


def resize_bias_table(table: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Resizes a `(heads, 2P-1, 2Q-1)` relative-position bias table as timm does.

    Used when a checkpoint is loaded at another input resolution (another
    window size): the table is resampled on the geometric positions of
    `_progression_positions` with bilinear interpolation, clamped at the
    edges, per head.
    """
    heads, source_h, source_w = table.shape
    if shape[0] != heads:
        raise ValueError(f"Cannot resize a bias table of {heads} heads to shape {shape}")
    _, target_h, target_w = shape
    if (source_h, source_w) == (target_h, target_w):
        return table
    rows_at = _progression_positions(source_h, target_h)
    cols_at = _progression_positions(source_w, target_w)
    target_rows = np.arange(-(target_h // 2), target_h // 2 + 0.1, 1.0)
    target_cols = np.arange(-(target_w // 2), target_w // 2 + 0.1, 1.0)
    out = np.empty((heads, target_h, target_w), dtype=np.float64)
    for head in range(heads):
        values = table[head].astype(np.float64)
        by_rows = np.stack([np.interp(target_cols, cols_at, row) for row in values])
        out[head] = np.stack([np.interp(target_rows, rows_at, col) for col in by_rows.T], axis=1)
    return out.astype(table.dtype)

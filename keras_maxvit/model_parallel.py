"""Model parallelism for the large MaxViT variants: a `keras.distribution.LayoutMap`.

`get_layout_map` shards the big kernels of every block over the model axis of
a `("batch", "model")` device mesh, Megatron style: in each pair of
projections the first is split on its output channels and the second on its
input channels, so the activation between them stays split and the pair costs
one all-reduce (of the second's partial sums). `ModelParallel` (JAX) splits
the batch over the batch axis and replicates every weight there.

Sharded, for the variable paths of `MaxViT(...)`, the `MaxViTTiny`...
constructors and the keras-hub `MaxViTBackbone` / `MaxViTImageClassifier`
(the paths are the same, with or without an enclosing model's prefix):

| variable (`stage{i}_block{j}_...`)      | shape            | split on        |
|-----------------------------------------|------------------|-----------------|
| `_mbconv/conv1_1x1/kernel` (expand)     | (1, 1, Cin, 4C)  | output (4C)     |
| `_mbconv/se_fc1/kernel`                 | (1, 1, 4C, C/4)  | input (4C)      |
| `_mbconv/se_fc2/kernel`, `/bias`        | (1, 1, C/4, 4C)  | output (4C)     |
| `_mbconv/conv3_1x1/kernel` (project)    | (1, 1, 4C, C)    | input (4C)      |
| `_{block,grid}_attn/attn/qkv/kernel`, `/bias` | (C, 3C) | output (3C)     |
| `_{block,grid}_attn/attn/proj/kernel`   | (C, C)           | input (C)       |
| `_{block,grid}_attn/mlp_fc1/kernel`, `/bias` | (C, 4C) | output (4C)     |
| `_{block,grid}_attn/mlp_fc2/kernel`     | (4C, C)          | input (4C)      |
| `head_pre_logits/kernel`, `/bias`       | (C, H)           | output (H)      |
| `predictions/kernel`                    | (H, classes)     | input (H)       |

The squeeze-excite pair is split on the expanded width (4C), the dimension
the expand conv splits, so the MBConv's inner activation never needs to be
gathered; its narrow C/4 side is tiny. The classifier is split on its input,
so any number of classes works. The fused qkv output (q, k, v side by side)
is split in contiguous blocks, not by head: XLA regroups the heads for the
attention with collectives of its own choosing. Replicated (small): the stem, every norm, the
depthwise kernels, the relative position bias tables, the biases of the
input-split layers (added after the all-reduce), the shortcut 1x1 convs and
everything else. Optimizer slots (momenta) take the layout of their variable.

Divisibility: as with keras-hub's layout maps, nothing is checked here; JAX
raises (`IndivisibleError`) when a variable is created whose split dimension
is not a multiple of the model-axis size. The split
dimensions here are stage widths C (or multiples of them) and the head width
H, so every official variant (C and H multiples of 32) splits over 2, 4, 8, 16
or 32 devices; for a custom configuration the model-axis size must divide
every stage width and `head_hidden_size` (or the last width without it).
"""

import keras

# (regex on the variable path, which axis is split): "output" is the last
# axis of the kernel, "input" the one before it; a bias has one axis. Each
# pattern is matched whole (`re.fullmatch`, as LayoutMap does); the optional
# prefix is that of an enclosing model.
_PREFIX = r"(?:.*/)?"
_BLOCK = _PREFIX + r"stage\d+_block\d+"
_MBCONV = _BLOCK + r"_mbconv/"
_ATTN = _BLOCK + r"_(?:block|grid)_attn/"
RULES = (
    (_MBCONV + r"conv1_1x1/kernel", "output"),
    (_MBCONV + r"se_fc1/kernel", "input"),
    (_MBCONV + r"se_fc2/kernel", "output"),
    (_MBCONV + r"se_fc2/bias", "bias"),
    (_MBCONV + r"conv3_1x1/kernel", "input"),
    (_ATTN + r"attn/qkv/kernel", "output"),
    (_ATTN + r"attn/qkv/bias", "bias"),
    (_ATTN + r"attn/proj/kernel", "input"),
    (_ATTN + r"mlp_fc1/kernel", "output"),
    (_ATTN + r"mlp_fc1/bias", "bias"),
    (_ATTN + r"mlp_fc2/kernel", "input"),
    (_PREFIX + r"head_pre_logits/kernel", "output"),
    (_PREFIX + r"head_pre_logits/bias", "bias"),
    (_PREFIX + r"predictions/kernel", "input"),
)


def _axes(pattern: str, split: str, model_axis: str) -> tuple:
    """The layout axes of one rule: 1x1 conv kernels are 4-D, Dense ones 2-D."""
    if split == "bias":
        return (model_axis,)
    rank = 4 if "_mbconv/" in pattern else 2
    axes = [None] * rank
    axes[-1 if split == "output" else -2] = model_axis
    return tuple(axes)


def _check_axis(device_mesh, argument: str, value) -> None:
    names = tuple(device_mesh.axis_names)
    if not isinstance(value, str) or value not in names:
        raise ValueError(
            f"`{argument}` must be one of the axis names of `device_mesh` {names}. "
            f"Received: {argument}={value!r}"
        )


def _check_mesh(device_mesh, model_axis, batch_axis) -> None:
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise TypeError(
            "`device_mesh` must be a `keras.distribution.DeviceMesh`. "
            f"Received: device_mesh={device_mesh!r} of type {type(device_mesh).__name__}"
        )
    _check_axis(device_mesh, "model_axis", model_axis)
    _check_axis(device_mesh, "batch_axis", batch_axis)
    if model_axis == batch_axis:
        raise ValueError(
            "`model_axis` and `batch_axis` must be different axes of `device_mesh`. "
            f"Received: model_axis={model_axis!r}, batch_axis={batch_axis!r}"
        )


def get_layout_map(
    device_mesh: keras.distribution.DeviceMesh,
    model_axis: str = "model",
    batch_axis: str = "batch",
) -> keras.distribution.LayoutMap:
    """A `LayoutMap` that shards MaxViT's large kernels over `model_axis`.

    The layouts (see the module docstring for the table) split one dimension
    of each large kernel over `model_axis` and replicate it over every other
    mesh axis; variables that match no key are replicated. `batch_axis` is
    the data-parallel axis, the `batch_dim_name` of the `ModelParallel`
    distribution that uses the map (`model_parallel` builds it).

    Example (JAX, 8 devices: 4-way data parallel, each replica over 2):

    ```python
    mesh = keras.distribution.DeviceMesh(
        shape=(4, 2), axis_names=("batch", "model"),
        devices=keras.distribution.list_devices(),
    )
    layout_map = keras_maxvit.model_parallel.get_layout_map(mesh)
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch")
    )
    model = keras_maxvit.MaxViTLarge(weights=None)  # created sharded
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    model.fit(images, labels, batch_size=64)  # the batch must divide by 4
    ```

    Args:
        device_mesh: A `keras.distribution.DeviceMesh` with (at least) the
            axes `model_axis` and `batch_axis`.
        model_axis: Name of the mesh axis the kernels are split over. Its
            size must divide every stage width and the head width.
        batch_axis: Name of the mesh axis the batch is split over.

    Returns:
        A `keras.distribution.LayoutMap` on `device_mesh`, one regex key per
        sharded variable kind (each variable matches at most one key).
    """
    _check_mesh(device_mesh, model_axis, batch_axis)
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, split in RULES:
        layout_map[pattern] = _axes(pattern, split, model_axis)
    return layout_map


def model_parallel(
    device_mesh: keras.distribution.DeviceMesh,
    model_axis: str = "model",
    batch_axis: str = "batch",
) -> keras.distribution.ModelParallel:
    """The `keras.distribution.ModelParallel` distribution of MaxViT on a mesh.

    `ModelParallel(layout_map=get_layout_map(...), batch_dim_name=batch_axis)`.
    Set it before the model is built, with
    `keras.distribution.set_distribution(model_parallel(mesh))` or in a
    `with model_parallel(mesh).scope():` block around building, compiling
    and fitting: the variables are created sharded. Weights loaded later
    (`load_weights`, `set_weights`) keep the layouts.
    """
    layout_map = get_layout_map(device_mesh, model_axis=model_axis, batch_axis=batch_axis)
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name=batch_axis)

"""MaxViT as a feature-pyramid backbone for dense prediction (segmentation, detection).

`MaxViTBackbone` is the `include_top=False` MaxViT trunk (same layers, names,
weights and validation as `keras_maxvit.MaxViT`) with a `pyramid_outputs`
dict, as keras-hub backbones expose it: `"Pn"` is the feature map at stride
`2**n`, so `keras.Model(backbone.inputs, backbone.pyramid_outputs)` returns
every level at once.
"""

import os
import re

import keras

from keras_maxvit.models.inputs import MaxViTModel
from keras_maxvit.models.maxvit import MODEL_CONFIGS, MaxViT
from keras_maxvit.normalization import from_scale_and_offset

# Keys of a custom `variant` dict: the MaxViT builder's architecture arguments.
_REQUIRED_KEYS = ("stem_filters", "stage_filters", "depths")
_OPTIONAL_KEYS = ("head_hidden_size", "head_size")


def to_json_size(size):
    """An int window size, or a pair as the tuple it is after a JSON round trip."""
    return size if isinstance(size, int) else tuple(size)


_LAST_BLOCK = re.compile(r"^stage(\d+)_block(\d+)_grid_attn$")


def get_pyramid_outputs(model: keras.Model) -> dict:
    """The `"P1"`... feature maps of any functional keras_maxvit MaxViT model.

    `"P1"` is the stem's output (stride 2, the output of `stem_conv2`) and
    `"P{s + 2}"` the output of the last block of stage `s` (its grid
    attention, stride `2 ** (s + 2)`): `"P2"`..`"P5"` for the official
    variants. Found by layer name, so it works for classifiers, backbones and
    models reloaded from `.keras` files alike.
    """
    last_block = {}
    for layer in model.layers:
        match = _LAST_BLOCK.match(layer.name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            if block >= last_block.get(stage, (-1, None))[0]:
                last_block[stage] = (block, layer)
    try:
        stem = model.get_layer("stem_conv2")
    except ValueError:
        stem = None
    if stem is None or sorted(last_block) != list(range(len(last_block))) or not last_block:
        raise ValueError(
            "The model is not a keras_maxvit MaxViT model: it needs a `stem_conv2` layer "
            "and `stage{s}_block{b}_grid_attn` layers for stages 0, 1, ... "
            f"Received: model={model.name!r}"
        )
    pyramid = {"P1": stem.output}
    for stage in sorted(last_block):
        pyramid[f"P{stage + 2}"] = last_block[stage][1].output
    return pyramid


def _architecture(variant) -> dict:
    """The MaxViT builder's architecture arguments for `variant` (name or dict)."""
    if isinstance(variant, str):
        if variant not in MODEL_CONFIGS:
            raise ValueError(
                f"`variant` must be one of {list(MODEL_CONFIGS)} or a dict with the keys "
                f"{list(_REQUIRED_KEYS)} (optionally {list(_OPTIONAL_KEYS)}). "
                f"Received: variant={variant!r}"
            )
        return dict(MODEL_CONFIGS[variant])
    if not isinstance(variant, dict):
        raise ValueError(
            f"`variant` must be a variant name ({list(MODEL_CONFIGS)}) or a dict of "
            f"MaxViT architecture arguments. Received: variant={variant!r}"
        )
    missing = [key for key in _REQUIRED_KEYS if key not in variant]
    unknown = [key for key in variant if key not in _REQUIRED_KEYS + _OPTIONAL_KEYS]
    if missing or unknown:
        raise ValueError(
            f"A `variant` dict needs the keys {list(_REQUIRED_KEYS)} and may have "
            f"{list(_OPTIONAL_KEYS)}; missing {missing}, unknown {unknown}. "
            f"Received: variant={variant!r}"
        )
    architecture = {"head_hidden_size": None, **variant}
    architecture["stage_filters"] = tuple(architecture["stage_filters"])
    architecture["depths"] = tuple(architecture["depths"])
    return architecture


@keras.saving.register_keras_serializable(package="keras_maxvit")
class MaxViTBackbone(MaxViTModel):
    """MaxViT feature extractor with a `pyramid_outputs` dict of its feature maps.

    The model is the MaxViT trunk without a head, built by
    `keras_maxvit.MaxViT(include_top=False)`: it outputs the last stage's
    map (stride 32) and loads the same weights. `pyramid_outputs` maps
    `"P1"`..`"P5"` to the maps at strides 2 (stem), 4, 8, 16 and 32 (end of
    each stage), as symbolic tensors of this model's graph.

    Args:
        variant: `"tiny"`, `"small"`, `"base"`, `"large"` or `"xlarge"`, or a
            dict of `keras_maxvit.MaxViT` architecture arguments
            (`stem_filters`, `stage_filters`, `depths`, and optionally
            `head_hidden_size` and `head_size`) for a custom configuration.
        weights: As in `keras_maxvit.MaxViTTiny`: None (random), a checkpoint
            name such as `"imagenet"` or `"maxvit_tiny_tf_224.in1k"`, or a
            weights file. The classification head of a checkpoint is not used.
            Not part of `get_config()`: a saved backbone keeps its own weights.
        input_shape: `(height, width, channels)`; default `(224, 224, 3)`.
            Any height and width of at least 32, or None for any size
            (`(None, None, 3)`): one backbone for every image size.
        include_preprocessing: If True the model takes raw RGB in `[0, 255]`
            and normalizes it as the checkpoint expects.
        drop_path_rate: Stochastic depth rate of the last block.
        remat: If True, blocks recompute their activations in the backward
            pass (less training memory, as in `keras_maxvit.MaxViT`).
        window_size: Attention window = grid side (int or pair); None for
            `side // 32`, or 7 for an unknown size, as in `keras_maxvit.MaxViT`.
        normalization: Mean/std of that preprocessing, as in
            `keras_maxvit.MaxViTTiny`: `"imagenet"`, `"inception"`, a
            `(mean, std)` pair, or None for the weights' own. `get_config()`
            records the mean/std the backbone applies.
        synchronized_batch_norm: BatchNorm statistics over all replicas of a
            `tf.distribute` strategy, as in `keras_maxvit.MaxViTTiny`.
        name: Name of the model; default `"maxvit_{variant}_backbone"`.

    Example:

    ```python
    import keras
    import numpy as np
    import keras_maxvit

    backbone = keras_maxvit.MaxViTBackbone("tiny", input_shape=(96, 96, 3))
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)
    maps = pyramid.predict(np.zeros((1, 96, 96, 3)), verbose=0)
    # maps["P2"].shape == (1, 24, 24, 64); maps["P5"].shape == (1, 3, 3, 512)
    ```
    """

    def __init__(
        self,
        variant: str | dict = "tiny",
        weights: str | os.PathLike | None = None,
        input_shape: tuple | None = None,
        include_preprocessing: bool = True,
        drop_path_rate: float = 0.0,
        remat: bool = False,
        window_size: int | tuple[int, int] | None = None,
        normalization: str | tuple | list | None = None,
        synchronized_batch_norm: bool = False,
        name: str | None = None,
    ):
        architecture = _architecture(variant)
        if name is None:
            name = f"maxvit_{variant if isinstance(variant, str) else 'custom'}_backbone"
        trunk = MaxViT(
            **architecture,
            include_top=False,
            include_preprocessing=include_preprocessing,
            weights=weights,
            input_shape=input_shape,
            pooling=None,
            drop_path_rate=drop_path_rate,
            remat=remat,
            window_size=window_size,
            normalization=normalization,
            synchronized_batch_norm=synchronized_batch_norm,
            name=name,
        )
        super().__init__(inputs=trunk.inputs[0], outputs=trunk.outputs[0], name=name)

        # === Config ===
        self.variant = variant
        self.image_shape = tuple(trunk.inputs[0].shape[1:])
        self.include_preprocessing = include_preprocessing
        self.drop_path_rate = drop_path_rate
        self.remat = remat
        self.window_size = window_size if window_size is None else to_json_size(window_size)
        self.synchronized_batch_norm = synchronized_batch_norm
        # The mean/std applied, whatever chose it (a JSON-plain (mean, std) pair).
        self.normalization = None
        if include_preprocessing:
            layer = trunk.get_layer("preprocessing")
            mean, std = from_scale_and_offset(layer.scale, layer.offset)
            self.normalization = [list(mean), list(std)]

    @property
    def pyramid_outputs(self) -> dict:
        """`{"P1": ..., "P5": ...}`: the symbolic feature maps at strides 2 ... 32.

        A plain dict (found by layer name, see `get_pyramid_outputs`), so a
        model built on it has plain dict outputs that every backend can trace.
        """
        return get_pyramid_outputs(self)

    def get_config(self) -> dict:
        variant = self.variant
        if not isinstance(variant, str):  # plain types, as they come back from JSON
            variant = {
                k: list(v) if isinstance(v, (list, tuple)) else v for k, v in variant.items()
            }
        return {
            "variant": variant,
            "weights": None,
            "input_shape": self.image_shape,
            "include_preprocessing": self.include_preprocessing,
            "drop_path_rate": self.drop_path_rate,
            "remat": self.remat,
            "window_size": self.window_size,
            "normalization": self.normalization,
            "synchronized_batch_norm": self.synchronized_batch_norm,
            "name": self.name,
        }

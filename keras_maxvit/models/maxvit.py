"""MaxViT image classification models (Tu et al., ECCV 2022, arXiv 2204.01697).

The architecture is the official one (google-research/maxvit), so the
official ImageNet weights, as republished by timm as `maxvit_*_tf_*`, load
exactly.
"""

import os
import warnings

import keras
from keras import layers

from keras_maxvit import weights as weights_lib
from keras_maxvit.layers import MBConv, PartitionAttentionBlock, StemConv2D, gelu_tanh
from keras_maxvit.layers.mbconv import check_synchronized
from keras_maxvit.layers.partition import to_pair
from keras_maxvit.layers.remat import check_remat
from keras_maxvit.models.inputs import MaxViTModel
from keras_maxvit.models.validation import check_architecture, check_arguments
from keras_maxvit.normalization import (  # noqa: F401  default_normalization: public here
    default_normalization,
    model_normalization,
    scale_and_offset,
    validate_normalization,
)
from keras_maxvit.presets import (  # noqa: F401  the statistics: importable from here too
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    PRESETS,
)

# One entry per variant: stem width, channels and depth of the 4 stages, and the
# width of the pre-logits layer of the classification head.
MODEL_CONFIGS = {
    "tiny": {
        "stem_filters": 64,
        "stage_filters": (64, 128, 256, 512),
        "depths": (2, 2, 5, 2),
        "head_hidden_size": 512,
    },
    "small": {
        "stem_filters": 64,
        "stage_filters": (96, 192, 384, 768),
        "depths": (2, 2, 5, 2),
        "head_hidden_size": 768,
    },
    "base": {
        "stem_filters": 64,
        "stage_filters": (96, 192, 384, 768),
        "depths": (2, 6, 14, 2),
        "head_hidden_size": 768,
    },
    "large": {
        "stem_filters": 128,
        "stage_filters": (128, 256, 512, 1024),
        "depths": (2, 6, 14, 2),
        "head_hidden_size": 1024,
    },
    "xlarge": {
        "stem_filters": 192,
        "stage_filters": (192, 384, 768, 1536),
        "depths": (2, 6, 14, 2),
        "head_hidden_size": 1536,
    },
}

# The total stride of the network: window = grid = input side / 32.
NETWORK_STRIDE = 32
# The input size of the default window (7) when the input size is unknown.
DEFAULT_RESOLUTION = 224


def count_parameters(config: dict, classes: int = 1000, resolution: int = 224) -> int:
    """Trainable parameters of a MaxViT configuration, without building it.

    Depends on the input resolution through the bias tables (window = side / 32)
    and on `classes` through the classifier; for the table of checkpoints.
    """
    stem = config["stem_filters"]
    total = (27 * stem + stem) + 2 * stem + (9 * stem * stem + stem)
    window = resolution // NETWORK_STRIDE
    channels = stem
    for filters, depth in zip(config["stage_filters"], config["depths"], strict=True):
        for block in range(depth):
            mid, se = 4 * filters, filters // 4
            total += 2 * channels + channels * mid + 2 * mid + 9 * mid + 2 * mid
            total += (mid * se + se) + (se * mid + mid) + (mid * filters + filters)
            if block == 0 and channels != filters:
                total += channels * filters + filters
            channels = filters
            heads = filters // 32
            attention = 3 * filters * filters + 3 * filters + heads * (2 * window - 1) ** 2
            attention += filters * filters + filters
            mlp = 8 * filters * filters + 5 * filters
            total += 2 * (4 * filters + attention + mlp)
    hidden = config["head_hidden_size"] or channels
    total += 2 * channels
    if config["head_hidden_size"]:
        total += channels * hidden + hidden
    return total + hidden * classes + classes


def _partition_size(height, width, window_size, resolution):
    """Window = grid size of the attention layers: an int or a (rows, cols) pair.

    An explicit `window_size` wins. Otherwise it is `side // 32` for a static
    input size (timm's rule: 7 at 224, 12 at 384), and for an unknown size
    (`None`) the window the weights were trained with (`resolution // 32`).
    """
    if window_size is not None:
        try:
            size = to_pair(window_size)
        except ValueError:
            raise ValueError(
                "`window_size` must be a positive integer or a pair of them. "
                f"Received: window_size={window_size!r}"
            ) from None
    elif height is None or width is None:
        size = (resolution // NETWORK_STRIDE,) * 2
    else:
        size = (height // NETWORK_STRIDE, width // NETWORK_STRIDE)
    return size[0] if size[0] == size[1] else size


def maxvit_trunk(
    x,
    stem_filters,
    stage_filters,
    depths,
    head_size,
    partition_size,
    drop_path_rate=0.0,
    remat=False,
    synchronized_batch_norm=False,
    dtype=None,
):
    """The stem and the stages of MaxViT on the symbolic tensor `x`.

    Returns `(x, pyramid)`: the last block's output and the `"P1"`.. feature
    maps (the stem's, then each stage's last block). Layer names are those
    of the official weights; `dtype` (a policy or None for the global one)
    goes to every layer. The drop-path rate grows linearly over the blocks.
    """
    x = StemConv2D(stem_filters, 3, strides=2, padding="same", dtype=dtype, name="stem_conv1")(x)
    x = layers.BatchNormalization(
        epsilon=1e-3, synchronized=synchronized_batch_norm, dtype=dtype, name="stem_norm1"
    )(x)
    x = layers.Activation(gelu_tanh, dtype=dtype, name="stem_act1")(x)
    x = StemConv2D(stem_filters, 3, padding="same", dtype=dtype, name="stem_conv2")(x)
    pyramid = {"P1": x}
    total_blocks = sum(depths)
    block_index = 0
    for stage, (filters, depth) in enumerate(zip(stage_filters, depths, strict=True)):
        for block in range(depth):
            prefix = f"stage{stage}_block{block}"
            rate = drop_path_rate * block_index / max(total_blocks - 1, 1)
            block_index += 1
            x = MBConv(
                filters,
                strides=2 if block == 0 else 1,
                drop_path_rate=rate,
                remat=remat,
                synchronized=synchronized_batch_norm,
                dtype=dtype,
                name=f"{prefix}_mbconv",
            )(x)
            for partition_type in ("block", "grid"):
                x = PartitionAttentionBlock(
                    partition_type=partition_type,
                    partition_size=partition_size,
                    head_size=head_size,
                    drop_path_rate=rate,
                    remat=remat,
                    dtype=dtype,
                    name=f"{prefix}_{partition_type}_attn",
                )(x)
        pyramid[f"P{stage + 2}"] = x
    return x, pyramid


def MaxViT(
    stem_filters: int,
    stage_filters: tuple[int, ...],
    depths: tuple[int, ...],
    head_hidden_size: int | None,
    head_size: int = 32,
    include_top: bool = True,
    include_preprocessing: bool = True,
    weights: str | os.PathLike | None = None,
    input_tensor=None,
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation="softmax",
    drop_path_rate: float = 0.0,
    remat: bool = False,
    window_size: int | tuple[int, int] | None = None,
    synchronized_batch_norm: bool = False,
    normalization: str | tuple | None = None,
    name: str = "maxvit",
) -> keras.Model:
    """Builds a MaxViT model of any width and depth.

    `MaxViTTiny` ... `MaxViTXLarge` call this with the official variants;
    call it directly for custom (e.g. small test) configurations. Every
    stage starts with a stride-2 block; each block is MBConv, then block
    attention, then grid attention, with window = grid = input side / 32.

    Args:
        stem_filters: Channels of the two stem convolutions.
        stage_filters: Channels of each stage (multiples of `head_size`).
        depths: Number of blocks in each stage.
        head_hidden_size: Width of the tanh pre-logits layer of the head
            (None for no pre-logits layer).
        head_size: Channels per attention head.
        Others: as in `MaxViTTiny`.
    """
    check_architecture(stem_filters, stage_filters, depths, head_hidden_size, head_size)
    input_shape = check_arguments(
        include_top=include_top,
        include_preprocessing=include_preprocessing,
        weights=weights,
        input_tensor=input_tensor,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        drop_path_rate=drop_path_rate,
    )
    check_remat(remat)
    validate_normalization(normalization, include_preprocessing)
    check_synchronized(synchronized_batch_norm, "synchronized_batch_norm")
    height, width = input_shape[0], input_shape[1]
    known_sides = [side for side in (height, width) if side is not None]
    checkpoint = None
    if weights_lib.is_named_weights(weights):
        given = {
            "stem_filters": stem_filters,
            "stage_filters": tuple(stage_filters),
            "depths": tuple(depths),
            "head_hidden_size": head_hidden_size,
        }
        variant = next((k for k, c in MODEL_CONFIGS.items() if c == given), None)
        checkpoint = weights_lib.resolve_checkpoint(
            weights, variant, max(known_sides, default=DEFAULT_RESOLUTION)
        )
    resolution = PRESETS[checkpoint]["resolution"] if checkpoint else DEFAULT_RESOLUTION
    partition_size = _partition_size(height, width, window_size, resolution)

    if input_tensor is None:
        inputs = layers.Input(shape=input_shape, name="image")
    elif keras.backend.is_keras_tensor(input_tensor):
        inputs = input_tensor
    else:
        inputs = layers.Input(tensor=input_tensor, shape=input_shape, name="image")

    x = inputs
    if include_preprocessing:
        # The weights' own mean/std (the argument, the checkpoint's preset or
        # what the weights file records), else the input size's, with a warning.
        mean, std = model_normalization(normalization, checkpoint, weights, (height, width), 3)
        scale, offset = scale_and_offset(mean, std)
        # (x / 255 - mean) / std as one multiply-add (a Rescaling, not a
        # Normalization layer: ONNX converters keep its constants constant).
        x = layers.Rescaling(scale=scale, offset=offset, name="preprocessing")(x)

    x, _ = maxvit_trunk(
        x,
        stem_filters,
        stage_filters,
        depths,
        head_size,
        partition_size,
        drop_path_rate=drop_path_rate,
        remat=remat,
        synchronized_batch_norm=synchronized_batch_norm,
    )

    if include_top:
        x = layers.GlobalAveragePooling2D(name="head_pool")(x)
        x = layers.LayerNormalization(epsilon=1e-5, name="head_norm")(x)
        if head_hidden_size:
            x = layers.Dense(head_hidden_size, activation="tanh", name="head_pre_logits")(x)
        # float32 classifier (and softmax) under mixed precision, as Keras advises.
        x = layers.Dense(
            classes, activation=classifier_activation, dtype="float32", name="predictions"
        )(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    if input_tensor is not None:
        model_inputs = keras.utils.get_source_inputs(input_tensor)
    else:
        model_inputs = inputs
    model = MaxViTModel(model_inputs, x, name=name)

    if checkpoint is not None:
        new_classifier = include_top and classes != PRESETS[checkpoint]["classes"]
        if new_classifier:
            warnings.warn(
                f"Checkpoint {checkpoint!r} has {PRESETS[checkpoint]['classes']} classes; "
                f"the classifier for classes={classes} starts from random weights "
                "(every other layer is pretrained).",
                stacklevel=3,
            )
        state, source = weights_lib.pretrained_state(checkpoint)
        weights_lib.load_state(model, state, source=source, skip_classifier=new_classifier)
    elif weights is not None:
        weights_lib.load_weights(model, os.fspath(weights))
    return model


BASE_DOCSTRING = """Instantiates the {display} architecture.

    Reference: [MaxViT: Multi-Axis Vision Transformer](
    https://arxiv.org/abs/2204.01697) (ECCV 2022). The architecture is the
    official one, so timm's `maxvit_{key}_tf_*` checkpoints load exactly.

    Default input is 224x224 RGB. Any height and width of at least 32 work,
    also unknown ones (`input_shape=(None, None, 3)`: one model for every
    size, with or without the head). The attention window = grid size is
    `side // 32` for a static input size (7 at 224, 12 at 384, 16 at 512) and,
    for an unknown size, that of the weights' resolution (7 for random or
    224x224 weights); `window_size` sets it. Where a stage's feature map is
    not a multiple of the window (or grid), the attention pads it, masks the
    padding out of the softmax and crops it back: the padding never changes
    the output.

    Images may be float or integer arrays (integers are cast to float32).
    A NaN pixel is not checked for: it makes that image's outputs NaN and
    leaves the other images of the batch unchanged.

    Args:
        include_top: Whether to include the classification head (global
            average pool, LayerNorm, tanh pre-logits layer, classifier).
        include_preprocessing: If True the model takes raw RGB in `[0, 255]`
            and normalizes it with the weights' mean/std (see
            `normalization`); if False it takes already normalized input.
        weights: None (random initialization); `"imagenet"`,
            `"imagenet21k"`, `"imagenet21k-ft1k"`, a timm tag such as
            `"maxvit_{key}_tf_224.in1k"` or `"hf://timm/<tag>"` (downloaded
            from the Hugging Face Hub and cached by `huggingface_hub`); or
            the path of a timm checkpoint of this variant (`.safetensors`,
            or `.bin`/`.pth` read with `torch.load(weights_only=True)`), a
            saved keras_maxvit `.keras` model (any resolution: bias tables
            are resized), or a Keras `.weights.h5` file.
        input_tensor: Optional Keras tensor to use as the model input.
        input_shape: `(height, width, channels)`; default `(224, 224, 3)`.
        pooling: With `include_top=False`: None (4D feature map), `"avg"`
            or `"max"` global pooling.
        classes: Number of classes of the classifier. With pretrained
            weights of another number of classes, the classifier starts from
            random weights and every other layer is loaded.
        classifier_activation: Activation of the classifier, e.g.
            `"softmax"`, or None for logits.
        drop_path_rate: Stochastic depth rate of the last block (the rate
            grows linearly from 0 over the blocks).
        remat: If True, every block recomputes its activations in the
            backward pass instead of keeping them (rematerialization):
            training needs much less memory (e.g. L/XL at 384/512) for about
            one more forward pass of compute. Gradients and BatchNorm
            updates are the same as without.
        window_size: Side of the attention windows and of the grid, an int
            or a `(rows, cols)` pair; None for the default above. Pretrained
            bias tables are resized to it as timm resizes them.
        synchronized_batch_norm: If True, every BatchNormalization in
            training mode computes its statistics over all replicas of a
            `tf.distribute` strategy (Keras' `synchronized=True`), so a
            data-parallel fit normalizes as one device would over the global
            batch. TensorFlow backend only (JAX's `DataParallel` already
            normalizes over the global batch).
        normalization: Mean/std of the preprocessing: `"imagenet"`,
            `"inception"` (`0.5`/`0.5`), a `(mean, std)` pair (floats or
            3-tuples, RGB in `[0, 1]`), or None for the weights' own (a
            checkpoint's preset; a file's metadata, timm `config.json` or
            `.keras` preprocessing layer; else the input size's: ImageNet,
            `0.5`/`0.5` at 384 and 512, with a warning for a file).
        name: Name of the model.

    Returns:
        A `keras.Model`.

    Example:

    ```python
    import numpy as np
    import keras_maxvit

    model = keras_maxvit.MaxViTTiny(weights=None)
    images = np.random.uniform(0, 255, (2, 224, 224, 3)).astype("float32")
    probs = model.predict(images)  # (2, 1000)
    ```
"""


def _variant(key: str, display: str):
    def constructor(
        include_top: bool = True,
        include_preprocessing: bool = True,
        weights: str | os.PathLike | None = "imagenet",
        input_tensor=None,
        input_shape: tuple | None = None,
        pooling: str | None = None,
        classes: int = 1000,
        classifier_activation="softmax",
        drop_path_rate: float = 0.0,
        remat: bool = False,
        window_size: int | tuple[int, int] | None = None,
        synchronized_batch_norm: bool = False,
        normalization: str | tuple | None = None,
        name: str = f"maxvit_{key}",
    ) -> keras.Model:
        return MaxViT(
            **MODEL_CONFIGS[key],
            include_top=include_top,
            include_preprocessing=include_preprocessing,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            drop_path_rate=drop_path_rate,
            remat=remat,
            window_size=window_size,
            synchronized_batch_norm=synchronized_batch_norm,
            normalization=normalization,
            name=name,
        )

    constructor.__name__ = constructor.__qualname__ = f"MaxViT{display}"
    constructor.__doc__ = BASE_DOCSTRING.format(display=f"MaxViT-{display}", key=key)
    return constructor


MaxViTTiny = _variant("tiny", "Tiny")
MaxViTSmall = _variant("small", "Small")
MaxViTBase = _variant("base", "Base")
MaxViTLarge = _variant("large", "Large")
MaxViTXLarge = _variant("xlarge", "XLarge")

# Variant name -> constructor, for the command line, `fit` and the tests.
VARIANTS = {
    "tiny": MaxViTTiny,
    "small": MaxViTSmall,
    "base": MaxViTBase,
    "large": MaxViTLarge,
    "xlarge": MaxViTXLarge,
}

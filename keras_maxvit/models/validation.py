"""Checks of the arguments of the MaxViT builders, before any layer is made.

Each check raises a `ValueError`/`TypeError` that names the argument and the
value received, where Keras would otherwise answer from deep inside a layer
(`Received filters=0` for a stem width, `ZeroDivisionError` for a head size)
or not at all (a stage of depth 0 silently dropped).
"""

import os

import keras

from keras_maxvit import weights as weights_lib
from keras_maxvit.models.inputs import MIN_SIZE

POOLING_OPTIONS = (None, "avg", "max")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"`{name}` must be True or False. Received: {name}={value!r}")
    return value


def check_architecture(stem_filters, stage_filters, depths, head_hidden_size, head_size) -> None:
    """Widths and depths: positive integers, stage widths multiples of the head size."""
    if not _is_int(stem_filters) or stem_filters < 1:
        raise ValueError(
            f"`stem_filters` must be a positive integer. Received: stem_filters={stem_filters!r}"
        )
    if not _is_int(head_size) or head_size < 1:
        raise ValueError(
            f"`head_size` must be a positive integer. Received: head_size={head_size!r}"
        )
    if head_hidden_size is not None and (not _is_int(head_hidden_size) or head_hidden_size < 1):
        raise ValueError(
            "`head_hidden_size` must be a positive integer or None. "
            f"Received: head_hidden_size={head_hidden_size!r}"
        )
    if not isinstance(stage_filters, (list, tuple)) or not isinstance(depths, (list, tuple)):
        raise TypeError(
            "`stage_filters` and `depths` must be lists or tuples of integers. "
            f"Received: stage_filters={stage_filters!r}, depths={depths!r}"
        )
    if len(stage_filters) != len(depths) or not depths:
        raise ValueError(
            "`stage_filters` and `depths` must be non-empty and of the same "
            f"length. Received: stage_filters={stage_filters}, depths={depths}"
        )
    if not all(_is_int(d) and d >= 1 for d in depths):
        raise ValueError(
            f"Every stage depth must be a positive integer. Received: depths={depths!r}"
        )
    for filters in stage_filters:
        if not _is_int(filters) or filters < 1 or filters % head_size != 0:
            raise ValueError(
                "Every stage width must be a positive multiple of "
                f"head_size={head_size}. Received: stage_filters={stage_filters!r}"
            )


def check_activation(classifier_activation) -> None:
    """An activation Keras can resolve (a name, a callable) or None."""
    if classifier_activation is None or callable(classifier_activation):
        return
    try:
        keras.activations.get(classifier_activation)
    except (ValueError, TypeError):
        raise ValueError(
            "`classifier_activation` must be None, a callable or the name of a Keras "
            f"activation such as 'softmax'. Received: "
            f"classifier_activation={classifier_activation!r}"
        ) from None


def _validate_input_shape(input_shape, include_preprocessing, weights):
    if len(input_shape) != 3:
        raise ValueError(
            "`input_shape` must have 3 dims (height, width, channels). "
            f"Received: input_shape={input_shape}"
        )
    height, width, channels = input_shape
    for side in (height, width):
        if side is None:
            continue
        if isinstance(side, bool) or not isinstance(side, int) or side < MIN_SIZE:
            raise ValueError(
                f"`input_shape` height and width must be integers of at least {MIN_SIZE} "
                f"(or None for any size). Received: input_shape={input_shape}"
            )
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(
            "`input_shape` must give the number of channels as a positive integer. "
            f"Received: input_shape={input_shape}"
        )
    if include_preprocessing and channels != 3:
        raise ValueError(
            "`include_preprocessing=True` needs 3-channel RGB input. "
            f"Received: input_shape={input_shape}"
        )
    if weights is not None and channels != 3:
        raise ValueError(
            f"Pretrained weights (weights={weights!r}) need 3-channel RGB input. "
            f"Received: input_shape={input_shape}"
        )


def _resolve_input_shape(input_shape, input_tensor):
    if input_tensor is not None:
        is_tensor = keras.backend.is_keras_tensor(input_tensor) or keras.ops.is_tensor(input_tensor)
        if not is_tensor or len(input_tensor.shape) != 4:
            raise TypeError(
                "`input_tensor` must be a 4D Keras or backend tensor. "
                f"Received: input_tensor={input_tensor!r}"
            )
        tensor_shape = tuple(input_tensor.shape)[1:]
        if input_shape is not None and tuple(input_shape) != tensor_shape:
            raise ValueError(
                "`input_shape` does not match the shape of `input_tensor`. "
                f"Received: input_shape={input_shape}, input_tensor.shape="
                f"{(None,) + tensor_shape}"
            )
        return tensor_shape
    if input_shape is None:
        return (224, 224, 3)
    if not isinstance(input_shape, (list, tuple)):
        raise TypeError(
            "`input_shape` must be a tuple (height, width, channels). "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(input_shape)


def _validate_weights(weights):
    if weights is None:
        return
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            "`weights` must be None, 'imagenet' or a path to a weights file. "
            f"Received: weights={weights!r}"
        )
    weights = os.fspath(weights)
    if weights_lib.is_named_weights(weights):
        return
    if not weights.endswith(weights_lib.WEIGHTS_SUFFIXES):
        raise ValueError(
            "`weights` must be one of None, 'imagenet', 'imagenet21k', "
            "'imagenet21k-ft1k', a checkpoint tag such as 'maxvit_tiny_tf_224.in1k' "
            "(see keras_maxvit.presets.PRESETS), 'hf://timm/<tag>', or the path of a "
            f"{', '.join(weights_lib.WEIGHTS_SUFFIXES)} file. Received: weights={weights!r}"
        )
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"The weights file does not exist. Received: weights={weights!r}")


def check_arguments(
    include_top,
    include_preprocessing,
    weights,
    input_tensor,
    input_shape,
    pooling,
    classes,
    classifier_activation,
    drop_path_rate,
) -> tuple:
    """Checks the standard keras.applications arguments; returns the input shape."""
    check_bool("include_top", include_top)
    check_bool("include_preprocessing", include_preprocessing)
    _validate_weights(weights)
    if pooling not in POOLING_OPTIONS:
        raise ValueError(
            f"`pooling` must be one of {POOLING_OPTIONS}. Received: pooling={pooling!r}"
        )
    if not _is_int(classes) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
    check_activation(classifier_activation)
    if not isinstance(drop_path_rate, (int, float)) or not 0.0 <= drop_path_rate < 1.0:
        raise ValueError(
            f"`drop_path_rate` must be in [0, 1). Received: drop_path_rate={drop_path_rate!r}"
        )
    input_shape = _resolve_input_shape(input_shape, input_tensor)
    _validate_input_shape(input_shape, include_preprocessing, weights)
    return input_shape

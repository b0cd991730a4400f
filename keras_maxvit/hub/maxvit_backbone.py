"""`MaxViTBackbone` for keras-hub: the MaxViT trunk as a `FeaturePyramidBackbone`.

The layers, their names and their weights are those of `keras_maxvit.MaxViT`
(so the core package's timm conversion loads into it), built the keras-hub
way: a config-only constructor, `dtype` passed to every layer, the
normalization left to `MaxViTImageConverter`, and `pyramid_outputs`
`"P1"`..`"P5"` (stride `2**n`) for segmenters and detectors.
"""

import os

import keras
from keras_hub.models import FeaturePyramidBackbone

from keras_maxvit.layers.partition import to_pair
from keras_maxvit.layers.remat import check_remat
from keras_maxvit.layers.stochastic_depth import check_rate
from keras_maxvit.models.backbone import to_json_size
from keras_maxvit.models.inputs import MIN_SIZE
from keras_maxvit.models.maxvit import DEFAULT_RESOLUTION, _partition_size, maxvit_trunk
from keras_maxvit.models.validation import check_architecture
from keras_maxvit.timm_convert import timm_key
from keras_maxvit.weights import load_state, maxvit_weights


def _is_int_at_least(value, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_image_shape(image_shape) -> tuple:
    """`image_shape` as a `(height, width, channels)` tuple; sides None or >= 32."""
    shape = tuple(image_shape) if isinstance(image_shape, (list, tuple)) else ()
    valid = (
        len(shape) == 3
        and all(side is None or _is_int_at_least(side, MIN_SIZE) for side in shape[:2])
        and _is_int_at_least(shape[2], 1)
    )
    if not valid:
        raise ValueError(
            "`image_shape` must be (height, width, channels): sides None (any size) or "
            f"integers of at least {MIN_SIZE}, channels a positive integer. "
            f"Received: image_shape={image_shape!r}"
        )
    return shape


def _saved_partition_size(filepath) -> tuple[int, int] | None:
    """The window of the bias tables in a `.weights.h5` file; None if it has none.

    The relative-position bias tables, `(heads, 2P - 1, 2Q - 1)`, are the only
    3-D weights of a MaxViT.
    """
    import h5py

    path = os.fspath(filepath)
    if not path.endswith(".weights.h5") or not os.path.isfile(path):
        return None
    shapes = set()
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda _, item: (
                shapes.add(item.shape[1:])
                if isinstance(item, h5py.Dataset) and item.ndim == 3
                else None
            )
        )
    if len(shapes) != 1:
        return None
    rows, cols = shapes.pop()
    return (rows + 1) // 2, (cols + 1) // 2


@keras.saving.register_keras_serializable(package="keras_maxvit.hub")
class MaxViTBackbone(FeaturePyramidBackbone):
    """MaxViT (Tu et al., ECCV 2022) as a keras-hub feature-pyramid backbone.

    The trunk of `keras_maxvit.MaxViT`: a stem (two 3x3 convolutions, the
    first of stride 2), then stages of MaxViT blocks (MBConv, block attention,
    grid attention), each stage starting at stride 2. It takes images already
    normalized (a `MaxViTImageConverter` does that) and outputs the last
    stage's feature map; `pyramid_outputs` holds `"P1"` (the stem, stride 2)
    and `"P2"`... (the end of each stage, strides 4 ... 32).

    Load the official weights with `MaxViTBackbone.from_preset(...)`: a
    checkpoint tag (`"maxvit_tiny_tf_224.in1k"`, see `MaxViTBackbone.presets`),
    `"hf://timm/<tag>"`, or a preset directory written by `save_to_preset`.

    Args:
        stem_filters: Channels of the two stem convolutions.
        stage_filters: Channels of each stage, multiples of `head_size`.
        depths: Number of blocks of each stage.
        head_size: Channels per attention head.
        window_size: Side of the attention windows and of the grid (int or
            `(rows, cols)`); None for `side // 32` of a fixed `image_shape`,
            7 for an unknown one.
        drop_path_rate: Stochastic depth rate of the last block (growing
            linearly from 0 over the blocks).
        remat: If True, blocks recompute their activations in the backward
            pass (less training memory).
        image_shape: `(height, width, channels)`; None sides for any size.
        dtype: Dtype policy (name, `keras.DTypePolicy` or `DTypePolicyMap`)
            of every layer.

    Example:

    ```python
    import keras
    import numpy as np
    from keras_maxvit.hub import MaxViTBackbone

    backbone = MaxViTBackbone(
        stem_filters=16, stage_filters=(32, 32, 64, 64), depths=(1, 1, 1, 1),
        image_shape=(64, 64, 3),
    )
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)
    maps = pyramid.predict(np.zeros((1, 64, 64, 3)), verbose=0)
    # maps["P2"].shape == (1, 16, 16, 32); maps["P5"].shape == (1, 2, 2, 64)
    ```
    """

    def __init__(
        self,
        stem_filters: int,
        stage_filters: tuple[int, ...],
        depths: tuple[int, ...],
        head_size: int = 32,
        window_size: int | tuple[int, int] | None = None,
        drop_path_rate: float = 0.0,
        remat: bool = False,
        image_shape: tuple = (None, None, 3),
        dtype=None,
        **kwargs,
    ):
        check_architecture(stem_filters, stage_filters, depths, None, head_size)
        stage_filters, depths = tuple(stage_filters), tuple(depths)
        drop_path_rate = check_rate("drop_path_rate", drop_path_rate)
        check_remat(remat)
        image_shape = check_image_shape(image_shape)
        if window_size is not None:
            window_size = to_json_size(window_size)
        partition_size = _partition_size(
            image_shape[0], image_shape[1], window_size, DEFAULT_RESOLUTION
        )
        if keras.config.image_data_format() != "channels_last":
            raise ValueError(
                "MaxViTBackbone computes in channels_last layout (its attention partitions "
                "the spatial axes): set keras.config.set_image_data_format('channels_last'). "
                f"Received: image_data_format={keras.config.image_data_format()!r}"
            )

        # === Functional model ===
        inputs = keras.layers.Input(shape=image_shape, name="images")
        x, pyramid_outputs = maxvit_trunk(
            inputs,
            stem_filters,
            stage_filters,
            depths,
            head_size,
            partition_size,
            drop_path_rate=drop_path_rate,
            remat=remat,
            dtype=dtype,
        )
        super().__init__(inputs=inputs, outputs=x, dtype=dtype, **kwargs)

        # === Config ===
        self.stem_filters = stem_filters
        self.stage_filters = stage_filters
        self.depths = depths
        self.head_size = head_size
        self.window_size = window_size
        self.drop_path_rate = drop_path_rate
        self.remat = remat
        self.image_shape = image_shape
        self.pyramid_outputs = pyramid_outputs
        self.partition_size = partition_size

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            {
                "stem_filters": self.stem_filters,
                "stage_filters": list(self.stage_filters),
                "depths": list(self.depths),
                "head_size": self.head_size,
                "window_size": self.window_size,
                "drop_path_rate": self.drop_path_rate,
                "remat": self.remat,
                "image_shape": list(self.image_shape),
            }
        )
        return config

    def load_weights(self, filepath, skip_mismatch=False, **kwargs):
        """Loads a `.weights.h5` file, also one saved at another window size.

        Weights of the same window load as Keras loads them. A file whose
        relative-position bias tables are of another window (a preset saved
        at another resolution, loaded with `image_shape=`) is read into a
        backbone of its own window and copied over, the tables resized as
        timm resizes them (`keras_maxvit.weights.load_state`).
        """
        saved = _saved_partition_size(filepath)
        if saved is None or saved == to_pair(self.partition_size) or skip_mismatch:
            return super().load_weights(filepath, skip_mismatch=skip_mismatch, **kwargs)
        config = self.get_config()
        config["window_size"] = saved[0] if saved[0] == saved[1] else saved
        twin = MaxViTBackbone.from_config(config)
        twin.load_weights(filepath)
        state = {
            timm_key(path): keras.ops.convert_to_numpy(variable)
            for path, variable in maxvit_weights(twin)
        }
        load_state(self, state, source=f"The weights file {os.fspath(filepath)!r}")

"""ImageNet helpers: checkpoint normalization, eval transform, class names."""

import json
import math
import numbers
import os
from functools import lru_cache

import keras
import numpy as np

from keras_maxvit.models.inputs import MIN_SIZE, dtype_and_shape
from keras_maxvit.normalization import CROP_MODES, file_normalization, scale_and_offset
from keras_maxvit.presets import PRESETS
from keras_maxvit.weights import is_named_weights, resolve_checkpoint

_CLASSES_FILE = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.json")


def checkpoint_tag(weights: str, resolution: int = 224) -> str:
    """The timm tag that `weights` names; aliases follow the input resolution.

    Every variant's checkpoints of one kind (in1k, in21k, in21k_ft_in1k) at one
    resolution share their preprocessing, so aliases resolve as for Base,
    which has all of them.
    """
    return resolve_checkpoint(weights, PRESETS.get(weights, {}).get("variant", "base"), resolution)


def preprocess_input(x, weights: str | os.PathLike = "imagenet", resolution: int = 224, model=None):
    """Normalizes raw RGB in `[0, 255]` as checkpoint `weights` expects.

    Only for models built with `include_preprocessing=False`: models built
    with `include_preprocessing=True` (the default) normalize inside, so pass
    them raw pixels. Given such a `model`, this function returns `x`
    unchanged.

    Args:
        x: Images, channels last, RGB in `[0, 255]` (NumPy array or tensor).
        weights: A checkpoint tag (`"maxvit_tiny_tf_384.in1k"`) or alias
            (`"imagenet"`, `"imagenet21k"`, `"imagenet21k-ft1k"`), or a
            weights file: the mean/std it records, as a model built on it
            with `include_preprocessing=True` would apply.
        resolution: Input side, which picks the checkpoint an alias means
            (ImageNet mean/std at 224, 0.5/0.5 at 384 and 512), and the
            default of a file that records no normalization.
        model: Optional model; if it includes its own preprocessing, `x` is
            returned as is.

    Returns:
        `(x / 255 - mean) / std`, float32, of the same kind as `x`.
    """
    if model is not None and any(layer.name == "preprocessing" for layer in model.layers):
        return x
    if isinstance(resolution, bool) or not isinstance(resolution, numbers.Integral):
        raise TypeError(
            f"`resolution` must be an integer side in pixels. Received: resolution={resolution!r}"
        )
    resolution = int(resolution)
    if resolution < MIN_SIZE:
        raise ValueError(
            f"`resolution` must be at least {MIN_SIZE}. Received: resolution={resolution!r}"
        )
    dtype, shape = dtype_and_shape(x)
    if dtype is not None and not dtype.startswith(("float", "bfloat", "int", "uint")):
        raise TypeError(
            f"`x` must be a float or integer array of RGB pixels. Received: x.dtype={dtype}"
        )
    if shape is not None and (not shape or shape[-1] not in (None, 3)):
        raise ValueError(
            f"`x` must be RGB images, channels last (3 channels). Received: x.shape={shape}"
        )
    if isinstance(weights, os.PathLike) or (
        isinstance(weights, str) and not is_named_weights(weights) and os.path.isfile(weights)
    ):
        mean, std = file_normalization(os.fspath(weights), (resolution, resolution))
    else:
        preset = PRESETS[checkpoint_tag(weights, resolution)]
        mean, std = preset["mean"], preset["std"]
    scale, offset = (np.array(v, "float32") for v in scale_and_offset(mean, std))
    if isinstance(x, np.ndarray) or not hasattr(x, "shape"):
        return np.asarray(x, "float32") * scale + offset
    return keras.ops.cast(x, "float32") * scale + offset


@lru_cache(maxsize=1)
def imagenet_classes() -> list[tuple[str, str]]:
    """The 1000 ImageNet-1k classes as `(wordnet_id, name)`, in model order."""
    with open(_CLASSES_FILE) as f:
        return [tuple(entry) for entry in json.load(f)]


def decode_predictions(preds, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """The `top` classes of each row of ImageNet-1k predictions.

    Returns, like `keras.applications`, one list per image of
    `(wordnet_id, class_name, score)` tuples, best first.
    """
    preds = keras.ops.convert_to_numpy(preds)
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of ImageNet-1k predictions of "
            f"shape (samples, 1000). Received: preds.shape={preds.shape}"
        )
    if isinstance(top, bool) or not isinstance(top, int) or not 1 <= top <= 1000:
        raise ValueError(f"`top` must be an integer in [1, 1000]. Received: top={top!r}")
    classes = imagenet_classes()
    results = []
    for row in preds:
        best = np.argsort(row)[::-1][:top]
        results.append([(*classes[i], float(row[i])) for i in best])
    return results


def load_eval_image(
    path: str,
    resolution: int,
    crop_pct: float,
    interpolation: str = "bicubic",
    crop_mode: str = "center",
) -> np.ndarray:
    """An image file as the checkpoint's eval transform sees it (timm's).

    `crop_mode="center"` resizes the shorter side to
    `floor(resolution / crop_pct)`, keeping the aspect ratio; `"squash"`
    resizes both sides to it. Then the centre `resolution x resolution` crop
    is taken. `PRESETS` records each checkpoint's `crop_pct`, `crop_mode` and
    `interpolation`. Returns float32 RGB in `[0, 255]`, shape
    `(resolution, resolution, 3)`.
    """
    from PIL import Image, UnidentifiedImageError

    methods = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}
    if crop_mode not in CROP_MODES:
        raise ValueError(
            f"`crop_mode` must be one of {CROP_MODES}. Received: crop_mode={crop_mode!r}"
        )
    if interpolation not in methods:
        raise ValueError(
            f"`interpolation` must be one of {list(methods)}. "
            f"Received: interpolation={interpolation!r}"
        )
    if (
        isinstance(crop_pct, bool)
        or not isinstance(crop_pct, (int, float))
        or not 0 < crop_pct <= 1
    ):
        raise ValueError(f"`crop_pct` must be in (0, 1]. Received: crop_pct={crop_pct!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No such image file: {path!r}")
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"Could not read {path!r} as an image: {e}") from e
    scale_size = math.floor(resolution / crop_pct)
    width, height = image.size
    if crop_mode == "squash":
        size = (scale_size, scale_size)
    # Shorter side to scale_size, the longer one truncated, as torchvision does.
    elif width <= height:
        size = (scale_size, int(scale_size * height / width))
    else:
        size = (int(scale_size * width / height), scale_size)
    image = image.resize(size, methods[interpolation])
    left = int(round((size[0] - resolution) / 2.0))
    top = int(round((size[1] - resolution) / 2.0))
    image = image.crop((left, top, left + resolution, top + resolution))
    return np.asarray(image, dtype="float32")

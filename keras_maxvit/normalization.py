"""The preprocessing that goes with a model's weights: mean/std and eval transform.

A checkpoint expects images normalized as in its training, `(x / 255 - mean)
/ std`, and resized as in its evaluation (`crop_pct`, `crop_mode`,
`interpolation`). `model_normalization` decides a model's mean/std:

1. the `normalization` argument, where given;
2. a named checkpoint (`"imagenet"`, a timm tag): its `PRESETS` entry;
3. a weights file: what it records, `checkpoint_preprocessing`: keras_maxvit
   cache metadata, timm's `config.json` beside a `.safetensors`/`.bin`/`.pth`
   file (the Hugging Face Hub layout), or the `preprocessing` layer of a
   `.keras` file;
4. otherwise the statistics of the official checkpoints of the input size
   (`default_normalization`), with a warning when a weights file said
   nothing.
"""

import json
import math
import numbers
import os
import warnings
import zipfile

from keras_maxvit.presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    PRESETS,
)

NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "inception": (INCEPTION_MEAN, INCEPTION_STD),
}
CROP_MODES = ("center", "squash")
INTERPOLATIONS = ("bicubic", "bilinear")
# The fields of a preprocessing record, as timm's pretrained_cfg names them.
FIELDS = ("mean", "std", "crop_pct", "crop_mode", "interpolation")
# The "format" metadata of the converted files of keras_maxvit's cache (weights.py writes them).
CACHE_FORMAT = "keras_maxvit"


def default_normalization(image_size: tuple) -> tuple[tuple, tuple]:
    """Mean and std of the official ImageNet-1k checkpoint of an input size.

    The 224x224 checkpoints were trained on ImageNet mean/std normalized
    images; the 384 and 512 ones on `(x - 0.5) / 0.5`.
    """
    if tuple(image_size) in ((384, 384), (512, 512)):
        return INCEPTION_MEAN, INCEPTION_STD
    return IMAGENET_MEAN, IMAGENET_STD


def default_eval_transform(size: int) -> dict:
    """The eval transform of the official checkpoints of an input side."""
    if size in (384, 512):
        return {"crop_pct": 1.0, "crop_mode": "squash", "interpolation": "bicubic"}
    return {
        "crop_pct": 0.95 if size == 224 else 1.0,
        "crop_mode": "center",
        "interpolation": "bicubic",
    }


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _channels(value) -> tuple[float, ...] | None:
    """A per-channel statistic as 3 floats (one float is broadcast), or None if not one."""
    if hasattr(value, "tolist"):  # a NumPy array or scalar
        value = value.tolist()
    if _is_number(value):
        value = (value,) * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        return None
    if not all(_is_number(v) for v in value):
        return None
    if not all(math.isfinite(v) for v in value):
        return None
    return tuple(float(v) for v in value)


def validate_normalization(
    normalization, include_preprocessing: bool = True
) -> tuple[tuple, tuple] | None:
    """`normalization` as `(mean, std)` 3-tuples, or None (follow the weights)."""
    if normalization is None:
        return None
    if not include_preprocessing:
        raise ValueError(
            "`normalization` sets the mean/std of the model's own preprocessing, so it "
            "needs `include_preprocessing=True`. Received: normalization="
            f"{normalization!r} with include_preprocessing={include_preprocessing!r}"
        )
    if isinstance(normalization, str):
        if normalization in NORMALIZATIONS:
            return NORMALIZATIONS[normalization]
    elif isinstance(normalization, (list, tuple)) and len(normalization) == 2:
        mean, std = _channels(normalization[0]), _channels(normalization[1])
        if mean is not None and std is not None and min(std) > 0:
            return mean, std
    raise ValueError(
        "`normalization` must be None (the weights' own), 'imagenet' (ImageNet "
        "mean/std), 'inception' (0.5/0.5) or a (mean, std) pair of floats or of "
        "3 floats each, std positive, for RGB in [0, 1]. "
        f"Received: normalization={normalization!r}"
    )


def scale_and_offset(mean, std) -> tuple[list[float], list[float]]:
    """`(x / 255 - mean) / std` as `x * scale + offset` (the Rescaling layer's arguments)."""
    scale = [1.0 / (255.0 * s) for s in std]
    offset = [-m / s for m, s in zip(mean, std, strict=True)]
    return scale, offset


def from_scale_and_offset(scale, offset) -> tuple[tuple, tuple] | None:
    """The mean/std of a Rescaling layer's `scale` and `offset`; None if not such a layer."""
    scale, offset = _channels(scale), _channels(offset)
    if scale is None or offset is None or min(scale) <= 0:
        return None
    std = tuple(round(1.0 / (255.0 * s), 9) for s in scale)
    mean = tuple(round(-o * s, 9) for o, s in zip(offset, std, strict=True))
    return mean, std


def _record(fields: dict, source: str) -> dict | None:
    """The known preprocessing fields of `fields` (timm's names), validated."""
    record = {}
    if "mean" in fields and "std" in fields:
        mean, std = _channels(fields["mean"]), _channels(fields["std"])
        if mean is None or std is None or min(std) <= 0:
            raise ValueError(
                f"{source} records an invalid normalization. "
                f"Received: mean={fields['mean']!r}, std={fields['std']!r}"
            )
        record.update(mean=mean, std=std)
    crop_pct = fields.get("crop_pct")
    if _is_number(crop_pct) and 0 < crop_pct <= 1:
        record["crop_pct"] = float(crop_pct)
    if fields.get("crop_mode") in CROP_MODES:
        record["crop_mode"] = fields["crop_mode"]
    if fields.get("interpolation") in INTERPOLATIONS:
        record["interpolation"] = fields["interpolation"]
    input_size = fields.get("input_size")
    if isinstance(input_size, (list, tuple)) and len(input_size) == 3:
        if input_size[1] == input_size[2] and isinstance(input_size[1], int):
            record["resolution"] = input_size[1]
    if isinstance(fields.get("resolution"), int):
        record["resolution"] = fields["resolution"]
    return record or None


def cache_metadata(tag: str) -> dict[str, str]:
    """The preprocessing of checkpoint `tag` as safetensors metadata (strings)."""
    preset = PRESETS[tag]
    metadata = {key: json.dumps(preset[key]) for key in FIELDS}
    metadata["resolution"] = json.dumps(preset["resolution"])
    return metadata


def _cache_preprocessing(metadata: dict, source: str) -> dict | None:
    """What a keras_maxvit cache file's metadata records (older ones: only the source tag)."""
    if "mean" in metadata:
        try:
            fields = {
                key: json.loads(metadata[key]) for key in (*FIELDS, "resolution") if key in metadata
            }
        except (TypeError, ValueError):
            raise ValueError(f"{source} has unreadable preprocessing metadata.") from None
        return _record(fields, source)
    tag = metadata.get("source", "").removeprefix("timm/")
    return _record(PRESETS[tag], source) if tag in PRESETS else None


def _safetensors_metadata(path: str) -> dict:
    try:
        from safetensors import safe_open

        with safe_open(path, framework="numpy") as f:
            return f.metadata() or {}
    except Exception:
        return {}  # loading the weights reports what is wrong with the file


def _timm_config(path: str) -> dict | None:
    """The preprocessing in timm's `config.json` beside a checkpoint file, if there is one."""
    config_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    if not os.path.isfile(config_path):
        return None
    try:
        with open(config_path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    # timm >= 0.8 nests the data config in "pretrained_cfg"; older exports are flat.
    fields = config.get("pretrained_cfg", config)
    if not isinstance(fields, dict):
        return None
    return _record(fields, f"The timm config {config_path!r}")


BACKBONE = "keras_maxvit>MaxViTBackbone"


def _first_in_config(node, visit):
    """Depth first, the first `visit(class_name, layer_config)` that is not None in a
    `.keras` config (nested models included)."""
    if isinstance(node, dict):
        layer = node.get("config")
        if isinstance(layer, dict):
            # A registered class by its registered name ("keras_maxvit>MaxViTBackbone"), so
            # a class of the same name from another package (keras_maxvit.hub) is not taken.
            registered = node.get("registered_name")
            name = registered if registered and ">" in registered else node.get("class_name")
            found = visit(name, layer)
            if found is not None:
                return found
        children = node.values()
    elif isinstance(node, list):
        children = node
    else:
        return None
    for child in children:
        found = _first_in_config(child, visit)
        if found is not None:
            return found
    return None


def _normalization_of(class_name, layer: dict):
    """The mean/std a layer config applies: the `preprocessing` Rescaling, a MaxViTBackbone."""
    if class_name == "Rescaling" and layer.get("name") == "preprocessing":
        return from_scale_and_offset(layer.get("scale"), layer.get("offset"))
    if class_name == BACKBONE and layer.get("include_preprocessing", True):
        if layer.get("normalization") is not None:
            return validate_normalization(layer["normalization"])
        shape = layer.get("input_shape") or (224, 224, 3)
        return default_normalization(tuple(shape[:2]))
    return None


def _side_of(class_name, layer: dict) -> int | None:
    """The side of a square input of fixed size: an InputLayer's, a MaxViTBackbone's."""
    if class_name == "InputLayer":
        shape = (layer.get("batch_shape") or [None])[1:]
    elif class_name == BACKBONE:
        shape = layer.get("input_shape")
    else:
        return None
    if isinstance(shape, (list, tuple)) and len(shape) == 3:
        height, width = shape[0], shape[1]
        return height if isinstance(height, int) and height == width else None
    return None


def _keras_file_normalization(path: str) -> dict | None:
    """The mean/std of the `preprocessing` layer in a `.keras` file's config, and its input side."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # loading the weights reports what is wrong with the file
    record = {}
    found = _first_in_config(config, _normalization_of)
    if found is not None:
        record.update(mean=found[0], std=found[1])
    side = _first_in_config(config, _side_of)
    if side is not None:
        record["resolution"] = side
    return record or None


def checkpoint_preprocessing(path: str) -> dict | None:
    """The preprocessing a weights file records, as timm's field names; None if it says nothing.

    Fields, where known: `mean`, `std`, `crop_pct`, `crop_mode`,
    `interpolation`, `resolution`. Read from keras_maxvit's cache metadata,
    timm's `config.json` beside a `.safetensors`, `.bin` or `.pth` file, or
    the `preprocessing` layer of a `.keras` file. A `.weights.h5` file holds
    no preprocessing.
    """
    path = os.fspath(path)
    if path.endswith(".safetensors"):
        metadata = _safetensors_metadata(path)
        if metadata.get("format") == CACHE_FORMAT:
            return _cache_preprocessing(metadata, f"The weights file {path!r}")
        return _timm_config(path)
    if path.endswith((".bin", ".pth")):
        return _timm_config(path)
    if path.endswith(".keras"):
        return _keras_file_normalization(path)
    return None


def file_normalization(path: str, image_size: tuple, stacklevel: int = 2) -> tuple[tuple, tuple]:
    """The mean/std a weights file records; else the input size's default, with a warning."""
    record = checkpoint_preprocessing(path) or {}
    if "mean" in record:
        return record["mean"], record["std"]
    mean, std = default_normalization(image_size)
    if path.endswith(".weights.h5"):
        why = "a .weights.h5 file holds no preprocessing"
    elif path.endswith(".keras"):
        why = "the .keras model has no `preprocessing` layer"
    else:
        why = "it has no keras_maxvit metadata and no timm config.json beside it"
    kind = "ImageNet" if mean == IMAGENET_MEAN else "0.5/0.5"
    known = all(side is not None for side in image_size)
    size = "x".join(str(side) for side in image_size) if known else "unknown-size"
    warnings.warn(
        f"The weights file {path!r} does not record its normalization ({why}): the "
        f"model assumes mean={mean} and std={std} ({kind}, as the official "
        f"checkpoints of a {size} input). Pass `normalization=` ('imagenet', "
        "'inception' or a (mean, std) pair) to say which.",
        stacklevel=stacklevel + 1,
    )
    return mean, std


def model_normalization(
    normalization, checkpoint: str | None, weights, image_size: tuple, stacklevel: int = 2
) -> tuple[tuple, tuple]:
    """The `(mean, std)` a model's `preprocessing` layer applies (see the module docstring)."""
    chosen = validate_normalization(normalization)
    if chosen is not None:
        return chosen
    if checkpoint is not None:
        return PRESETS[checkpoint]["mean"], PRESETS[checkpoint]["std"]
    if weights is not None:
        return file_normalization(os.fspath(weights), image_size, stacklevel=stacklevel + 1)
    return default_normalization(image_size)

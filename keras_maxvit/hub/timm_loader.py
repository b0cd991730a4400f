"""timm's MaxViT checkpoints (`maxvit_*_tf_*`) in keras-hub's `from_preset`.

keras-hub reads a preset's `config.json`; a timm one (it has an
`"architecture"`) goes to its `TimmPresetLoader`, which converts a fixed list
of architectures and refuses MaxViT. `register()` puts a subclass in its
place that hands MaxViT configs to `MaxViTTimmPresetLoader` and every other
one to keras-hub's own loader, so that once `keras_maxvit.hub` is imported
`keras_hub.models.Backbone.from_preset("hf://timm/maxvit_tiny_tf_224.in1k")`,
`ImageClassifier.from_preset(...)` and `ImageConverter.from_preset(...)` load
MaxViT like any timm model keras-hub knows.

The weights go through the core package's conversion (`convert_state_dict`,
`load_state`, which also resizes the bias tables for another `image_shape`);
the image converter gets the checkpoint's `pretrained_cfg` (mean/std, crop,
interpolation). A `model_args` entry of the config (timm's keyword overlays
of its MaxxVit config, as `timm.create_model` applies them) is honoured for
the architecture arguments `MaxViTBackbone` has.
"""

import re

from keras_hub.models import ImageClassifier
from keras_hub.src.utils.preset_utils import (
    SAFETENSOR_FILE,
    PresetLoader,
    get_file,
    jax_memory_cleanup,
)
from keras_hub.src.utils.timm import preset_loader as keras_hub_timm

from keras_maxvit.hub.maxvit_backbone import MaxViTBackbone
from keras_maxvit.models.maxvit import MODEL_CONFIGS, NETWORK_STRIDE
from keras_maxvit.normalization import (
    CROP_MODES,
    INTERPOLATIONS,
    default_eval_transform,
    default_normalization,
    scale_and_offset,
    validate_normalization,
)
from keras_maxvit.timm_convert import convert_state_dict, timm_key
from keras_maxvit.weights import load_state, read_safetensors

ARCHITECTURE = re.compile(r"^maxvit_(tiny|small|base|large|xlarge)_tf_(\d+)$")
# timm `model_args` (keyword overlays of timm's MaxxVit config, as timm >= 1.0 records
# them) -> the MaxViTBackbone argument each one sets ...
BACKBONE_MODEL_ARGS = {
    "stem_width": "stem_filters",
    "embed_dim": "stage_filters",
    "depths": "depths",
    "transformer_dim_head": "head_size",
    "drop_path_rate": "drop_path_rate",
}
# ... and those of the classifier.
HEAD_MODEL_ARGS = {
    "head_hidden_size": "head_hidden_size",
    "global_pool": "pooling",
    "drop_rate": "dropout",
}
# The input size and channels (`image_shape`), and the classes (`config["num_classes"]`).
OTHER_MODEL_ARGS = ("img_size", "in_chans", "num_classes")


def maxvit_architecture(config: dict) -> tuple[str, int] | None:
    """`(variant, resolution)` of a timm config of a MaxViT (TF weights); None otherwise."""
    match = ARCHITECTURE.match(str(config.get("architecture", "")))
    return (match.group(1), int(match.group(2))) if match else None


def _model_args(config: dict, preset) -> dict:
    args = config.get("model_args") or {}
    known = set(BACKBONE_MODEL_ARGS) | set(HEAD_MODEL_ARGS) | set(OTHER_MODEL_ARGS)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ValueError(
            f"The timm config of preset {preset!r} has `model_args` that keras_maxvit.hub "
            f"does not build: {unknown}. Received: model_args={args!r}"
        )
    return args


def _as_tuple(value):
    return tuple(value) if isinstance(value, (list, tuple)) else value


def _image_size(config: dict, preset) -> tuple[int, int]:
    """The checkpoint's input `(height, width)`: `model_args`, `pretrained_cfg`, its name."""
    size = _model_args(config, preset).get("img_size")
    if size is None:
        input_size = (config.get("pretrained_cfg") or {}).get("input_size")
        size = tuple(input_size[1:]) if input_size else maxvit_architecture(config)[1]
    return (size, size) if isinstance(size, int) else tuple(size)


def backbone_config(config: dict, preset) -> dict:
    """The `MaxViTBackbone` arguments of a timm MaxViT config."""
    variant, _ = maxvit_architecture(config)
    architecture = MODEL_CONFIGS[variant]
    args = _model_args(config, preset)
    kwargs = {key: architecture[key] for key in ("stem_filters", "stage_filters", "depths")}
    for timm_name, name in BACKBONE_MODEL_ARGS.items():
        if timm_name in args:
            kwargs[name] = _as_tuple(args[timm_name])
    kwargs["image_shape"] = (*_image_size(config, preset), args.get("in_chans", 3))
    return kwargs


def classifier_config(config: dict, preset) -> dict:
    """The `MaxViTImageClassifier` head arguments of a timm MaxViT config."""
    variant, _ = maxvit_architecture(config)
    kwargs = {"head_hidden_size": MODEL_CONFIGS[variant]["head_hidden_size"]}
    args = _model_args(config, preset)
    for timm_name, name in HEAD_MODEL_ARGS.items():
        if timm_name in args:
            kwargs[name] = args[timm_name]
    return kwargs


def image_converter_config(config: dict, preset) -> dict:
    """`MaxViTImageConverter` arguments from the checkpoint's `pretrained_cfg`.

    Fields it does not record take the values of the official checkpoints
    of its input size (`default_eval_transform`, `default_normalization`).
    """
    fields = config.get("pretrained_cfg") or {}
    height, width = _image_size(config, preset)
    transform = default_eval_transform(height if height == width else 0)
    mean, std = default_normalization((height, width))
    if "mean" in fields and "std" in fields:
        mean, std = validate_normalization((fields["mean"], fields["std"]))
    crop_pct = fields.get("crop_pct", transform["crop_pct"])
    crop_mode = fields.get("crop_mode", transform["crop_mode"])
    interpolation = fields.get("interpolation", transform["interpolation"])
    if crop_mode not in CROP_MODES or interpolation not in INTERPOLATIONS:
        raise ValueError(
            f"The timm config of preset {preset!r} has an eval transform MaxViTImageConverter "
            f"does not support: crop_mode in {CROP_MODES}, interpolation in "
            f"{INTERPOLATIONS}. Received: crop_mode={crop_mode!r}, "
            f"interpolation={interpolation!r}"
        )
    scale, offset = scale_and_offset(mean, std)
    return {
        "image_size": (height, width),
        "scale": scale,
        "offset": offset,
        "crop_pct": crop_pct,
        "crop_to_aspect_ratio": crop_mode == "center",
        "interpolation": interpolation,
        "antialias": True,  # as PIL resizes in timm's eval transform
    }


def load_head(task, state: dict, source: str, include_classifier: bool) -> None:
    """Copies a checkpoint's head (norm, pre-logits, and the classifier if asked) into `task`."""
    has_pre_logits = "head.pre_logits.fc.weight" in state
    if has_pre_logits != (task.pre_logits is not None):
        raise ValueError(
            f"{source} has {'a' if has_pre_logits else 'no'} tanh pre-logits layer in its head "
            f"but the classifier has {'one' if task.pre_logits is not None else 'none'}. "
            f"Received: head_hidden_size={task.head_hidden_size!r}"
        )
    layers = [task.head_norm, task.pre_logits] + ([task.output_dense] if include_classifier else [])
    assignments = []
    for layer in filter(None, layers):
        for variable in layer.weights:
            key = timm_key(f"{layer.name}/{variable.name}")
            value = state.get(key)
            if value is None or value.shape != tuple(variable.shape):
                found = "missing" if value is None else f"of shape {value.shape}"
                raise ValueError(
                    f"{source} does not fit the head of {task.name!r}: tensor {key!r} is "
                    f"{found}, the weight {variable.path!r} has shape {tuple(variable.shape)}."
                )
            assignments.append((variable, value))
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))


class MaxViTTimmPresetLoader(PresetLoader):
    """Loads a timm MaxViT preset (`config.json` + `model.safetensors`) into keras-hub classes."""

    def __init__(self, preset, config):
        super().__init__(preset, config)
        self._state = None

    def check_backbone_class(self):
        return MaxViTBackbone

    def checkpoint_state(self) -> dict:
        """The checkpoint in the Keras layout (timm keys), read once per loader."""
        if self._state is None:
            path = get_file(self.preset, SAFETENSOR_FILE)
            arrays, _ = read_safetensors(path, hint=f" (preset {self.preset!r})")
            self._state = convert_state_dict(arrays)
        return self._state

    def _source(self) -> str:
        return f"The timm checkpoint of preset {self.preset!r}"

    def load_backbone(self, cls, load_weights, **kwargs):
        config = backbone_config(self.config, self.preset)
        image_shape = kwargs.get("image_shape")
        if image_shape is not None and None in tuple(image_shape)[:2]:
            # Any size: the attention window the checkpoint was trained with.
            if kwargs.get("window_size") is None:
                rows, cols = (side // NETWORK_STRIDE for side in config["image_shape"][:2])
                kwargs["window_size"] = rows if rows == cols else (rows, cols)
        backbone = cls(**{**config, **{k: v for k, v in kwargs.items() if v is not None}})
        if load_weights:
            jax_memory_cleanup(backbone)
            load_state(backbone, self.checkpoint_state(), source=self._source())
        return backbone

    def load_image_converter(self, cls, **kwargs):
        return cls(**{**image_converter_config(self.config, self.preset), **kwargs})

    def load_task(self, cls, load_weights, load_task_weights, **kwargs):
        if not issubclass(cls, ImageClassifier):
            return super().load_task(cls, load_weights, load_task_weights, **kwargs)
        if "backbone" not in kwargs:
            backbone_kwargs, kwargs = self.get_backbone_kwargs(**kwargs)
            kwargs["backbone"] = self.load_backbone(
                cls.backbone_cls, load_weights, **backbone_kwargs
            )
        if "preprocessor" not in kwargs and cls.preprocessor_cls:
            converter_kwargs = {}
            image_shape = tuple(kwargs["backbone"].input.shape[1:3])
            if None not in image_shape:  # resize to the backbone's size (`image_shape=`)
                converter_kwargs["image_size"] = image_shape
            converter = self.load_image_converter(
                cls.preprocessor_cls.image_converter_cls, **converter_kwargs
            )
            kwargs["preprocessor"] = cls.preprocessor_cls(image_converter=converter)
        for key, value in classifier_config(self.config, self.preset).items():
            kwargs.setdefault(key, value)
        if load_task_weights:
            kwargs["num_classes"] = self.config["num_classes"]
        task = cls(**kwargs)
        if load_weights:
            # A new classifier (`num_classes=`) on the checkpoint's norm and pre-logits, as timm.
            load_head(task, self.checkpoint_state(), self._source(), load_task_weights)
        return task


class TimmPresetLoader(keras_hub_timm.TimmPresetLoader):
    """keras-hub's `TimmPresetLoader`, which also takes timm's MaxViT checkpoints."""

    def __new__(cls, preset, config):
        if maxvit_architecture(config) is not None:
            return MaxViTTimmPresetLoader(preset, config)
        return super().__new__(cls)


def register() -> None:
    """Makes keras-hub's `from_preset` hand timm MaxViT configs to `MaxViTTimmPresetLoader`."""
    if not issubclass(keras_hub_timm.TimmPresetLoader, TimmPresetLoader):
        keras_hub_timm.TimmPresetLoader = TimmPresetLoader

"""The 21 official MaxViT checkpoints as keras-hub built-in presets.

Each preset is a timm checkpoint tag (`keras_maxvit.presets.PRESETS`) whose
handle is its Hugging Face repository, `hf://timm/<tag>`: keras-hub fetches
`config.json` and `model.safetensors` with `huggingface_hub` (so its cache,
`HF_HUB_OFFLINE` and mirrors apply) and `keras_maxvit.hub.timm_loader`
converts them with the core package's conversion.
"""

from keras_maxvit.models.maxvit import MODEL_CONFIGS, count_parameters
from keras_maxvit.presets import PRESETS

_TRAINING = {
    "in1k": "trained on ImageNet-1k",
    "in21k": "trained on ImageNet-21k (21843 classes)",
    "in21k_ft_in1k": "pre-trained on ImageNet-21k and fine-tuned on ImageNet-1k",
}


def _preset(tag: str, preset: dict) -> dict:
    variant, resolution = preset["variant"], preset["resolution"]
    top1 = f", {preset['top1']}% ImageNet-1k top-1" if preset["top1"] else ""
    return {
        "metadata": {
            "description": (
                f"MaxViT-{variant.title()} {_TRAINING[tag.split('.')[1]]} at "
                f"{resolution}x{resolution}{top1} (official weights, as timm publishes them)."
            ),
            "params": count_parameters(MODEL_CONFIGS[variant], preset["classes"], resolution),
            "path": "maxvit",
        },
        "kaggle_handle": f"hf://timm/{tag}",
    }


backbone_presets = {tag: _preset(tag, preset) for tag, preset in PRESETS.items()}

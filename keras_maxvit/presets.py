"""The 21 official MaxViT checkpoints, as timm publishes them (`arch.tag`).

Each entry records what a checkpoint needs to be used correctly: its variant
and input resolution, the number of classes, the normalization it was trained
with, the eval transform (crop fraction, crop mode, interpolation), and the ImageNet-1k
top-1 published in the official README where there is one.
"""

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)

# Official README, ImageNet-1k top-1 (%) of the ImageNet-1k-trained models.
_IN1K_TOP1 = {
    ("tiny", 224): 83.62,
    ("tiny", 384): 85.24,
    ("tiny", 512): 85.72,
    ("small", 224): 84.45,
    ("small", 384): 85.74,
    ("small", 512): 86.19,
    ("base", 224): 84.95,
    ("base", 384): 86.34,
    ("base", 512): 86.66,
    ("large", 224): 85.17,
    ("large", 384): 86.40,
    ("large", 512): 86.70,
}


def _entry(variant: str, resolution: int, tag: str) -> tuple[str, dict]:
    imagenet_norm = resolution == 224 and tag == "in1k"
    preset = {
        "variant": variant,
        "resolution": resolution,
        "classes": 21843 if tag == "in21k" else 1000,
        "mean": IMAGENET_MEAN if imagenet_norm else INCEPTION_MEAN,
        "std": IMAGENET_STD if imagenet_norm else INCEPTION_STD,
        "crop_pct": 0.95 if resolution == 224 else 1.0,
        # timm's eval resize: "center" keeps the aspect ratio and crops the
        # centre; "squash" resizes both sides (the 384 and 512 checkpoints).
        "crop_mode": "center" if resolution == 224 else "squash",
        "interpolation": "bicubic",
        "top1": _IN1K_TOP1.get((variant, resolution)) if tag == "in1k" else None,
    }
    return f"maxvit_{variant}_tf_{resolution}.{tag}", preset


PRESETS = dict(
    [_entry(v, r, "in1k") for v in ("tiny", "small", "base", "large") for r in (224, 384, 512)]
    + [_entry(v, 224, "in21k") for v in ("base", "large", "xlarge")]
    + [_entry(v, r, "in21k_ft_in1k") for v in ("base", "large", "xlarge") for r in (384, 512)]
)

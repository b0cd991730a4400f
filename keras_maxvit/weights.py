"""Loading weights into keras_maxvit models: files, checkpoint names, the Hub."""

import os

import numpy as np

from keras_maxvit.presets import PRESETS
from keras_maxvit.timm_convert import TRANSFORMS, resize_bias_table, timm_key

# Checkpoint entries that have no Keras counterpart by design.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Reads a `.safetensors` file into NumPy arrays (no torch needed)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(
            f"Could not read the safetensors checkpoint {path!r} ({e}). "
            "Is the file complete and in safetensors format?"
        ) from e


HF_PREFIX = "hf://timm/"
ALIASES = ("imagenet", "imagenet21k", "imagenet21k-ft1k")
_ALIAS_TAGS = {"imagenet": "in1k", "imagenet21k": "in21k", "imagenet21k-ft1k": "in21k_ft_in1k"}


def is_named_weights(weights) -> bool:
    """Whether `weights` names a published checkpoint (not a local file)."""
    return isinstance(weights, str) and (
        weights in ALIASES or weights in PRESETS or weights.startswith(HF_PREFIX)
    )


def resolve_checkpoint(weights: str, variant: str | None, resolution: int) -> str:
    """The timm tag (`maxvit_tiny_tf_224.in1k`) that `weights` names for a model.

    Aliases pick the checkpoint of the model's variant at the published
    resolution nearest to the model's input (its bias tables are resized
    when they differ); a full tag or `hf://timm/<tag>` must be of the
    model's variant.
    """
    if variant is None:
        raise ValueError(
            "Pretrained weights by name exist only for the official variants "
            "(MaxViTTiny ... MaxViTXLarge), not for a custom configuration. "
            f"Received: weights={weights!r}"
        )
    if weights in ALIASES:
        suffix = _ALIAS_TAGS[weights]
        candidates = {
            preset["resolution"]: tag
            for tag, preset in PRESETS.items()
            if preset["variant"] == variant and tag.endswith("." + suffix)
        }
        if not candidates:
            available = sorted(
                {
                    a
                    for a in ALIASES
                    for t in PRESETS
                    if t.startswith(f"maxvit_{variant}_tf_") and t.endswith("." + _ALIAS_TAGS[a])
                }
            )
            raise ValueError(
                f"There is no {weights!r} checkpoint of MaxViT-{variant}; it has "
                f"{available}. Received: weights={weights!r}"
            )
        nearest = min(candidates, key=lambda r: (abs(r - resolution), r))
        return candidates[nearest]
    tag = weights.removeprefix(HF_PREFIX)
    if tag not in PRESETS:
        raise ValueError(
            f"Unknown checkpoint {tag!r}. Valid names: {list(ALIASES)} or one of "
            f"{sorted(PRESETS)}. Received: weights={weights!r}"
        )
    if PRESETS[tag]["variant"] != variant:
        raise ValueError(
            f"Checkpoint {tag!r} is of MaxViT-{PRESETS[tag]['variant']}, not of "
            f"MaxViT-{variant}. Received: weights={weights!r}"
        )
    return tag


def download_checkpoint(tag: str) -> str:
    """Local path of a checkpoint's `model.safetensors`, from the Hugging Face Hub.

    Goes through `huggingface_hub.hf_hub_download`, so `HF_HOME`,
    `HF_HUB_CACHE`, `HF_HUB_OFFLINE`, tokens and mirrors behave as usual and
    a second call reads the local cache.
    """
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise ImportError(
            "Downloading pretrained weights needs `huggingface_hub`: pip install huggingface_hub"
        ) from e
    try:
        return hf_hub_download(repo_id=f"timm/{tag}", filename="model.safetensors")
    except Exception as e:
        raise OSError(
            f"Could not get the checkpoint 'timm/{tag}' from the Hugging Face Hub or "
            f"its local cache ({type(e).__name__}: {e})."
        ) from e


def load_timm_state_dict(
    model, state_dict, source: str = "the checkpoint", skip_classifier: bool = False
) -> None:
    """Copies a timm `maxvit_*_tf_*` state dict into `model`.

    Every Keras weight must find its tensor, with the right shape, and every
    checkpoint tensor must be used (the classification head's may be left
    out when the model has no head). Relative-position bias tables of another
    window size (a checkpoint of another input resolution) are resized as
    timm resizes them. Nothing is assigned unless the whole checkpoint fits.
    """
    assignments = []
    used = set()
    skipped = set()
    for variable in model.weights:
        key, transform = timm_key(variable.path, len(variable.shape))
        if skip_classifier and key.startswith("head.fc."):
            skipped.add(key)
            continue
        if key not in state_dict:
            raise ValueError(
                f"{source} has no tensor {key!r} for the model weight "
                f"{variable.path!r}: it is not a timm maxvit_*_tf checkpoint of "
                f"this variant (model {model.name!r})."
            )
        tensor = np.asarray(state_dict[key])
        value = TRANSFORMS[transform](tensor)
        if key.endswith("relative_position_bias_table") and value.shape[0] == variable.shape[0]:
            # Another input resolution: resample the table as timm does.
            value = resize_bias_table(value, tuple(variable.shape))
        if value.shape != tuple(variable.shape):
            raise ValueError(
                f"{source} does not fit model {model.name!r}: tensor {key!r} has "
                f"shape {tensor.shape} (Keras layout {value.shape}) but the weight "
                f"{variable.path!r} has shape {tuple(variable.shape)}. It is a "
                "checkpoint of another variant or number of classes."
            )
        assignments.append((variable, value))
        used.add(key)

    has_head = any(key.startswith("head.") for key in used | skipped)
    unused = [
        key
        for key in state_dict
        if key not in used
        and key not in skipped
        and not key.endswith(_IGNORED_SUFFIXES)
        and (has_head or not key.startswith("head."))
    ]
    if unused:
        raise ValueError(
            f"{source} has {len(unused)} tensors that model {model.name!r} does "
            f"not use, first {unused[0]!r}: it is a checkpoint of another variant."
        )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))


def load_weights(model, path: str) -> None:
    """Loads a timm `.safetensors` checkpoint or a Keras `.weights.h5` file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The weights file does not exist. Received: weights={path!r}")
    if path.endswith(".weights.h5"):
        model.load_weights(path)
    elif path.endswith(".safetensors"):
        load_timm_state_dict(model, read_safetensors(path), source=f"The checkpoint {path!r}")
    else:
        raise ValueError(
            "Weights files must end in `.safetensors` (timm checkpoint) or "
            f"`.weights.h5` (Keras). Received: weights={path!r}"
        )

"""Loading weights into keras_maxvit models: files, checkpoint names, the Hub.

Every source is first turned into one form, a *state*: a dict from timm
checkpoint key to a NumPy array already in the Keras layout
(`timm_convert.convert_state_dict`). `load_state` then copies it into a model
of any resolution, with or without its classification head.
"""

import os
import tempfile
import warnings

import numpy as np

from keras_maxvit.normalization import CACHE_FORMAT, cache_metadata
from keras_maxvit.presets import PRESETS
from keras_maxvit.timm_convert import (
    convert_state_dict,
    is_maxvit_layer,
    resize_bias_table,
    timm_key,
)

# Marks the converted files that keras_maxvit writes to its own cache.
_CACHE_FORMAT = {"format": CACHE_FORMAT, "layout": "keras"}
WEIGHTS_SUFFIXES = (".safetensors", ".weights.h5", ".keras", ".bin", ".pth")


def read_safetensors(path: str, hint: str = "") -> tuple[dict, dict]:
    """Reads a `.safetensors` file into NumPy arrays and its metadata (no torch)."""
    from safetensors import SafetensorError, safe_open

    try:
        arrays = {}
        with safe_open(path, framework="numpy") as f:
            metadata = f.metadata() or {}
            for key in f.keys():
                arrays[key] = f.get_tensor(key)
    except (SafetensorError, OSError, ValueError, TypeError) as e:
        raise ValueError(
            f"Could not read the safetensors file {path!r} ({e}). The file is "
            f"truncated, corrupt or not in safetensors format.{hint}"
        ) from e
    return arrays, metadata


def read_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Reads a PyTorch `.bin`/`.pth` state dict with `weights_only=True` (no code runs)."""
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading the PyTorch checkpoint {path!r} needs torch; convert it to "
            ".safetensors or install torch."
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"Could not read the PyTorch checkpoint {path!r} as a plain state dict "
            f"with torch.load(weights_only=True): {type(e).__name__}: {e}"
        ) from e
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(hasattr(v, "numpy") for v in state.values()):
        raise ValueError(f"The PyTorch checkpoint {path!r} is not a state dict of tensors.")
    return {k: v.detach().float().numpy() for k, v in state.items()}


def state_from_keras_file(path: str) -> dict[str, np.ndarray]:
    """The state of the MaxViT in a model saved as a `.keras` file (it may be nested)."""
    import keras

    try:
        source = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as e:
        raise ValueError(
            f"Could not load {path!r} as a keras_maxvit `.keras` model: {type(e).__name__}: {e}"
        ) from e
    try:
        named = maxvit_weights(source)
    except ValueError as e:
        raise ValueError(f"{path!r} holds no keras_maxvit MaxViT model: {e}") from e
    state = {}
    for variable_path, variable in named:
        try:
            state[timm_key(variable_path)] = keras.ops.convert_to_numpy(variable)
        except KeyError as e:
            raise ValueError(
                f"{path!r} is not a keras_maxvit MaxViT model: it has the weight {variable.path!r}."
            ) from e
    return state


def _is_maxvit(model) -> bool:
    return any(layer.name == "stem_conv1" for layer in getattr(model, "layers", ()))


def maxvit_weights(model) -> list:
    """`(path below the MaxViT, variable)` for every weight of the MaxViT in `model`.

    `model` is a keras_maxvit MaxViT, or a model that holds exactly one (a
    `Sequential` or functional wrapper, a subclassed model, or one graph of a
    MaxViT built on `input_tensor` and the user's own layers, which are left
    out). Paths start at
    the MaxViT's own layer (`stem_conv1/kernel`) whatever name scopes the
    model was built in (`encoder/stem_conv1/kernel`), so checkpoint keys do
    not depend on where the MaxViT sits.
    """
    import keras

    if _is_maxvit(model):
        core = model
    else:
        found = [
            layer
            for layer in model._flatten_layers(include_self=False)
            if isinstance(layer, keras.Model) and _is_maxvit(layer)
        ]
        if len(found) != 1:
            raise ValueError(
                f"Model {model.name!r} holds {len(found)} keras_maxvit MaxViT models; "
                "weights load into one. Pass the MaxViT itself."
            )
        core = found[0]
    named = []
    for layer in core.layers:
        if not is_maxvit_layer(layer.name):  # a user's own layers in the same graph
            continue
        for variable in layer.weights:
            parts = variable.path.split("/")
            # Scopes above the MaxViT come first; its top-level layer's name starts the key.
            start = parts.index(layer.name) if layer.name in parts else 0
            named.append(("/".join(parts[start:]), variable))
    return named


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


def keras_cache_path(tag: str) -> str:
    """Where the converted weights of a checkpoint are cached (under KERAS_HOME)."""
    keras_home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(keras_home, "models", "keras_maxvit", f"{tag}.safetensors")


def _write_cache(path: str, state: dict, tag: str) -> None:
    """Writes converted weights and their preprocessing to a temporary file, then into place."""
    from safetensors.numpy import save_file

    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{tag}.", suffix=".tmp")
        os.close(handle)
        try:
            arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
            # The checkpoint's preprocessing travels with its weights (mean/std, eval transform).
            metadata = dict(_CACHE_FORMAT, source=f"timm/{tag}", **cache_metadata(tag))
            save_file(arrays, temporary, metadata=metadata)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.remove(temporary)
    except OSError as e:
        warnings.warn(f"Could not cache the converted weights at {path!r}: {e}", stacklevel=3)


def pretrained_state(tag: str) -> tuple[dict, str]:
    """The state of a published checkpoint, and a description of where it came from.

    The converted weights are read from the KERAS_HOME cache when present
    (no network); otherwise the timm checkpoint is fetched with
    `huggingface_hub`, converted, and cached.
    """
    cache = keras_cache_path(tag)
    if os.path.isfile(cache):
        hint = f" Delete it ({cache}) to convert the checkpoint again."
        state, metadata = read_safetensors(cache, hint=hint)
        if metadata.get("format") != _CACHE_FORMAT["format"]:
            raise ValueError(f"{cache!r} is not a keras_maxvit weights cache file.{hint}")
        return state, f"The cached weights {cache!r}"
    path = download_checkpoint(tag)
    hint = (
        " Delete it from the Hugging Face cache (`hf cache delete`, or remove the "
        "file) to download it again."
    )
    timm_state, _ = read_safetensors(path, hint=hint)
    state = convert_state_dict(timm_state)
    _write_cache(cache, state, tag)
    return state, f"The checkpoint {tag!r} ({path})"


def load_state(model, state, source: str = "the checkpoint", skip_classifier: bool = False) -> None:
    """Copies a state (timm keys, Keras layout) into the MaxViT of `model`.

    Every Keras weight must find its tensor, with the right shape, and every
    tensor of the state must be used (the classification head's may be left
    out when the model has no head). Relative-position bias tables of another
    window size (a checkpoint of another input resolution) are resized as
    timm resizes them. Nothing is assigned unless the whole checkpoint fits.
    """
    assignments = []
    used = set()
    skipped = set()
    for variable_path, variable in maxvit_weights(model):
        key = timm_key(variable_path)
        if skip_classifier and key.startswith("head.fc."):
            skipped.add(key)
            continue
        if key not in state:
            raise ValueError(
                f"{source} has no tensor {key!r} for the model weight "
                f"{variable.path!r}: it is not a timm maxvit_*_tf checkpoint of "
                f"this variant (model {model.name!r})."
            )
        value = np.asarray(state[key])
        if key.endswith("relative_position_bias_table") and value.shape[0] == variable.shape[0]:
            # Another input resolution: resample the table as timm does.
            value = resize_bias_table(value, tuple(variable.shape))
        if value.shape != tuple(variable.shape):
            raise ValueError(
                f"{source} does not fit model {model.name!r}: tensor {key!r} has "
                f"shape {value.shape} (in the Keras layout) but the weight "
                f"{variable.path!r} has shape {tuple(variable.shape)}. It is a "
                "checkpoint of another variant or number of classes."
            )
        assignments.append((variable, value))
        used.add(key)

    has_head = any(key.startswith("head.") for key in used | skipped)
    unused = [
        key
        for key in state
        if key not in used and key not in skipped and (has_head or not key.startswith("head."))
    ]
    if unused:
        raise ValueError(
            f"{source} has {len(unused)} tensors that model {model.name!r} does "
            f"not use, first {unused[0]!r}: it is a checkpoint of another variant."
        )
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))


def load_weights(model, path: str) -> None:
    """Loads a local weights file into `model`.

    `.safetensors` (a timm checkpoint, or a file of keras_maxvit's cache),
    `.bin`/`.pth` (a timm PyTorch state dict, read with
    `torch.load(weights_only=True)`), `.keras` (a saved keras_maxvit model,
    loaded with `safe_mode=True`) load at any resolution; `.weights.h5` must
    come from the same architecture.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"The weights file does not exist. Received: weights={path!r}")
    source = f"The weights file {path!r}"
    if path.endswith(".weights.h5"):
        try:
            model.load_weights(path)
        except Exception as e:
            raise ValueError(f"{source} does not fit model {model.name!r}: {e}") from e
        return
    if path.endswith(".safetensors"):
        arrays, metadata = read_safetensors(path)
        if metadata.get("format") == _CACHE_FORMAT["format"]:
            state = arrays
        else:
            state = convert_state_dict(arrays)
    elif path.endswith((".bin", ".pth")):
        state = convert_state_dict(read_torch_checkpoint(path))
    elif path.endswith(".keras"):
        state = state_from_keras_file(path)
    else:
        raise ValueError(
            f"Weights files must end in one of {WEIGHTS_SUFFIXES}. Received: weights={path!r}"
        )
    load_state(model, state, source=source)

"""Loading weights files into keras_maxvit models."""

import os

import numpy as np

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


def load_timm_state_dict(model, state_dict, source: str = "the checkpoint") -> None:
    """Copies a timm `maxvit_*_tf_*` state dict into `model`.

    Every Keras weight must find its tensor, with the right shape, and every
    checkpoint tensor must be used (the classification head's may be left
    out when the model has no head). Relative-position bias tables of another
    window size (a checkpoint of another input resolution) are resized as
    timm resizes them. Nothing is assigned unless the whole checkpoint fits.
    """
    assignments = []
    used = set()
    for variable in model.weights:
        key, transform = timm_key(variable.path, len(variable.shape))
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

    has_head = any(key.startswith("head.") for key in used)
    unused = [
        key
        for key in state_dict
        if key not in used
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

"""Cutting a functional keras_maxvit model at a layer, and gradients through its rest."""

import keras
import numpy as np
from keras import ops

from keras_maxvit.models.backbone import get_pyramid_outputs
from keras_maxvit.models.inputs import check_images as check_model_images


def check_model(model) -> None:
    if not isinstance(model, keras.Model) or not hasattr(model, "_operations"):
        raise TypeError(
            "`model` must be a functional keras_maxvit model (a MaxViT*, a MaxViTBackbone, "
            "or one loaded from a .keras file). "
            f"Received: model={type(model).__name__}"
        )


def check_images(model, images) -> np.ndarray:
    """`images` as a float32 `(B, H, W, 3)` NumPy batch for `model` (one image
    gets a batch axis), checked as the model checks what it is called on."""
    images = np.asarray(keras.ops.convert_to_numpy(images))
    if images.ndim == 3:
        images = images[None]
    check_model_images(images, tuple(model.inputs[0].shape))
    return images.astype("float32")


def find_layer(model, name: str, kind: str, names: list[str]):
    """The layer of `model` called `name`; a ValueError listing `names` if none."""
    if not isinstance(name, str):
        raise TypeError(f"`layer` must be a layer name. Received: layer={name!r}")
    for layer in model.layers:
        if layer.name == name:
            return layer
    shown = ", ".join(repr(n) for n in names[:12]) + (", ..." if len(names) > 12 else "")
    raise ValueError(
        f"`layer` must name {kind} of the model {model.name!r}, e.g. {shown}. "
        f"Received: layer={name!r}"
    )


def feature_tensor(model, layer):
    """The symbolic output of `layer` (a name, or a pyramid level "P1".."P5")."""
    pyramid = get_pyramid_outputs(model)
    if layer is None:
        return max(pyramid.items(), key=lambda item: int(item[0][1:]))[1]
    if isinstance(layer, str) and layer in pyramid:
        return pyramid[layer]
    names = [item.name for item in model.layers[1:] if _is_map(item)]
    found = find_layer(model, layer, "a feature-map layer (or 'P1'...)", list(pyramid) + names)
    if found.name not in names:
        raise ValueError(
            "`layer` must name a layer whose output is a (batch, height, width, channels) "
            f"map. Received: layer={layer!r} with output shape {found.output.shape}"
        )
    return found.output


def _is_map(layer) -> bool:
    """Whether a layer (called once) outputs a 4-D feature map."""
    try:
        return len(layer.output.shape) == 4
    except (AttributeError, ValueError):  # not called, or called more than once
        return False


def split(model, tensor):
    """`(features, head)`: `model` cut at `tensor` into input->tensor, tensor->outputs."""
    features = keras.Model(model.inputs[0], tensor)
    try:
        head = keras.Model(tensor, model.outputs)
    except ValueError as error:
        raise ValueError(
            "The model's output must depend on the chosen layer alone (a block output "
            f"of the MaxViT trunk, not a layer inside a residual branch): {error}"
        ) from None
    return features, head


def output_layer(model):
    """The layer that computes the model's (single) output."""
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(
            "Grad-CAM needs a classifier with one (batch, classes) output "
            f"(include_top=True). Received: model {model.name!r} with outputs "
            f"{[tuple(t.shape) for t in model.outputs]}"
        )
    return model.outputs[0]._keras_history.operation


class linear_output:
    """Within `with`, the model's final Dense returns its logits (the pre-activation).

    Grad-CAM differentiates the class score before the softmax. The layer
    still computes through its own `call` (so quantized or LoRA layers keep
    their behaviour); only its `activation` attribute is swapped and restored.
    """

    def __init__(self, layer):
        self.layer = layer if isinstance(layer, keras.layers.Dense) else None

    def __enter__(self):
        if self.layer is not None:
            self.activation = self.layer.activation
            self.layer.activation = keras.activations.linear
        return self

    def __exit__(self, *exc):
        if self.layer is not None:
            self.layer.activation = self.activation


def compiled(function, variables):
    """`function` (of Keras layers and ops), compiled with `jax.jit` on JAX.

    JAX runs an uncompiled model op by op, compiling every op for its shapes
    on first use (tens of seconds for a MaxViT); one `jit` of the whole
    computation takes a fraction of that. The variables' values are passed
    in (a `StatelessScope`), not baked into the program as constants.
    Other backends run `function` as it is.
    """
    if keras.backend.backend() != "jax":
        return function
    import jax

    variables = list(variables)

    def pure(values, *args):
        with keras.StatelessScope(state_mapping=list(zip(variables, values, strict=True))):
            return function(*args)

    jitted = jax.jit(pure)
    return lambda *args: jitted([v.value for v in variables], *args)


def value_and_gradient(function, variables):
    """A callable `(x, *args) -> (function(x, *args), d sum(function(x, *args)) / dx)`.

    With the backend's autodiff: `jax.value_and_grad` (compiled), a
    TensorFlow `GradientTape`, or `torch.autograd.grad`.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        def summed(x, *args):
            value = function(x, *args)
            return ops.sum(value), value

        gradient_of = jax.value_and_grad(summed, has_aux=True)

        def run(x, *args):
            (_, value), gradient = gradient_of(x, *args)
            return value, gradient

        return compiled(run, variables)
    if backend == "tensorflow":
        import tensorflow as tf

        def run(x, *args):
            x = tf.convert_to_tensor(x)
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = function(x, *args)
                total = tf.reduce_sum(value)
            return value, tape.gradient(total, x)

        return run
    if backend == "torch":
        import torch

        def run(x, *args):
            x = ops.convert_to_tensor(x).detach().requires_grad_(True)
            with torch.enable_grad():
                value = function(x, *args)
                (gradient,) = torch.autograd.grad(value.sum(), x)
            return value.detach(), gradient

        return run
    raise NotImplementedError(f"Grad-CAM has no gradient for the {backend!r} backend")

"""Checks of the images given to a keras_maxvit model, before any backend sees them.

`MaxViTModel` is the functional model that `keras_maxvit.MaxViT` (and
`MaxViTBackbone`) return: the same graph, but a call or `predict` with
images it cannot take raises a `TypeError`/`ValueError` that names what was
received, instead of failing deep inside a backend (or, worse, broadcasting a
1-channel image to 3 channels and answering).
"""

import keras
import numpy as np

from keras_maxvit.kernels.select import compiled_scope

# Smallest height and width: the network's total stride.
MIN_SIZE = 32


def dtype_and_shape(images):
    """The standardized dtype (None if not numeric) and shape of an array-like."""
    if isinstance(images, (list, tuple)):
        try:
            images = np.asarray(images)
        except ValueError:  # ragged nested lists
            return "object", None
    dtype, shape = getattr(images, "dtype", None), getattr(images, "shape", None)
    if dtype is None or shape is None:
        return None, None
    try:
        dtype = keras.backend.standardize_dtype(dtype)
    except ValueError:  # strings, objects, ...
        dtype = str(dtype)
    try:
        return dtype, tuple(shape)
    except (TypeError, ValueError):  # a tensor of unknown rank, inside a traced function
        return dtype, None


def check_images(images, expected_shape: tuple, argument: str = "images") -> None:
    """Raises if `images` cannot be a batch for a model of input `expected_shape`.

    `expected_shape` is the model's `(batch, height, width, channels)` input
    shape, `None` where any size goes. Floats and integers are accepted
    (integers are cast to float by the model); strings, booleans and complex
    numbers are not. Tensors of unknown shape (inside a traced function) are
    checked on what is known. Anything that is not an array (a dict, a
    dataset) is left to Keras.
    """
    dtype, shape = dtype_and_shape(images)
    if dtype is None:
        return
    numeric = dtype.startswith(("float", "bfloat", "int", "uint"))
    if not numeric:
        raise TypeError(
            f"`{argument}` must be a float or integer array of pixels. "
            f"Received: {argument}.dtype={dtype}"
        )
    if shape is None:
        return
    if len(shape) != 4:
        hint = " (add a batch axis, e.g. images[None])" if len(shape) == 3 else ""
        raise ValueError(
            f"`{argument}` must be a 4D batch (batch, height, width, channels){hint}. "
            f"Received: {argument}.shape={shape}"
        )
    channels = expected_shape[-1]
    if shape[-1] is not None and channels is not None and shape[-1] != channels:
        raise ValueError(
            f"The model takes images with {channels} channels. Received: {argument}.shape={shape}"
        )
    for axis, name in ((1, "height"), (2, "width")):
        side, expected = shape[axis], expected_shape[axis]
        if side is None:
            continue
        if expected is not None and side != expected:
            raise ValueError(
                f"The model was built for input of {name} {expected} "
                f"(input_shape={tuple(expected_shape[1:])}; build it with None sides "
                f"for any size). Received: {argument}.shape={shape}"
            )
        if side < MIN_SIZE:
            raise ValueError(
                f"Images must be at least {MIN_SIZE}x{MIN_SIZE}. Received: {argument}.shape={shape}"
            )


@keras.saving.register_keras_serializable(package="keras_maxvit")
class MaxViTModel(keras.Model):
    """A functional MaxViT model that checks the images it is called on.

    Built like any functional model (`MaxViTModel(inputs, outputs, name=...)`)
    and saved and loaded like one; calls and `predict` first run
    `check_images` on single-input batches.

    `compile(jit_compile="auto")` (the default) resolves as Keras does,
    except on TensorFlow without a GPU: Keras then turns XLA off, but
    MaxViT's `fit`, `predict` and `evaluate` run faster under XLA on CPU
    (README, "Performance"), so they compile with XLA there too, unless a
    `tf.distribute` strategy is in scope or op determinism is enabled (as
    Keras decides). `jit_compile=False` still turns XLA off. The train,
    test and predict steps tell the kernels (`keras_maxvit.kernels`) whether
    they are traced for XLA.
    """

    def _resolve_auto_jit_compile(self):
        resolved = super()._resolve_auto_jit_compile()
        if resolved or keras.backend.backend() != "tensorflow" or self._distribute_strategy:
            return resolved
        # Where Keras reads it (no public TensorFlow API says whether it is on).
        from tensorflow.python.framework.config import is_op_determinism_enabled

        if is_op_determinism_enabled():
            return False
        return all(layer.supports_jit for layer in self._flatten_layers())

    def _xla(self) -> bool:
        return keras.backend.backend() != "torch" and not self.run_eagerly and self.jit_compile

    def train_step(self, *args, **kwargs):
        with compiled_scope(self._xla()):
            return super().train_step(*args, **kwargs)

    def test_step(self, *args, **kwargs):
        with compiled_scope(self._xla()):
            return super().test_step(*args, **kwargs)

    def predict_step(self, *args, **kwargs):
        with compiled_scope(self._xla()):
            return super().predict_step(*args, **kwargs)

    def _expected_shape(self):
        return tuple(self.inputs[0].shape) if len(self.inputs) == 1 else None

    def __call__(self, *args, **kwargs):
        expected = self._expected_shape()
        if expected is not None and args:
            check_images(args[0], expected, argument="images")
        return super().__call__(*args, **kwargs)

    def predict(self, x, *args, **kwargs):
        expected = self._expected_shape()
        if expected is not None:
            check_images(x, expected, argument="x")
        return super().predict(x, *args, **kwargs)

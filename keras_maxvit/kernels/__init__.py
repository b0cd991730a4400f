"""Fast implementations of MaxViT's layer steps, and where each one is taken.

The layers in `keras_maxvit.layers` call their Keras sublayers; a kernel
here replaces one step of a layer where `select.use_kernel` says so (see
`select.py` for the conditions and the `KERAS_MAXVIT_KERNELS` switch). Each
kernel is tested equal to the sublayer calls it replaces.
"""

from keras_maxvit.kernels.select import (
    KERNELS,
    MODES,
    compiled_scope,
    force_kernels,
    get_kernels,
    set_kernels,
    use_kernel,
)

__all__ = [
    "KERNELS",
    "MODES",
    "compiled_scope",
    "force_kernels",
    "get_kernels",
    "set_kernels",
    "use_kernel",
]

"""Kernel "in_place_gelu": GELU into the buffer of a new map (PyTorch, no autograd).

A layer's GELU follows a projection or a norm whose output nothing else
holds. Without autograd (inference: `predict`, `torch.no_grad`) eager
PyTorch can overwrite that buffer instead of writing a fresh one; with
autograd the backward needs GELU's input, so the plain call runs.
"""

import keras

from keras_maxvit.kernels.select import use_kernel
from keras_maxvit.layers.activations import gelu_tanh


def gelu_tanh_of_new(x):
    """`gelu_tanh(x)` for a tensor `x` the caller has just made and holds alone."""
    if keras.backend.backend() == "torch" and use_kernel("in_place_gelu", x):
        import torch

        if not torch.is_grad_enabled():
            from keras_maxvit.kernels import torch_eager

            return torch_eager.gelu_tanh_(x)
    return gelu_tanh(x)

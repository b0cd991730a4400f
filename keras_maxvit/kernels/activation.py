"""Kernels "in_place_gelu" and "chunked_gelu": GELU after a new map (PyTorch).

A layer's GELU follows a projection or a norm whose output nothing else
holds. Without autograd (inference: `predict`, `torch.no_grad`) eager
PyTorch can overwrite that buffer instead of writing a fresh one
(`in_place_gelu`). ATen's tanh GELU evaluates `tanh`, which costs twice
`sigmoid` on AVX2 CPUs; `chunked_gelu` computes the same function as
`x * sigmoid(v)`, a few passes over each chunk of the map while the chunk is
in cache, with its own backward (`torch_eager.gelu_tanh`).
"""

import keras

from keras_maxvit.kernels.select import use_kernel
from keras_maxvit.layers.activations import gelu_tanh


def gelu_tanh_of_new(x):
    """`gelu_tanh(x)` for a tensor `x` the caller has just made and holds alone."""
    if keras.backend.backend() == "torch":
        import torch

        in_place = not torch.is_grad_enabled() and use_kernel("in_place_gelu", x)
        chunked = use_kernel("chunked_gelu", x)
        if in_place or chunked:
            from keras_maxvit.kernels import torch_eager

            return torch_eager.gelu_tanh(x, in_place=in_place, chunked=chunked)
    return gelu_tanh(x)

"""Kernel "gelu": GELU as `x * sigmoid(v)` in cache-sized chunks (PyTorch).

ATen's tanh GELU evaluates `tanh`, which costs twice `sigmoid` on CPUs
without AVX-512; the same function written with `sigmoid` runs as a few
passes over each chunk of the map while the chunk is in cache, with its own
backward (`torch_eager.gelu_tanh`). A layer's GELU follows a projection or a
norm whose output nothing else holds: without autograd (inference:
`predict`, `torch.no_grad`) it overwrites that buffer instead of writing a
fresh one (`torch_eager.gelu_tanh_`).
"""

import keras

from keras_maxvit.kernels.select import use_kernel
from keras_maxvit.layers.activations import gelu_tanh


def gelu_tanh_of_new(x):
    """`gelu_tanh(x)` for a tensor `x` the caller has just made and holds alone."""
    if keras.backend.backend() == "torch" and use_kernel("gelu", x):
        import torch

        from keras_maxvit.kernels import torch_eager

        if torch.is_grad_enabled():
            return torch_eager.gelu_tanh(x)
        return torch_eager.gelu_tanh_(x)
    return gelu_tanh(x)

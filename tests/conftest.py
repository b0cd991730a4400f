"""Shared helpers: timm reference models and conversions for parity tests."""

# torch (and timm, which imports torchvision) must be imported before
# TensorFlow: importing torchvision after TensorFlow crashes the process.
import timm  # noqa: F401  isort: skip
import torch  # noqa: F401  isort: skip

import os

import keras
import numpy as np
import pytest

# A small MaxViT used by most tests: every part of the architecture, at a
# fraction of the cost (window = grid = 2 at 64x64).
SMALL_CONFIG = {
    "stem_filters": 16,
    "stage_filters": (32, 32, 64, 64),
    "depths": (1, 2, 1, 1),
    "head_hidden_size": 48,
}


def host_devices_env(count: int, **variables) -> dict:
    """The environment for a child process with `count` XLA host (CPU)
    devices: this process's own `XLA_FLAGS` (e.g. nox's one-thread flag) kept,
    the device count appended (it must be set before JAX is imported)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={count}"
    return dict(os.environ, **variables, XLA_FLAGS=flags.strip())


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def perturb_timm_model(model, seed: int = 0) -> None:
    """Randomizes what a fresh timm model leaves at constants.

    BatchNorm statistics and affine parameters, LayerNorm parameters and the
    relative-position bias tables start at 0/1 in timm, where a swapped or
    misplaced tensor would go unnoticed.
    """

    gen = torch.Generator().manual_seed(seed)

    def uniform(tensor, low, high):
        tensor.copy_(torch.rand(tensor.shape, generator=gen) * (high - low) + low)

    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                uniform(module.running_mean, -0.5, 0.5)
                uniform(module.running_var, 0.5, 2.0)
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.2, 0.2)
            elif isinstance(module, torch.nn.LayerNorm):
                uniform(module.weight, 0.5, 1.5)
                uniform(module.bias, -0.2, 0.2)
            if hasattr(module, "relative_position_bias_table"):
                table = module.relative_position_bias_table
                table.copy_(torch.randn(table.shape, generator=gen))
        # Damp the residual branches (as training does) so the residual stream of
        # the deep variants does not grow ~1.4x a block: with timm's plain init,
        # Large's float32 logits differ from its own float64 ones by up to 15%,
        # which would hide any error of ours. Every tensor stays distinct.
        for name, parameter in model.named_parameters():
            if name.endswith(("conv3_1x1.weight", "attn.proj.weight", "mlp.fc2.weight")):
                parameter.mul_(0.25)
    model.eval()


def timm_small_model(img_size=(64, 64), num_classes=10, config=None):
    """A randomly initialised timm MaxViT with the official TF numerics."""
    from timm.models.maxxvit import MaxxVit, MaxxVitCfg, _tf_cfg

    config = config or SMALL_CONFIG
    cfg = MaxxVitCfg(
        embed_dim=tuple(config["stage_filters"]),
        depths=tuple(config["depths"]),
        block_type=("M",) * len(config["depths"]),
        stem_width=config["stem_filters"],
        stem_bias=True,
        head_hidden_size=config["head_hidden_size"],
        **_tf_cfg(),
    )
    torch.manual_seed(0)
    model = MaxxVit(cfg, img_size=img_size, num_classes=num_classes)
    perturb_timm_model(model)
    return model


def timm_forward(model, images_nhwc, features=False):
    """Runs a timm model on channels-last NumPy images; returns NumPy."""

    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        if features:
            out = model.forward_features(x).permute(0, 2, 3, 1)
        else:
            out = model(x)
    return out.numpy()


def save_timm_checkpoint(model, path) -> str:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


# For the commands and example scripts as a user runs them: under the default
# backend only (KERAS_BACKEND unset is TensorFlow). What they compute on each
# backend is proven by the parity, export and training tests, which run on all three.
default_backend_only = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="a command or example as typed, under the default backend (TensorFlow)",
)


# For what does not depend on the backend (downloads and caches, weight shapes):
# checked once, under the default backend.
backend_independent = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="backend-independent (files, caches, weight shapes): checked under TensorFlow",
)


def assert_close_to_reference(ours, reference, rel_tol=1e-4):
    """max |ours - ref| <= rel_tol * max |ref|, the parity criterion."""
    assert ours.shape == reference.shape, (ours.shape, reference.shape)
    error = np.abs(ours - reference).max()
    scale = np.abs(reference).max()
    assert error <= rel_tol * scale, f"max abs error {error:.3e} > {rel_tol} x {scale:.3e}"


@pytest.fixture
def rng():
    return np.random.default_rng(0)

"""Every custom layer through one harness, plus numerical references.

The harness (config round trip, state created in build, eager and symbolic
calls, `.keras` round trip with `safe_mode=True`, a `fit` step and mixed
precision) runs on tiny shapes. The math is checked against NumPy loops and
against timm's modules.
"""

import inspect

import keras
import numpy as np
import pytest
from conftest import perturb_timm_model, to_numpy
from test_partition import block_partition_loops, grid_partition_loops

from keras_maxvit.kernels.batch_norm import _normalize_with_gradient, batch_norm_train
from keras_maxvit.kernels.depthwise import depthwise_conv, depthwise_conv_same
from keras_maxvit.kernels.linear import flat_matmul
from keras_maxvit.kernels.reduce import channel_moments, channel_sum
from keras_maxvit.layers import (
    MBConv,
    PartitionAttentionBlock,
    RelativePositionAttention,
    StemConv2D,
    StochasticDepth,
)
from keras_maxvit.timm_convert import convert_state_dict, timm_key

LAYER_CASES = [
    (StochasticDepth, {"rate": 0.25, "seed": 1}, (4, 4, 4, 8)),
    (StemConv2D, {"filters": 6, "kernel_size": 3, "strides": 2, "padding": "same"}, (2, 8, 7, 3)),
    (
        RelativePositionAttention,
        {"partition_type": "grid", "partition_size": 2, "head_size": 8},
        (2, 4, 6, 16),
    ),
    (RelativePositionAttention, {"partition_size": (2, 3), "head_size": 8}, (2, 4, 6, 16)),
    (MBConv, {"filters": 16, "strides": 2, "drop_path_rate": 0.1, "seed": 2}, (2, 8, 8, 8)),
    (MBConv, {"filters": 8}, (2, 4, 4, 8)),
    (
        PartitionAttentionBlock,
        {"partition_type": "block", "partition_size": (2, 3), "head_size": 8},
        (2, 4, 6, 16),
    ),
    (
        PartitionAttentionBlock,
        {"partition_type": "grid", "partition_size": 2, "head_size": 8, "drop_path_rate": 0.2},
        (2, 4, 4, 16),
    ),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _, _) in enumerate(LAYER_CASES)]
BASE_CONFIG_KEYS = set(keras.layers.Layer().get_config())


def _inputs(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize("cls,kwargs,shape", LAYER_CASES, ids=IDS)
def test_config_lists_exactly_init_arguments(cls, kwargs, shape):
    layer = cls(**kwargs)
    config = layer.get_config()
    init_args = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    # (A base-layer argument, e.g. Conv2D's `activity_regularizer`, may be both.)
    assert set(config) - BASE_CONFIG_KEYS == init_args - BASE_CONFIG_KEYS
    assert init_args <= set(config)
    clone = cls.from_config(config)
    assert clone.get_config() == config
    registered = keras.saving.get_registered_name(cls)
    assert registered == f"keras_maxvit>{cls.__name__}"


@pytest.mark.parametrize("cls,kwargs,shape", LAYER_CASES, ids=IDS)
def test_state_is_created_in_build_and_calls_agree(cls, kwargs, shape):
    layer = cls(**kwargs)
    assert not layer.weights, "weights must be created in build(), not __init__"
    x = _inputs(shape)
    eager = to_numpy(layer(x))
    symbolic = layer(keras.Input(shape[1:], batch_size=shape[0]))
    assert tuple(symbolic.shape) == eager.shape == tuple(layer.compute_output_shape(shape))
    assert np.all(np.isfinite(eager))
    # Inference is deterministic (dropout and drop path are off).
    np.testing.assert_array_equal(to_numpy(layer(x)), eager)


@pytest.mark.parametrize("cls,kwargs,shape", LAYER_CASES, ids=IDS)
def test_keras_file_round_trip_safe_mode(cls, kwargs, shape, tmp_path):
    inputs = keras.Input(shape[1:])
    model = keras.Model(inputs, cls(**kwargs, name="layer")(inputs))
    x = _inputs(shape)
    # Give norms and tables non-default values so a lost weight shows.
    for variable in model.weights:
        if "float" in variable.dtype:
            variable.assign(np.random.default_rng(1).normal(size=variable.shape) * 0.1 + 1.0)
    expected = to_numpy(model(x))
    path = tmp_path / "layer.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded.get_layer("layer")) is cls
    assert loaded.get_layer("layer").get_config() == model.get_layer("layer").get_config()
    np.testing.assert_allclose(to_numpy(loaded(x)), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("cls,kwargs,shape", LAYER_CASES, ids=IDS)
def test_fit_step_updates_weights(cls, kwargs, shape):
    inputs = keras.Input(shape[1:])
    outputs = keras.layers.Dense(1)(cls(**kwargs)(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [to_numpy(w).copy() for w in model.trainable_weights]
    # 16 samples: with drop path, some sample keeps every branch (1 - 0.25**16).
    batch = 16
    targets = _inputs(tuple(outputs.shape[1:]), 1)[None].repeat(batch, 0)
    history = model.fit(_inputs((batch,) + shape[1:]), targets, batch_size=batch, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [to_numpy(w) for w in model.trainable_weights]
    changed = [not np.array_equal(a, b) for a, b in zip(before, after, strict=True)]
    assert all(changed), "every trainable weight (bias tables included) must train"


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("cls,kwargs,shape", LAYER_CASES, ids=IDS)
def test_mixed_precision_matches_float32(cls, kwargs, shape, policy):
    reference = cls(**kwargs)
    x = _inputs(shape)
    expected = to_numpy(reference(x))
    layer = cls(**kwargs, dtype=policy)
    layer.build(shape)
    layer.set_weights(reference.get_weights())
    out = layer(x)
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    out = to_numpy(keras.ops.cast(out, "float32"))
    assert np.all(np.isfinite(out))
    tolerance = 0.1 if policy == "mixed_bfloat16" else 0.02
    assert np.abs(out - expected).max() <= tolerance * max(np.abs(expected).max(), 1.0)


# --- numerical references -------------------------------------------------


def _scatter_back(groups, shape, partition_loops, p, q):
    """Inverse of a loop partition, via the partition of position indices."""
    b, h, w, c = shape
    positions = np.arange(b * h * w, dtype="float64").reshape(b, h, w, 1)
    index = partition_loops(positions, p, q).reshape(-1).astype(int)
    out = np.zeros((b * h * w, c), groups.dtype)
    out[index] = groups.reshape(-1, c)
    return out.reshape(b, h, w, c)


def attention_reference(x, layer):
    """Max-SA in plain NumPy loops."""
    p, q = layer._size
    heads, head = layer.num_heads, layer.head_size
    partition = block_partition_loops if layer.partition_type == "block" else grid_partition_loops
    groups = partition(x.astype("float64"), p, q)
    w_qkv, b_qkv = (to_numpy(v).astype("float64") for v in layer.qkv.weights)
    w_proj, b_proj = (to_numpy(v).astype("float64") for v in layer.proj.weights)
    table = to_numpy(layer.relative_position_bias_table).astype("float64")
    tokens = p * q
    bias = np.zeros((heads, tokens, tokens))
    for t1 in range(tokens):
        for t2 in range(tokens):
            (i, j), (k, m) = divmod(t1, q), divmod(t2, q)
            bias[:, t1, t2] = table[:, k - i + p - 1, m - j + q - 1]
    outputs = []
    for group in groups:
        qkv = (group @ w_qkv + b_qkv).reshape(tokens, 3, heads, head)
        merged = []
        for h in range(heads):
            query, key, value = qkv[:, 0, h], qkv[:, 1, h], qkv[:, 2, h]
            logits = query @ key.T / np.sqrt(head) + bias[h]
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            merged.append(weights @ value)
        outputs.append(np.concatenate(merged, -1) @ w_proj + b_proj)
    return _scatter_back(np.stack(outputs), x.shape, partition, p, q)


def randomized_attention(partition_type, size, shape, seed):
    """A built `RelativePositionAttention` whose weights are all random (bias table too)."""
    layer = RelativePositionAttention(partition_type, size, head_size=8)
    layer.build(shape)
    rng = np.random.default_rng(seed)
    for variable in layer.weights:
        variable.assign(rng.normal(size=variable.shape) * 0.5)
    return layer


@pytest.mark.parametrize("partition_type", ["block", "grid"])
@pytest.mark.parametrize("size,shape", [(2, (2, 4, 4, 16)), ((2, 3), (1, 4, 6, 32))])
def test_attention_matches_numpy(partition_type, size, shape):
    layer = randomized_attention(partition_type, size, shape, seed=3)
    x = _inputs(shape)
    np.testing.assert_allclose(
        to_numpy(layer(x)), attention_reference(x, layer), rtol=1e-5, atol=1e-5
    )


def _load_from_timm(layer, module, prefix):
    """Copies a timm module's tensors into a standalone Keras block layer."""
    # Copies: on PyTorch, Keras variables could otherwise share timm's memory.
    state = convert_state_dict({k: v.numpy().copy() for k, v in module.state_dict().items()})
    for variable in layer.weights:
        variable.assign(state[timm_key(variable.path).removeprefix(prefix)])


def _timm_nchw(module, x):
    import torch

    with torch.no_grad():
        return module(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)


def _mbconv_and_timm(in_channels, filters, strides, shape):
    """A perturbed timm `MbConvBlock` and an `MBConv` built for `shape` holding its weights."""
    from timm.models.maxxvit import MaxxVitConvCfg, MbConvBlock

    cfg = MaxxVitConvCfg(norm_eps=1e-3, act_layer="gelu_tanh", padding="same")
    reference = MbConvBlock(in_channels, filters, stride=strides, cfg=cfg)
    perturb_timm_model(reference)
    layer = MBConv(filters, strides=strides, name="stage0_block0_mbconv")
    layer.build(shape)
    _load_from_timm(layer, reference, "stages.0.blocks.0.conv.")
    return layer, reference


@pytest.mark.parametrize(
    "in_channels,filters,strides,size", [(16, 32, 2, 8), (32, 32, 1, 6), (8, 8, 2, 6)]
)
def test_mbconv_matches_timm(in_channels, filters, strides, size):
    shape = (2, size, size, in_channels)
    layer, reference = _mbconv_and_timm(in_channels, filters, strides, shape)
    x = _inputs(shape)
    np.testing.assert_allclose(to_numpy(layer(x)), _timm_nchw(reference, x), atol=1e-4)


@pytest.mark.parametrize("in_channels,filters,strides,size", [(16, 32, 2, 8), (8, 8, 1, 6)])
def test_mbconv_training_matches_timm(in_channels, filters, strides, size):
    # Training mode: batch statistics (MBConv's own BatchNorm arithmetic on
    # PyTorch), the input gradient and the moving-statistics update.
    import torch

    shape = (4, size, size, in_channels)
    layer, reference = _mbconv_and_timm(in_channels, filters, strides, shape)
    x = _inputs(shape) * 2.0 + 0.5
    out_size = -(-size // strides)
    upstream = _inputs((4, out_size, out_size, filters), seed=1)
    start_mean = to_numpy(layer.pre_norm.moving_mean).copy()

    reference.train()
    x_nchw = torch.tensor(x.transpose(0, 3, 1, 2), requires_grad=True)
    want = reference(x_nchw)
    (want * torch.from_numpy(upstream.transpose(0, 3, 1, 2))).sum().backward()
    want_grad = x_nchw.grad.numpy().transpose(0, 2, 3, 1)
    want = want.detach().numpy().transpose(0, 2, 3, 1)

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(x):
        out, _ = layer.stateless_call(trainable, non_trainable, x, training=True)
        return keras.ops.sum(out * keras.ops.convert_to_tensor(upstream))

    np.testing.assert_allclose(to_numpy(layer(x, training=True)), want, rtol=1e-4, atol=1e-4)
    (grad,) = _backend_grads(loss, x)
    np.testing.assert_allclose(to_numpy(grad), want_grad, rtol=1e-4, atol=1e-4)
    # The moving mean after one step (as the Keras layer: momentum 0.99).
    np.testing.assert_allclose(
        to_numpy(layer.pre_norm.moving_mean),
        start_mean * 0.99 + x.reshape(-1, in_channels).mean(0) * 0.01,
        rtol=1e-5,
        atol=1e-6,
    )


def test_mbconv_frozen_batch_norm_uses_moving_statistics():
    # A frozen BatchNorm (trainable=False) normalizes with its moving
    # statistics also in training mode, as Keras layers do; here folded.
    layer = MBConv(8, name="mbconv")
    layer.build((2, 6, 6, 8))
    rng = np.random.default_rng(4)
    for variable in layer.weights:
        variable.assign(rng.uniform(0.5, 1.5, size=variable.shape))
    x = _inputs((2, 6, 6, 8))
    batch_statistics = to_numpy(layer(x, training=True))  # also moves the statistics
    inference = to_numpy(layer(x, training=False))
    assert not np.allclose(batch_statistics, inference, atol=1e-3)
    for norm in (layer.pre_norm, layer.norm1, layer.norm2):
        norm.trainable = False
    before = [to_numpy(v).copy() for v in layer.non_trainable_weights]
    np.testing.assert_allclose(to_numpy(layer(x, training=True)), inference, rtol=1e-5, atol=1e-5)
    for old, variable in zip(before, layer.non_trainable_weights, strict=True):
        np.testing.assert_array_equal(to_numpy(variable), old)


def test_batch_norm_train_matches_autodiff_of_keras_formula():
    # The closed-form gradient (x, gamma, beta) against automatic
    # differentiation of Keras' own batch normalization with batch moments.
    rng = np.random.default_rng(5)
    x = (rng.normal(size=(3, 4, 5, 6)) * 2.0 + 1.0).astype("float32")
    gamma = rng.uniform(0.5, 1.5, size=6).astype("float32")
    beta = rng.normal(size=6).astype("float32")
    upstream = keras.ops.convert_to_tensor(rng.normal(size=x.shape).astype("float32"))
    axes = (0, 1, 2)

    def reference(x, gamma, beta):
        x, gamma, beta = (keras.ops.convert_to_tensor(t) for t in (x, gamma, beta))
        mean, variance = keras.ops.moments(x, axes)
        out = keras.ops.batch_normalization(x, mean, variance, -1, beta, gamma, 1e-3)
        return keras.ops.sum(out * upstream)

    def lean(x, gamma, beta):
        x, gamma, beta = (keras.ops.convert_to_tensor(t) for t in (x, gamma, beta))
        mean, variance = keras.ops.moments(keras.ops.stop_gradient(x), axes)
        out = _normalize_with_gradient(x, mean, variance, gamma, beta, 1e-3)
        return keras.ops.sum(out * upstream)

    np.testing.assert_allclose(
        to_numpy(lean(x, gamma, beta)), to_numpy(reference(x, gamma, beta)), rtol=1e-5
    )
    for got, want in zip(
        _backend_grads(lean, x, gamma, beta),
        _backend_grads(reference, x, gamma, beta),
        strict=True,
    ):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-4, atol=1e-4)

    # The layer entry point: output and moving statistics as the Keras layer.
    norms = [keras.layers.BatchNormalization(epsilon=1e-3) for _ in range(2)]
    for norm in norms:
        norm.build(x.shape)
        norm.gamma.assign(gamma)
        norm.beta.assign(beta)
    np.testing.assert_allclose(
        to_numpy(batch_norm_train(norms[0], x)),
        to_numpy(norms[1](x, training=True)),
        rtol=1e-5,
        atol=1e-5,
    )
    for ours, keras_layer in zip(
        norms[0].non_trainable_weights, norms[1].non_trainable_weights, strict=True
    ):
        np.testing.assert_allclose(to_numpy(ours), to_numpy(keras_layer), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (2, 9, 4), (11, 3)])
def test_channel_sum_and_moments_match_numpy(shape):
    rng = np.random.default_rng(6)
    x = (rng.normal(size=shape) * 3.0 + 2.0).astype("float32")
    y = rng.normal(size=shape).astype("float32")
    axes = tuple(range(len(shape) - 1))
    x64, y64 = x.astype("float64"), y.astype("float64")
    np.testing.assert_allclose(to_numpy(channel_sum(x)), x64.sum(axes), rtol=1e-5, atol=1e-4)
    product = channel_sum(keras.ops.convert_to_tensor(x), keras.ops.convert_to_tensor(y))
    np.testing.assert_allclose(to_numpy(product), (x64 * y64).sum(axes), rtol=1e-5, atol=1e-4)
    half = channel_sum(keras.ops.convert_to_tensor(x, "bfloat16"))
    assert keras.backend.standardize_dtype(half.dtype) == "float32"
    np.testing.assert_allclose(to_numpy(half), x64.sum(axes), rtol=1e-2, atol=0.1)
    mean, variance = channel_moments(keras.ops.convert_to_tensor(x))
    np.testing.assert_allclose(to_numpy(mean), x64.mean(axes), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(variance), x64.var(axes), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow graphs only")
def test_batch_norm_train_with_unknown_batch_size():
    # Keras' TensorFlow trainer traces with an unknown batch size: the same
    # output and gradient as with a known one.
    import tensorflow as tf

    x = np.random.default_rng(7).normal(size=(5, 4, 3, 6)).astype("float32")
    weights = np.random.default_rng(8).normal(size=x.shape).astype("float32")
    norm = keras.layers.BatchNormalization()
    norm.build(x.shape)
    norm.trainable = True

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = batch_norm_train(norm, x)
            value = tf.reduce_sum(out * weights)
        return out, tape.gradient(value, [x, norm.gamma.value, norm.beta.value])

    unknown = tf.function(
        value_and_grad, input_signature=[tf.TensorSpec((None, 4, 3, 6), "float32")]
    )
    for got, want in zip(
        tf.nest.flatten(unknown(tf.constant(x))),
        tf.nest.flatten(value_and_grad(tf.constant(x))),
        strict=True,
    ):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 16, 16, 8), (2, 3, 5, 8), (7, 8)])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_flat_matmul_matches_numpy(shape, dtype):
    # Every projection goes through flat_matmul: a 2-D matmul under XLA, and on
    # PyTorch a 1x1 conv on a channels-last view for maps of >= 256 pixels
    # (the first shape) or a matmul. Value and gradients against NumPy.
    rng = np.random.default_rng(7)
    x = rng.normal(size=shape).astype("float32")
    kernel = rng.normal(size=(8, 12)).astype("float32")
    upstream = rng.normal(size=shape[:-1] + (12,)).astype("float32")
    got = flat_matmul(keras.ops.cast(x, dtype), keras.ops.cast(kernel, dtype))
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    tolerance = 1e-5 if dtype == "float32" else 5e-2
    scale = np.abs(x @ kernel).max()
    np.testing.assert_allclose(
        to_numpy(keras.ops.cast(got, "float32")), x @ kernel, atol=tolerance * scale
    )
    if dtype != "float32":
        return

    def loss(x, kernel):
        out = flat_matmul(x, kernel)
        return keras.ops.sum(out * keras.ops.convert_to_tensor(upstream))

    grad_x, grad_kernel = _backend_grads(loss, x, kernel)
    flat_x, flat_up = x.reshape(-1, 8), upstream.reshape(-1, 12)
    np.testing.assert_allclose(to_numpy(grad_x), upstream @ kernel.T, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(to_numpy(grad_kernel), flat_x.T @ flat_up, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (8, 5), (2, 4)])
def test_depthwise_kernel_with_bias_equals_depthwise_conv(strides, size):
    # The "depthwise" kernel of this backend (PyTorch: one channels-first conv
    # that adds the bias; without gradient, uneven stride-2 padding as a
    # wider kernel) against `ops.depthwise_conv` plus the bias: values, and
    # input, kernel and bias gradients against automatic differentiation.
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, *size, 5)).astype("float32")
    kernel = rng.normal(size=(3, 3, 5, 1)).astype("float32")
    bias = rng.normal(size=5).astype("float32")
    upstream = keras.ops.convert_to_tensor(
        rng.normal(size=(2, -(-size[0] // strides), -(-size[1] // strides), 5)).astype("float32")
    )

    def reference(x, kernel, bias):
        return keras.ops.depthwise_conv(x, kernel, strides, padding="same") + bias

    want = to_numpy(reference(x, kernel, bias))
    tensors = [keras.ops.convert_to_tensor(t) for t in (x, kernel, bias)]
    got = depthwise_conv(tensors[0], tensors[1], strides, tensors[2])
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-5)
    if keras.backend.backend() == "torch":
        import torch

        with torch.no_grad():
            got = depthwise_conv(torch.tensor(x), torch.tensor(kernel), strides, torch.tensor(bias))
        np.testing.assert_allclose(to_numpy(got), want, rtol=1e-5, atol=1e-5)

    def loss(fn):
        return lambda x, kernel, bias: keras.ops.sum(fn(x, kernel, bias) * upstream)

    kernel_loss = loss(lambda x, kernel, bias: depthwise_conv(x, kernel, strides, bias))
    for got, want in zip(
        _backend_grads(kernel_loss, x, kernel, bias),
        _backend_grads(loss(reference), x, kernel, bias),
        strict=True,
    ):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("partition_type", ["block", "grid"])
def test_partition_attention_block_matches_timm(partition_type):
    import torch
    from timm.models.maxxvit import MaxxVitTransformerCfg, PartitionAttentionCl

    cfg = MaxxVitTransformerCfg(
        norm_eps=1e-5,
        act_layer="gelu_tanh",
        head_first=False,
        rel_pos_type="bias_tf",
        window_size=(3, 3),
        grid_size=(3, 3),
    )
    reference = PartitionAttentionCl(64, partition_type=partition_type, cfg=cfg)
    perturb_timm_model(reference)
    part = "block_attn" if partition_type == "block" else "grid_attn"
    layer = PartitionAttentionBlock(partition_type, 3, name=f"stage0_block0_{part}")
    shape = (2, 6, 9, 64)
    layer.build(shape)
    timm_part = "attn_block" if partition_type == "block" else "attn_grid"
    _load_from_timm(layer, reference, f"stages.0.blocks.0.{timm_part}.")
    x = _inputs(shape)
    with torch.no_grad():
        expected = reference(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(to_numpy(layer(x)), expected, atol=1e-4)


# --- stochastic depth ---------------------------------------------------


def test_stochastic_depth_drops_whole_samples_with_rate():
    layer = StochasticDepth(0.3, seed=0)
    x = np.ones((4000, 2, 2, 3), "float32")
    out = to_numpy(layer(x, training=True))
    per_sample = out.reshape(4000, -1)
    # Each sample is either all dropped or all kept and rescaled.
    kept = np.all(np.isclose(per_sample, 1 / 0.7), axis=1)
    dropped = np.all(per_sample == 0, axis=1)
    assert np.all(kept | dropped)
    assert abs(dropped.mean() - 0.3) < 0.03
    np.testing.assert_array_equal(to_numpy(layer(x, training=False)), x)
    # The seed generator advances: a second call draws a new mask.
    assert not np.array_equal(to_numpy(layer(x, training=True)), out)


def test_stochastic_depth_rejects_bad_rate():
    for rate in (-0.1, 1.0, "0.5"):
        with pytest.raises(ValueError, match="rate="):
            StochasticDepth(rate)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="jax.jit check")
def test_stochastic_depth_under_jax_jit():
    import jax

    layer = StochasticDepth(0.5, seed=0)
    x = np.ones((64, 1, 1, 1), "float32")
    layer.build(x.shape)

    @jax.jit
    def step(state, x):
        return layer.stateless_call([], state, x, training=True)

    state = [v.value for v in layer.non_trainable_variables]
    first, state = step(state, x)
    second, state = step(state, x)
    assert set(np.unique(np.asarray(first))) <= {0.0, 2.0}
    assert not np.array_equal(np.asarray(first), np.asarray(second))


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_shifted_depthwise_conv_equals_depthwise_conv(strides, size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, *size, 6)).astype("float32")
    kernel = rng.normal(size=(3, 3, 6, 1)).astype("float32")
    expected = keras.ops.depthwise_conv(x, kernel, strides=strides, padding="same")
    got = depthwise_conv_same(x, kernel, strides)
    np.testing.assert_allclose(to_numpy(got), to_numpy(expected), rtol=1e-5, atol=1e-5)


def _depthwise_grads_numpy(x, kernel, upstream, strides):
    """Float64 gradients of `sum(depthwise_conv_same(x, kernel) * upstream)`."""
    x, kernel, upstream = (np.asarray(a, "float64") for a in (x, kernel, upstream))
    _, height, width, _ = x.shape
    _, out_height, out_width, _ = upstream.shape
    pads = []
    for side, out in ((height, out_height), (width, out_width)):
        total = max((out - 1) * strides + 3 - side, 0)
        pads.append((total // 2, total - total // 2))
    padded = np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
    grad_padded = np.zeros_like(padded)
    grad_kernel = np.zeros_like(kernel)
    for i in range(3):
        for j in range(3):
            rows = slice(i, i + (out_height - 1) * strides + 1, strides)
            cols = slice(j, j + (out_width - 1) * strides + 1, strides)
            grad_padded[:, rows, cols, :] += upstream * kernel[i, j, :, 0]
            grad_kernel[i, j, :, 0] = np.sum(upstream * padded[:, rows, cols, :], axis=(0, 1, 2))
    top, left = pads[0][0], pads[1][0]
    return grad_padded[:, top : top + height, left : left + width, :], grad_kernel


def _backend_grads(fn, *args):
    """Gradients of the scalar `fn(*args)` for every argument, on the current backend."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(jax.grad(fn, argnums=tuple(range(len(args)))))(*args)
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            value = fn(*tensors)
        return tape.gradient(value, tensors)
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    fn(*tensors).backward()
    return [t.grad.detach() for t in tensors]


@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10), (3, 2)])
def test_shifted_depthwise_conv_gradients_match_numpy(strides, size):
    # The shifted-sum conv carries its own gradient (transposed conv for the
    # input, row-wise sums for the kernel): checked against a float64 NumPy
    # reference, also for odd sizes where "same" padding is asymmetric.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, *size, 5)).astype("float32")
    kernel = rng.normal(size=(3, 3, 5, 1)).astype("float32")
    out_size = tuple(-(-side // strides) for side in size)
    upstream = rng.normal(size=(2, *out_size, 5)).astype("float32")

    def loss(x, kernel):
        out = depthwise_conv_same(x, kernel, strides)
        return keras.ops.sum(out * keras.ops.convert_to_tensor(upstream))

    grad_x, grad_kernel = _backend_grads(loss, x, kernel)
    want_x, want_kernel = _depthwise_grads_numpy(x, kernel, upstream, strides)
    np.testing.assert_allclose(to_numpy(grad_x), want_x, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_numpy(grad_kernel), want_kernel, rtol=1e-5, atol=1e-5)

"""Any input size: padded, masked attention and models with `(None, None, 3)` inputs.

Where a feature map is not a multiple of the window (or grid), the attention
pads it, masks the padding out of the softmax and crops it back. The tests
check that against a per-pixel NumPy reference, show that the padded values
never reach the output (and that they would without the mask), and that a
model of unknown input size gives, at every size, what a model built for
that size gives.
"""

import keras
import numpy as np
import pytest
from conftest import (
    SMALL_CONFIG,
    save_timm_checkpoint,
    timm_small_model,
    to_numpy,
)
from test_layers import randomized_attention

import keras_maxvit
from keras_maxvit.layers import attention as attention_module


def padded_attention_reference(x, layer):
    """Max-SA with padding, pixel by pixel, in float64 NumPy.

    The map is (virtually) padded at the bottom/right to multiples of the
    partition size; each real pixel attends to the real pixels of its group
    only, with the relative-position bias of their places in the group.
    """
    p, q = layer._size
    batch, height, width, channels = x.shape
    heads, head = layer.num_heads, layer.head_size
    group_rows, group_cols = -(-height // p), -(-width // q)
    w_qkv, b_qkv = (to_numpy(v).astype("float64") for v in layer.qkv.weights)
    w_proj, b_proj = (to_numpy(v).astype("float64") for v in layer.proj.weights)
    table = to_numpy(layer.relative_position_bias_table).astype("float64")

    def place(y, z):  # (group, position inside the group) of pixel (y, z)
        if layer.partition_type == "block":
            return (y // p, z // q), (y % p, z % q)
        return (y % group_rows, z % group_cols), (y // group_rows, z // group_cols)

    pixels = [(y, z) for y in range(height) for z in range(width)]
    members = {}
    for y, z in pixels:
        members.setdefault(place(y, z)[0], []).append((y, z))
    qkv = (x.astype("float64") @ w_qkv + b_qkv).reshape(batch, height, width, 3, heads, head)
    out = np.zeros((batch, height, width, channels))
    for y, z in pixels:
        group, (i, j) = place(y, z)
        keys = members[group]
        for h in range(heads):
            bias = np.array(
                [table[h, place(*k)[1][0] - i + p - 1, place(*k)[1][1] - j + q - 1] for k in keys]
            )
            query = qkv[:, y, z, 0, h]  # (batch, head)
            key = np.stack([qkv[:, a, b, 1, h] for a, b in keys], 1)  # (batch, keys, head)
            value = np.stack([qkv[:, a, b, 2, h] for a, b in keys], 1)
            logits = np.einsum("nd,nkd->nk", query, key) / np.sqrt(head) + bias
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            weights /= weights.sum(-1, keepdims=True)
            out[:, y, z, h * head : (h + 1) * head] = np.einsum("nk,nkd->nd", weights, value)
    return out @ w_proj + b_proj


@pytest.mark.parametrize("partition_type", ["block", "grid"])
@pytest.mark.parametrize(
    "size,shape", [(3, (2, 5, 7, 16)), ((2, 3), (1, 5, 4, 16)), (4, (1, 2, 3, 8))]
)
def test_padded_attention_matches_numpy(partition_type, size, shape):
    layer = randomized_attention(partition_type, size, shape, seed=4)
    x = np.random.default_rng(5).normal(size=shape).astype("float32")
    expected = padded_attention_reference(x, layer)
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-5, atol=1e-5)


def pad_with(value):
    def pad(x, pad_height, pad_width):
        return keras.ops.pad(
            x, ((0, 0), (0, pad_height), (0, pad_width), (0, 0)), constant_values=value
        )

    return pad


def small_model(input_shape=(None, None, 3), **kwargs):
    """The small MaxViT returning logits, window 2 unless given, any size by default."""
    kwargs.setdefault("window_size", 2)
    return keras_maxvit.MaxViT(
        **SMALL_CONFIG, input_shape=input_shape, classes=10, classifier_activation=None, **kwargs
    )


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("any_size") / "small.safetensors"
    return save_timm_checkpoint(timm_small_model(), path)


def test_padded_values_never_change_the_output(monkeypatch, checkpoint):
    # 50x70: stage maps 13x18, 7x9, 4x5, 2x3 with window 2: every stage pads.
    model = small_model(weights=checkpoint)
    images = np.random.default_rng(6).uniform(0, 255, (2, 50, 70, 3)).astype("float32")

    def predict():  # traced anew, so it runs the patched functions
        model.make_predict_function(force=True)
        return model.predict(images, verbose=0)

    zeros = predict()
    for value in (1e3, -37.5):
        monkeypatch.setattr(attention_module, "pad_to_partition", pad_with(value))
        np.testing.assert_allclose(predict(), zeros, rtol=1e-6, atol=1e-6)
    # Without the mask the padded values do reach the output: the check can fail.
    monkeypatch.setattr(attention_module, "MASK_VALUE", 0.0)
    assert np.abs(predict() - zeros).max() > 1e-3


@pytest.mark.parametrize("size", [(64, 64), (96, 64)])
def test_multiples_give_exactly_the_unpadded_results(size, checkpoint):
    dynamic = small_model(weights=checkpoint)
    static = small_model(size + (3,), weights=checkpoint)
    images = np.random.default_rng(7).uniform(0, 255, (2,) + size + (3,)).astype("float32")
    expected = static.predict(images, verbose=0)
    np.testing.assert_allclose(dynamic.predict(images, verbose=0), expected, rtol=0, atol=1e-6)


def test_one_model_serves_several_sizes_under_jit(checkpoint):
    model = small_model(weights=checkpoint)
    model.compile(jit_compile=keras.backend.backend() != "torch")
    for size in [(64, 64), (50, 70), (33, 45)]:
        images = np.random.default_rng(8).uniform(0, 255, (3,) + size + (3,)).astype("float32")
        static = small_model(size + (3,), weights=checkpoint)
        expected = static.predict(images, verbose=0)
        outputs = model.predict(images, batch_size=3, verbose=0)
        np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


def test_jax_jit_retraces_per_size_with_one_set_of_variables(checkpoint):
    if keras.backend.backend() != "jax":
        pytest.skip("jax.jit of stateless_call is JAX-only; predict covers the other backends")
    import jax

    model = small_model(weights=checkpoint)
    batches = [
        np.random.default_rng(9).uniform(0, 255, (1,) + size + (3,)).astype("float32")
        for size in [(40, 72), (64, 64)]
    ]
    expected = [model.predict(images, verbose=0) for images in batches]
    state = (
        [jax.numpy.array(v.value) for v in model.trainable_variables],
        [jax.numpy.array(v.value) for v in model.non_trainable_variables],
    )

    @jax.jit
    def forward(state, images):
        return model.stateless_call(state[0], state[1], images, training=False)[0]

    for images, reference in zip(batches, expected, strict=True):
        np.testing.assert_allclose(
            np.asarray(forward(state, images)), reference, rtol=1e-5, atol=1e-5
        )
    assert forward._cache_size() == 2  # one trace per size, one set of variables


def test_pyramid_of_an_unknown_size_backbone(checkpoint):
    config = dict(SMALL_CONFIG, head_hidden_size=None)
    backbone = keras_maxvit.MaxViTBackbone(
        config, input_shape=(None, None, 3), window_size=2, include_preprocessing=False
    )
    pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)
    images = np.random.default_rng(10).normal(size=(1, 70, 45, 3)).astype("float32")
    maps = pyramid.predict(images, verbose=0)
    for level in range(1, 6):
        stride = 2**level
        assert tuple(maps[f"P{level}"].shape[1:3]) == (-(-70 // stride), -(-45 // stride))
    static = keras_maxvit.MaxViTBackbone(
        config, input_shape=(70, 45, 3), window_size=2, include_preprocessing=False
    )
    static.set_weights(backbone.get_weights())
    expected = keras.Model(static.inputs, static.pyramid_outputs).predict(images, verbose=0)
    for key in expected:
        np.testing.assert_allclose(maps[key], expected[key], rtol=1e-5, atol=1e-5)


def test_classifier_with_a_fixed_size_that_is_no_multiple(checkpoint):
    # 100x70 with the default window 100 // 32 = 3, 70 // 32 = 2.
    model = keras_maxvit.MaxViT(
        **SMALL_CONFIG, input_shape=(100, 70, 3), classes=10, weights=checkpoint
    )
    attention = model.get_layer("stage0_block0_block_attn").attn
    assert attention.partition_size == (3, 2)
    images = np.random.default_rng(11).uniform(0, 255, (2, 100, 70, 3)).astype("float32")
    probs = model.predict(images, verbose=0)
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    logits = small_model(weights=checkpoint, window_size=(3, 2)).predict(images, verbose=0)
    softmax = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(softmax, probs, rtol=1e-5, atol=1e-6)


def test_unknown_size_model_trains_and_round_trips(tmp_path, checkpoint):
    model = small_model(weights=checkpoint)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(12)
    images = rng.uniform(0, 255, (4, 40, 56, 3)).astype("float32")
    labels = rng.integers(0, 10, (4,))
    losses = model.fit(images, labels, epochs=3, batch_size=4, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    path = str(tmp_path / "dynamic.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert loaded.input_shape == (None, None, None, 3)
    np.testing.assert_allclose(
        loaded.predict(images[:, :33], verbose=0),
        model.predict(images[:, :33], verbose=0),
        rtol=1e-5,
        atol=1e-5,
    )


# Full size, in `nox -s slow` (the small-config tests above run on all three backends).
@pytest.mark.slow
def test_pretrained_tiny_backbone_of_unknown_size_matches_timm(tmp_path):
    """A MaxViT-T checkpoint in a `(None, None, 3)` backbone: window 7, timm's features at 224."""
    import timm
    from conftest import perturb_timm_model, timm_forward

    reference = timm.create_model("maxvit_tiny_tf_224", pretrained=False)
    perturb_timm_model(reference)
    path = save_timm_checkpoint(reference, tmp_path / "tiny.safetensors")
    backbone = keras_maxvit.MaxViTBackbone(
        "tiny", weights=path, input_shape=(None, None, 3), include_preprocessing=False
    )
    assert backbone.get_layer("stage3_block1_grid_attn").partition_size == 7
    images = np.random.default_rng(13).normal(size=(1, 224, 224, 3)).astype("float32")
    features = backbone.predict(images, verbose=0)
    expected = timm_forward(reference, images, features=True)
    scale = np.abs(expected).max()
    assert np.abs(features - expected).max() <= 1e-4 * scale
    # The same object at a size that is no multiple of 32 (every stage pads).
    odd = backbone.predict(images[:, :200, :150], verbose=0)
    assert odd.shape == (1, 7, 5, 512) and np.isfinite(odd).all()

"""MaxViTBackbone: its feature pyramid against timm's intermediates, saving, training."""

import inspect
import json
from typing import NamedTuple

import keras
import numpy as np
import pytest
from conftest import (
    SMALL_CONFIG,
    assert_close_to_reference,
    save_timm_checkpoint,
    timm_small_model,
    to_numpy,
)

import keras_maxvit
from keras_maxvit import MaxViTBackbone

LEVELS = ("P1", "P2", "P3", "P4", "P5")
CHANNELS = (SMALL_CONFIG["stem_filters"], *SMALL_CONFIG["stage_filters"])


def timm_pyramid(model, images_nhwc) -> dict:
    """timm's stem and stage outputs (`forward_intermediates`) as channels-last P1..P5."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        features = model.forward_intermediates(x, intermediates_only=True)
    assert len(features) == len(LEVELS)
    return {level: f.permute(0, 2, 3, 1).numpy() for level, f in zip(LEVELS, features, strict=True)}


def small_backbone(weights=None, img_size=(64, 64), **kwargs) -> MaxViTBackbone:
    kwargs.setdefault("include_preprocessing", False)
    return MaxViTBackbone(
        variant=dict(SMALL_CONFIG), weights=weights, input_shape=img_size + (3,), **kwargs
    )


def images(img_size=(64, 64), n=2, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n,) + img_size + (3,)).astype("float32")


def assert_same_maps(ours: dict, expected: dict) -> None:
    assert sorted(ours) == sorted(expected)
    for level in expected:
        np.testing.assert_allclose(
            ours[level], expected[level], rtol=1e-6, atol=1e-6, err_msg=level
        )


class Loaded(NamedTuple):
    reference: object  # the timm model
    path: str  # its checkpoint
    backbone: MaxViTBackbone  # loaded from the checkpoint
    pyramid: keras.Model  # keras.Model(backbone.inputs, backbone.pyramid_outputs)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """`loaded(img_size)`: a timm reference and the backbone loaded from its checkpoint.

    Built once per size for the module: under JAX most of a test's time is
    compiling, so the tests share models (and their compiled `predict`).
    """
    cache = {}

    def get(img_size=(64, 64)) -> Loaded:
        if img_size not in cache:
            reference = timm_small_model(img_size=img_size)
            folder = tmp_path_factory.mktemp("timm")
            path = save_timm_checkpoint(reference, folder / "small.safetensors")
            backbone = small_backbone(weights=path, img_size=img_size)
            pyramid = keras.Model(backbone.inputs, backbone.pyramid_outputs)
            cache[img_size] = Loaded(reference, path, backbone, pyramid)
        return cache[img_size]

    return get


@pytest.mark.parametrize("img_size", [(64, 64), (96, 64)])
def test_pyramid_equals_timm_intermediates(img_size, loaded):
    reference, _, backbone, pyramid = loaded(img_size)
    x = images(img_size)
    ours = pyramid.predict(x, verbose=0)
    expected = timm_pyramid(reference, x)
    assert sorted(ours) == list(LEVELS)
    height, width = img_size
    for n, level in enumerate(LEVELS, start=1):
        assert ours[level].shape[1:3] == (height // 2**n, width // 2**n), level
        assert_close_to_reference(ours[level], expected[level])
    # The backbone's own output is the last level.
    np.testing.assert_allclose(backbone.predict(x, verbose=0), ours["P5"], rtol=1e-6, atol=1e-6)


def test_pyramid_outputs_are_symbolic_maps_at_strides_2_to_32(loaded):
    backbone = loaded().backbone
    pyramid = backbone.pyramid_outputs
    assert isinstance(pyramid, dict) and list(pyramid) == list(LEVELS)
    for n, (level, tensor) in enumerate(pyramid.items(), start=1):
        assert keras.backend.is_keras_tensor(tensor), level
        assert tuple(tensor.shape) == (None, 64 // 2**n, 64 // 2**n, CHANNELS[n - 1]), level
    # A model on a few levels is a plain functional model of the same graph.
    model = keras.Model(backbone.inputs, {level: pyramid[level] for level in ("P2", "P4")})
    assert model.count_params() < backbone.count_params()
    x = images(seed=4)
    partial = model.predict(x, verbose=0)
    full = loaded().pyramid.predict(x, verbose=0)
    assert_same_maps(partial, {"P2": full["P2"], "P4": full["P4"]})


def test_keras_file_round_trip_keeps_outputs_and_pyramid(loaded, tmp_path):
    _, _, backbone, pyramid = loaded()
    saved = str(tmp_path / "backbone.keras")
    backbone.save(saved)
    reloaded = keras.saving.load_model(saved, safe_mode=True)
    assert isinstance(reloaded, MaxViTBackbone)
    assert reloaded.get_config() == backbone.get_config()
    assert [w.path for w in reloaded.weights] == [w.path for w in backbone.weights]
    # Every level (P5 is the backbone's output) of the reloaded model is the same.
    x = images(seed=1)
    maps = keras.Model(reloaded.inputs, reloaded.pyramid_outputs).predict(x, verbose=0)
    assert_same_maps(maps, pyramid.predict(x, verbose=0))
    assert reloaded.outputs[0] is reloaded.pyramid_outputs["P5"]


def test_get_config_round_trip_through_json():
    backbone = small_backbone(
        img_size=(96, 64), drop_path_rate=0.1, window_size=(3, 2), name="pyramid"
    )
    config = backbone.get_config()
    # Exactly the constructor's arguments: no extra or missing keys.
    assert set(config) == set(inspect.signature(MaxViTBackbone).parameters)
    plain = {k: list(v) if isinstance(v, tuple) else v for k, v in SMALL_CONFIG.items()}
    assert config["variant"] == plain and config["window_size"] == (3, 2)
    assert config["input_shape"] == (96, 64, 3) and config["name"] == "pyramid"
    assert config["drop_path_rate"] == 0.1 and config["weights"] is None
    # As a .keras file stores it: tuples come back as lists.
    restored = MaxViTBackbone.from_config(json.loads(json.dumps(config)))
    assert restored.get_config() == config
    assert [(w.path, w.shape) for w in restored.weights] == [
        (w.path, w.shape) for w in backbone.weights
    ]


def test_loads_the_same_weights_as_the_maxvit_trunk(loaded, tmp_path):
    _, path, backbone, _ = loaded()
    trunk = keras_maxvit.MaxViT(
        **SMALL_CONFIG,
        include_top=False,
        include_preprocessing=False,
        weights=path,
        input_shape=(64, 64, 3),
    )
    assert [w.path for w in backbone.weights] == [w.path for w in trunk.weights]
    x = images(seed=2)
    np.testing.assert_allclose(
        backbone.predict(x, verbose=0), trunk.predict(x, verbose=0), rtol=1e-6, atol=1e-6
    )
    # A saved classifier (head included) is a weights file for the backbone too.
    classifier = keras_maxvit.MaxViT(
        **SMALL_CONFIG,
        classes=10,
        include_preprocessing=False,
        weights=path,
        input_shape=(64, 64, 3),
    )
    saved = str(tmp_path / "classifier.keras")
    classifier.save(saved)
    from_classifier = small_backbone(weights=saved)
    for ours, theirs in zip(from_classifier.weights, trunk.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs), err_msg=ours.path)


@pytest.mark.parametrize(
    "variant",
    [
        "huge",
        {"stem_filters": 16, "depths": (1, 1, 1, 1)},
        {**SMALL_CONFIG, "window_size": 7},
        ("tiny",),
    ],
    ids=["unknown_name", "missing_key", "unknown_key", "not_a_dict"],
)
def test_rejects_a_bad_variant(variant):
    with pytest.raises(ValueError, match="`variant`") as error:
        MaxViTBackbone(variant=variant, input_shape=(64, 64, 3))
    assert f"Received: variant={variant!r}" in str(error.value)


def test_fit_trains_a_segmentation_head_on_the_pyramid():
    """Gradients reach the backbone and every pyramid level; the loss goes down."""
    keras.utils.set_random_seed(0)
    # Smaller than SMALL_CONFIG (one block a stage): compiling the train step dominates.
    variant = {"stem_filters": 16, "stage_filters": (32, 32, 32, 32), "depths": (1, 1, 1, 1)}
    backbone = MaxViTBackbone(variant, input_shape=(64, 64, 3), include_preprocessing=False)
    layers = keras.layers
    merged = None
    for n, level in enumerate(LEVELS, start=1):  # every level to stride 4, summed
        lateral = layers.Conv2D(16, 1, name=f"lateral_{level}")(backbone.pyramid_outputs[level])
        if n == 1:
            lateral = layers.AveragePooling2D(2)(lateral)
        elif n > 2:
            lateral = layers.UpSampling2D(2 ** (n - 2), interpolation="bilinear")(lateral)
        merged = lateral if merged is None else layers.Add()([merged, lateral])
    logits = layers.Conv2D(3, 1, name="classifier")(layers.Activation("relu")(merged))
    logits = layers.UpSampling2D(4, interpolation="bilinear")(logits)
    model = keras.Model(backbone.inputs, logits)
    model.compile(
        optimizer=keras.optimizers.Adam(3e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    # Square regions of 3 classes, each with its own colour (plus noise).
    rows, cols = np.mgrid[0:64, 0:64]
    masks = np.stack([(rows // 16 + cols // 16 + i) % 3 for i in range(4)]).astype("int32")
    palette = np.array([[-1.0, -1.0, -1.0], [1.5, 0.0, -1.0], [0.0, 1.5, 1.0]], "float32")
    noise = np.random.default_rng(3).normal(0, 0.5, masks.shape + (3,)).astype("float32")
    x = palette[masks] + noise
    watched = ["stem_conv1", "classifier"] + [f"lateral_{level}" for level in LEVELS]
    before = {name: to_numpy(model.get_layer(name).kernel) for name in watched}
    losses = model.fit(x, masks, batch_size=4, epochs=6, verbose=0).history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0], losses
    for name in watched:
        assert not np.allclose(to_numpy(model.get_layer(name).kernel), before[name]), name

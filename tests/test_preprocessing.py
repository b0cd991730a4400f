"""The preprocessing that goes with the weights: mean/std and the eval transform.

References: timm's own exports (`save_for_hf` writes `config.json` beside the
weights, as on the Hugging Face Hub), timm's pretrained configs and its eval
transform (`resolve_data_config` + `create_transform`), and `PRESETS`.
"""

import json
import os
import warnings

import keras
import numpy as np
import pytest
from conftest import (
    SMALL_CONFIG,
    assert_close_to_reference,
    save_timm_checkpoint,
    timm_forward,
    timm_small_model,
)

import keras_maxvit
from keras_maxvit import weights as weights_lib
from keras_maxvit.imagenet import load_eval_image
from keras_maxvit.normalization import checkpoint_preprocessing
from keras_maxvit.presets import IMAGENET_MEAN, IMAGENET_STD, PRESETS

SIZE = 64
HALF = ((0.5,) * 3, (0.5,) * 3)
UNKNOWN = "does not record its normalization"


def _small(**kwargs):
    kwargs.setdefault("input_shape", (SIZE, SIZE, 3))
    kwargs.setdefault("classes", 10)
    kwargs.setdefault("classifier_activation", None)
    return keras_maxvit.MaxViT(**SMALL_CONFIG, **kwargs)


def _built(**kwargs):
    """A small model and the warnings its construction gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = _small(**kwargs)
    return model, [str(w.message) for w in caught]


def _normalization(model):
    """The (mean, std) that the model's `preprocessing` layer applies."""
    layer = model.get_layer("preprocessing")
    scale, offset = np.array(layer.scale, "float64"), np.array(layer.offset, "float64")
    std = 1.0 / (255.0 * scale)
    return -offset * std, std


def _assert_normalization(model, mean, std):
    ours_mean, ours_std = _normalization(model)
    np.testing.assert_allclose(ours_mean, mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ours_std, std, rtol=1e-6)


def _timm_export(directory, pretrained_tag, safe_serialization=True, size=SIZE, **overrides):
    """A small timm model saved by timm's `save_for_hf` with `pretrained_tag`'s data config."""
    from timm.models import get_pretrained_cfg
    from timm.models._hub import save_for_hf

    model = timm_small_model(img_size=(size, size), num_classes=10)
    model.pretrained_cfg = dict(get_pretrained_cfg(pretrained_tag).to_dict(), **overrides)
    save_for_hf(model, str(directory), safe_serialization=safe_serialization)
    name = "model.safetensors" if safe_serialization else "pytorch_model.bin"
    return model, os.path.join(directory, name)


def _raw_images(seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.parametrize("layout", ["safetensors", "bin", "flat_config"])
def test_timm_config_json_beside_the_checkpoint_gives_the_normalization(layout, tmp_path):
    # An in21k 224 checkpoint (0.5/0.5) used at 64x64, where the size default is ImageNet.
    reference, path = _timm_export(tmp_path, "maxvit_base_tf_224.in21k", layout != "bin")
    if layout == "flat_config":  # the config.json of older timm exports: one flat dict
        config_path = tmp_path / "config.json"
        nested = json.loads(config_path.read_text())
        flat = dict(nested["pretrained_cfg"], architecture=nested["architecture"])
        config_path.write_text(json.dumps(flat))
    model, caught = _built(weights=path)
    assert not [w for w in caught if UNKNOWN in w]
    _assert_normalization(model, *HALF)
    images = _raw_images()
    expected = timm_forward(reference, (images / 255.0 - 0.5) / 0.5)
    assert_close_to_reference(keras.ops.convert_to_numpy(model(images)), expected)
    assert checkpoint_preprocessing(path) == {
        "mean": HALF[0],
        "std": HALF[1],
        "crop_pct": 0.95,
        "crop_mode": "center",
        "interpolation": "bicubic",
        "resolution": 224,
    }


def test_files_that_do_not_say_warn_and_use_the_size_default(tmp_path):
    reference = timm_small_model(img_size=(SIZE, SIZE), num_classes=10)
    bare = save_timm_checkpoint(reference, tmp_path / "bare.safetensors")
    model, caught = _built(weights=bare)
    _assert_normalization(model, IMAGENET_MEAN, IMAGENET_STD)
    (message,) = [w for w in caught if UNKNOWN in w]
    assert bare in message and f"mean={IMAGENET_MEAN}" in message and "timm config.json" in message

    h5 = str(tmp_path / "small.weights.h5")
    model.save_weights(h5)
    with pytest.warns(UserWarning, match=r"\.weights\.h5 file holds no preprocessing"):
        _small(weights=h5)
    # At 384x384 the size default is 0.5/0.5, and the warning says so.
    with pytest.warns(UserWarning, match=r"mean=\(0\.5, 0\.5, 0\.5\).*384x384"):
        keras_maxvit.preprocess_input(np.zeros((1, 4, 4, 3)), weights=bare, resolution=384)
    # Random weights: no checkpoint, nothing assumed about one.
    model, caught = _built(weights=None)
    assert not [w for w in caught if UNKNOWN in w]
    _assert_normalization(model, IMAGENET_MEAN, IMAGENET_STD)


def test_cache_files_record_the_preprocessing_and_old_ones_still_say(tmp_path, monkeypatch):
    from safetensors.numpy import save_file

    reference, timm_path = _timm_export(tmp_path / "hub", "maxvit_tiny_tf_224.in1k")
    os.remove(tmp_path / "hub" / "config.json")
    tag = "maxvit_base_tf_224.in21k"
    # The conversion path of a named checkpoint, with the download faked.
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(weights_lib, "download_checkpoint", lambda _: timm_path)
    state, _ = weights_lib.pretrained_state(tag)
    cache = weights_lib.keras_cache_path(tag)
    _, metadata = weights_lib.read_safetensors(cache)
    preset = PRESETS[tag]
    assert metadata["source"] == f"timm/{tag}" and metadata["format"] == "keras_maxvit"
    for key in ("mean", "std", "crop_pct", "crop_mode", "interpolation", "resolution"):
        assert json.loads(metadata[key]) == (
            list(preset[key]) if isinstance(preset[key], tuple) else preset[key]
        ), key
    model, caught = _built(weights=cache)
    assert not [w for w in caught if UNKNOWN in w]
    _assert_normalization(model, preset["mean"], preset["std"])

    # A cache file written before the metadata recorded it: from its source tag.
    old_tag = "maxvit_large_tf_384.in21k_ft_in1k"
    old = str(tmp_path / f"{old_tag}.safetensors")
    old_metadata = {"format": "keras_maxvit", "layout": "keras", "source": f"timm/{old_tag}"}
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, old, old_metadata)
    recorded = checkpoint_preprocessing(old)
    for key in ("mean", "std", "crop_pct", "crop_mode", "interpolation", "resolution"):
        assert recorded[key] == PRESETS[old_tag][key], key
    model, caught = _built(weights=old)
    assert not [w for w in caught if UNKNOWN in w]
    _assert_normalization(model, *HALF)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(_raw_images())),
        timm_forward(reference, (_raw_images() / 255.0 - 0.5) / 0.5),
        rtol=1e-4,
        atol=1e-4,
    )


def test_keras_files_give_the_normalization_of_their_preprocessing_layer(tmp_path):
    source = _small(weights=None, normalization="inception")
    path = str(tmp_path / "inception.keras")
    source.save(path)
    # `predict` takes the input side from it too (crop defaults follow the side).
    assert checkpoint_preprocessing(path)["resolution"] == source.input_shape[1]
    model, caught = _built(weights=path)
    assert not [w for w in caught if UNKNOWN in w]
    _assert_normalization(model, *HALF)
    images = _raw_images()
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(model(images)),
        keras.ops.convert_to_numpy(source(images)),
        rtol=1e-5,
        atol=1e-5,
    )
    # A file saved by an earlier version (f866d8e): its ImageNet layer, as before.
    old = os.path.join(os.path.dirname(__file__), "data", "maxvit_small_f866d8e.keras")
    model, caught = _built(weights=old, classes=5)
    assert not [w for w in caught if UNKNOWN in w]
    _assert_normalization(model, IMAGENET_MEAN, IMAGENET_STD)
    # Saved without preprocessing: it says nothing.
    bare = str(tmp_path / "bare.keras")
    _small(weights=None, include_preprocessing=False).save(bare)
    with pytest.warns(UserWarning, match="has no `preprocessing` layer"):
        model = _small(weights=bare)
    _assert_normalization(model, IMAGENET_MEAN, IMAGENET_STD)


def test_the_argument_overrides_the_weights(tmp_path):
    _, path = _timm_export(tmp_path, "maxvit_base_tf_224.in21k")
    model, caught = _built(weights=path, normalization="imagenet")
    assert not [w for w in caught if UNKNOWN in w]
    _assert_normalization(model, IMAGENET_MEAN, IMAGENET_STD)
    custom = ((0.4, 0.45, 0.5), (0.2, 0.25, 0.3))
    _assert_normalization(_small(weights=path, normalization=custom), *custom)
    _assert_normalization(_small(normalization=(0.5, 0.5)), *HALF)
    # The variant constructors pass it on (and it is checked before anything is built).
    with pytest.raises(ValueError, match="Received: normalization='imagenet21k'"):
        keras_maxvit.MaxViTTiny(weights=None, normalization="imagenet21k")


def test_the_backbone_takes_and_records_its_normalization(tmp_path):
    backbone = keras_maxvit.MaxViTBackbone(
        dict(SMALL_CONFIG), input_shape=(SIZE, SIZE, 3), normalization=custom_pair()
    )
    _assert_normalization(backbone, *custom_pair())
    config = json.loads(json.dumps(backbone.get_config()))
    np.testing.assert_allclose(config["normalization"], custom_pair(), rtol=1e-9)
    restored = keras_maxvit.MaxViTBackbone.from_config(config)
    assert restored.get_config() == backbone.get_config()
    path = str(tmp_path / "backbone.keras")
    backbone.save(path)
    reloaded = keras.saving.load_model(path)
    _assert_normalization(reloaded, *custom_pair())
    assert checkpoint_preprocessing(path)["mean"] == pytest.approx(custom_pair()[0])


def custom_pair():
    return (0.3, 0.4, 0.5), (0.25, 0.2, 0.15)


@pytest.mark.parametrize(
    "normalization",
    [
        "imagenet1k",
        "INCEPTION",
        3,
        (0.5,),
        ((0.5, 0.5), (0.5, 0.5, 0.5)),
        (0.5, 0.0),
        ((0.5,) * 3, (0.5, -0.5, 0.5)),
        (float("nan"), 0.5),
        ("0.5", 0.5),
        (True, 0.5),
    ],
)
def test_bad_normalization_names_the_argument(normalization):
    with pytest.raises(ValueError, match=r"`normalization` must be.*Received: normalization="):
        _small(normalization=normalization)


def test_normalization_needs_the_preprocessing_layer():
    with pytest.raises(ValueError, match="needs `include_preprocessing=True`"):
        _small(normalization="imagenet", include_preprocessing=False)


def test_presets_record_timms_eval_transform():
    from timm.models import get_pretrained_cfg

    for tag, preset in PRESETS.items():
        cfg = get_pretrained_cfg(tag).to_dict()
        assert preset["crop_mode"] == cfg["crop_mode"], tag
        assert preset["crop_pct"] == cfg["crop_pct"], tag
        assert preset["interpolation"] == cfg["interpolation"], tag


def _image(path, width, height, seed):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.mark.parametrize(
    "tag,width,height",
    [
        ("maxvit_tiny_tf_224.in1k", 300, 257),
        ("maxvit_tiny_tf_384.in1k", 500, 389),
        ("maxvit_base_tf_512.in21k_ft_in1k", 420, 600),
    ],
)
def test_eval_image_is_timms_eval_transform(tag, width, height, tmp_path):
    """Pixels before normalization, against timm's transform for the tag's own config."""
    import timm.data
    from PIL import Image
    from timm.models import get_pretrained_cfg

    path = _image(tmp_path / "image.png", width, height, seed=width)
    preset = PRESETS[tag]
    ours = load_eval_image(
        path,
        preset["resolution"],
        preset["crop_pct"],
        preset["interpolation"],
        crop_mode=preset["crop_mode"],
    )
    config = timm.data.resolve_data_config(pretrained_cfg=get_pretrained_cfg(tag).to_dict())
    # mean 0, std 1/255 undoes ToTensor's division: timm's pixels in [0, 255].
    transform = timm.data.create_transform(**dict(config, mean=(0.0,) * 3, std=(1 / 255,) * 3))
    with Image.open(path) as image:
        expected = transform(image.convert("RGB")).numpy().transpose(1, 2, 0)
    # Both resize with PIL's bicubic: the same pixels but for float rounding.
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() <= 1e-3


def test_load_eval_image_bad_arguments(tmp_path):
    path = _image(tmp_path / "image.png", 40, 30, seed=0)
    with pytest.raises(ValueError, match="Received: crop_mode='border'"):
        load_eval_image(path, 32, 1.0, crop_mode="border")
    with pytest.raises(ValueError, match="Received: interpolation='nearest'"):
        load_eval_image(path, 32, 1.0, interpolation="nearest")
    with pytest.raises(ValueError, match="Received: crop_pct=0"):
        load_eval_image(path, 32, 0)

"""Bad input, one table: every case raises a clear error and changes nothing on disk.

Each row builds or calls a model with one bad argument and expects a
`ValueError`, `TypeError` or `FileNotFoundError` whose message names the
argument and the value received. Around every case, the files of the user's
folder, the KERAS_HOME weights cache and the Hugging Face cache are
fingerprinted: a failed call must leave them as they were.
"""

import hashlib
import os
import zipfile

import keras
import numpy as np
import pytest
from conftest import SMALL_CONFIG, save_timm_checkpoint, timm_small_model

import keras_maxvit


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The user's files the table refers to, made once."""
    folder = tmp_path_factory.mktemp("user_files")
    small = save_timm_checkpoint(timm_small_model(), folder / "small.safetensors")
    with open(small, "rb") as f:
        content = f.read()
    (folder / "truncated.safetensors").write_bytes(content[: len(content) // 3])
    (folder / "notes.safetensors").write_text("these are not tensors\n")
    (folder / "tiny_in1k.safetensors").write_bytes(content)  # a small model, named otherwise
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="dense")])
    other.save(folder / "other_program.keras")
    with zipfile.ZipFile(folder / "broken.keras", "w") as archive:
        archive.writestr("config.json", "{not json")
    wider = timm_small_model(config=dict(SMALL_CONFIG, stage_filters=(32, 64, 64, 64)))
    save_timm_checkpoint(wider, folder / "wider.safetensors")
    return folder


@pytest.fixture
def isolated_caches(tmp_path, monkeypatch):
    """KERAS_HOME and the Hugging Face cache in tmp_path, offline, each with a file."""
    keras_home = tmp_path / "keras_home"
    cache = keras_home / "models" / "keras_maxvit"
    cache.mkdir(parents=True)
    (cache / "maxvit_small_tf_224.in1k.safetensors").write_bytes(b"a user's cached file")
    hub = tmp_path / "hf_hub"
    hub.mkdir()
    (hub / "marker").write_text("untouched")
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return [keras_home, hub]


def fingerprint(folders):
    """Path -> (size, mtime, sha256) of every file under the folders."""
    prints = {}
    for folder in folders:
        for root, _, names in os.walk(folder):
            for name in names:
                path = os.path.join(root, name)
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
                stat = os.stat(path)
                prints[path] = (stat.st_size, stat.st_mtime_ns, digest)
    return prints


def small(**kwargs):
    kwargs.setdefault("input_shape", (64, 64, 3))
    kwargs.setdefault("classes", 10)
    return keras_maxvit.MaxViT(**SMALL_CONFIG, **kwargs)


def call(model_kwargs, images):
    def run(_):
        return small(**model_kwargs)(images)

    return run


def predict(model_kwargs, images):
    def run(_):
        return small(**model_kwargs).predict(images, verbose=0)

    return run


DYNAMIC = {"input_shape": (None, None, 3), "window_size": 2}
FLOATS = np.zeros((1, 64, 64, 3), "float32")

# (id, function of the user's folder, exception, text the message must contain)
CASES = [
    # --- input_shape ---
    ("rank 2", lambda d: small(input_shape=(64, 64)), ValueError, "input_shape=(64, 64)"),
    (
        "rank 4",
        lambda d: small(input_shape=(1, 64, 64, 3)),
        ValueError,
        "input_shape=(1, 64, 64, 3)",
    ),
    ("below 32", lambda d: small(input_shape=(16, 64, 3)), ValueError, "input_shape=(16, 64, 3)"),
    ("zero side", lambda d: small(input_shape=(0, 0, 3)), ValueError, "input_shape=(0, 0, 3)"),
    (
        "float side",
        lambda d: small(input_shape=(64.5, 64, 3)),
        ValueError,
        "input_shape=(64.5, 64, 3)",
    ),
    (
        "no channels",
        lambda d: small(input_shape=(64, 64, None)),
        ValueError,
        "input_shape=(64, 64, None)",
    ),
    (
        "1 channel with preprocessing",
        lambda d: small(input_shape=(64, 64, 1)),
        ValueError,
        "input_shape=(64, 64, 1)",
    ),
    (
        "1 channel with a weights file",
        lambda d: small(
            input_shape=(64, 64, 1),
            include_preprocessing=False,
            weights=str(d / "small.safetensors"),
        ),
        ValueError,
        "input_shape=(64, 64, 1)",
    ),
    (
        "4 channels with imagenet weights",
        lambda d: keras_maxvit.MaxViTTiny(input_shape=(224, 224, 4), include_preprocessing=False),
        ValueError,
        "input_shape=(224, 224, 4)",
    ),
    # --- other constructor arguments ---
    ("classes 0", lambda d: small(classes=0), ValueError, "classes=0"),
    ("classes -3", lambda d: small(classes=-3), ValueError, "classes=-3"),
    ("classes 2.5", lambda d: small(classes=2.5), ValueError, "classes=2.5"),
    ("drop_path_rate 1", lambda d: small(drop_path_rate=1.0), ValueError, "drop_path_rate=1.0"),
    ("drop_path_rate < 0", lambda d: small(drop_path_rate=-0.1), ValueError, "drop_path_rate=-0.1"),
    (
        "unknown pooling",
        lambda d: small(include_top=False, pooling="mean"),
        ValueError,
        "pooling='mean'",
    ),
    ("window_size 0", lambda d: small(window_size=0), ValueError, "window_size=0"),
    (
        "mismatched input_tensor",
        lambda d: small(input_tensor=keras.Input((96, 96, 3)), input_shape=(64, 64, 3)),
        ValueError,
        "input_shape=(64, 64, 3)",
    ),
    ("input_tensor not a tensor", lambda d: small(input_tensor="x"), TypeError, "input_tensor='x'"),
    # --- weights ---
    (
        "unknown weights name",
        lambda d: small(weights="imagenet1k"),
        ValueError,
        "weights='imagenet1k'",
    ),
    ("weights of wrong type", lambda d: small(weights=3), TypeError, "weights=3"),
    (
        "missing weights file",
        lambda d: small(weights=str(d / "missing.safetensors")),
        FileNotFoundError,
        "missing.safetensors",
    ),
    (
        "truncated safetensors",
        lambda d: small(weights=str(d / "truncated.safetensors")),
        ValueError,
        "truncated.safetensors",
    ),
    (
        "not a safetensors file",
        lambda d: small(weights=str(d / "notes.safetensors")),
        ValueError,
        "notes.safetensors",
    ),
    (
        "checkpoint of another variant",
        lambda d: small(weights=str(d / "wider.safetensors")),
        ValueError,
        "wider.safetensors",
    ),
    (
        "named checkpoint of another variant",
        lambda d: keras_maxvit.MaxViTSmall(weights="maxvit_tiny_tf_224.in1k"),
        ValueError,
        "weights='maxvit_tiny_tf_224.in1k'",
    ),
    (
        "a small checkpoint for MaxViT-T",
        lambda d: keras_maxvit.MaxViTTiny(weights=str(d / "tiny_in1k.safetensors")),
        ValueError,
        "tiny_in1k.safetensors",
    ),
    (
        ".keras file of another program",
        lambda d: small(weights=str(d / "other_program.keras")),
        ValueError,
        "other_program.keras",
    ),
    (
        "broken .keras file",
        lambda d: small(weights=str(d / "broken.keras")),
        ValueError,
        "broken.keras",
    ),
    # --- architecture and flags (issue 15: each names itself, not a Keras layer's argument) ---
    (
        "unknown classifier_activation",
        lambda d: small(classifier_activation="sotfmax"),
        ValueError,
        "classifier_activation='sotfmax'",
    ),
    ("include_top not a bool", lambda d: small(include_top="no"), TypeError, "include_top='no'"),
    (
        "include_preprocessing not a bool",
        lambda d: small(include_preprocessing=1),
        TypeError,
        "include_preprocessing=1",
    ),
    (
        "stem_filters 0",
        lambda d: keras_maxvit.MaxViT(**dict(SMALL_CONFIG, stem_filters=0)),
        ValueError,
        "stem_filters=0",
    ),
    (
        "head_size 0",
        lambda d: keras_maxvit.MaxViT(**SMALL_CONFIG, head_size=0),
        ValueError,
        "head_size=0",
    ),
    (
        "head_hidden_size -1",
        lambda d: keras_maxvit.MaxViT(**dict(SMALL_CONFIG, head_hidden_size=-1)),
        ValueError,
        "head_hidden_size=-1",
    ),
    (
        "a stage of depth 0",
        lambda d: keras_maxvit.MaxViT(**dict(SMALL_CONFIG, depths=(1, 0, 1, 1))),
        ValueError,
        "depths=(1, 0, 1, 1)",
    ),
    (
        "a fractional depth",
        lambda d: keras_maxvit.MaxViT(**dict(SMALL_CONFIG, depths=(1, 1.5, 1, 1))),
        ValueError,
        "depths=(1, 1.5, 1, 1)",
    ),
    (
        "backbone variant with a negative stem width",
        lambda d: keras_maxvit.MaxViTBackbone(dict(SMALL_CONFIG, stem_filters=-4)),
        ValueError,
        "stem_filters=-4",
    ),
    (
        "preprocess_input resolution not a number",
        lambda d: keras_maxvit.preprocess_input(FLOATS, resolution="224"),
        TypeError,
        "resolution='224'",
    ),
    (
        "preprocess_input of 4 channels",
        lambda d: keras_maxvit.preprocess_input(np.zeros((1, 8, 8, 4))),
        ValueError,
        "x.shape=(1, 8, 8, 4)",
    ),
    (
        "preprocess_input of strings",
        lambda d: keras_maxvit.preprocess_input(np.full((1, 8, 8, 3), "a")),
        TypeError,
        "x.dtype=",
    ),
    # --- images at call time ---
    ("image without batch axis", call({}, FLOATS[0]), ValueError, "images.shape=(64, 64, 3)"),
    (
        "1-channel images",
        call({}, np.zeros((1, 64, 64, 1), "float32")),
        ValueError,
        "images.shape=(1, 64, 64, 1)",
    ),
    (
        "1-channel images, any-size model",
        call(DYNAMIC, np.zeros((1, 64, 48, 1), "float32")),
        ValueError,
        "images.shape=(1, 64, 48, 1)",
    ),
    (
        "images below 32, any-size model",
        call(DYNAMIC, np.zeros((2, 16, 40, 3), "float32")),
        ValueError,
        "images.shape=(2, 16, 40, 3)",
    ),
    (
        "images of another size",
        call({}, np.zeros((1, 96, 96, 3), "float32")),
        ValueError,
        "images.shape=(1, 96, 96, 3)",
    ),
    ("string images", call({}, np.full((1, 64, 64, 3), "a")), TypeError, "images.dtype="),
    ("boolean images", call({}, np.zeros((1, 64, 64, 3), bool)), TypeError, "images.dtype=bool"),
    (
        "complex images to predict",
        predict({}, np.zeros((1, 64, 64, 3), complex)),
        TypeError,
        "x.dtype=complex128",
    ),
]


@pytest.mark.parametrize("build,error,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_a_clear_error_and_changes_nothing(
    build, error, message, files, isolated_caches
):
    folders = [files, *isolated_caches]
    before = fingerprint(folders)
    with pytest.raises(error) as info:
        build(files)
    assert message in str(info.value)
    assert "Received" in str(info.value) or message.endswith((".safetensors", ".keras"))
    assert fingerprint(folders) == before


def test_table_has_at_least_twenty_cases():
    assert len(CASES) >= 20 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("dtype", ["uint8", "int32", "float16"])
def test_integer_and_half_images_are_cast_to_float32(dtype):
    # Called directly: `predict` would compile a function per input dtype.
    model = small(classifier_activation=None)
    pixels = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3))
    expected = keras.ops.convert_to_numpy(model(pixels.astype("float32")))
    outputs = keras.ops.convert_to_numpy(model(pixels.astype(dtype)))
    np.testing.assert_allclose(outputs, expected, rtol=1e-5, atol=1e-5)


def test_nan_image_gives_nan_outputs_for_that_image_only():
    model = small(classifier_activation=None)
    images = np.random.default_rng(1).uniform(0, 255, (3, 64, 64, 3)).astype("float32")
    clean = model.predict(images, verbose=0)
    images[1, 5, 7, 0] = np.nan
    outputs = model.predict(images, verbose=0)
    assert np.isnan(outputs[1]).all()
    np.testing.assert_allclose(outputs[[0, 2]], clean[[0, 2]], rtol=1e-6, atol=1e-6)

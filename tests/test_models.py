"""MaxViT models against timm's `maxvit_*_tf_*`: parameters, logits, saving."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import (
    SMALL_CONFIG,
    assert_close_to_reference,
    backend_independent,
    default_backend_only,
    save_timm_checkpoint,
    timm_forward,
    timm_small_model,
    to_numpy,
)

import keras_maxvit
from keras_maxvit.models.maxvit import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MODEL_CONFIGS,
    VARIANTS,
    count_parameters,
)


def small_model(**kwargs):
    kwargs.setdefault("classes", 10)
    kwargs.setdefault("input_shape", (64, 64, 3))
    return keras_maxvit.MaxViT(**SMALL_CONFIG, **kwargs)


def perturb(model, scale=0.02):
    """Moves every float weight off its initial value, so a lost one shows."""
    rng = np.random.default_rng(3)
    for variable in model.weights:
        if "float" in variable.dtype:
            noise = rng.normal(size=variable.shape) * scale
            variable.assign(to_numpy(variable) + noise.astype("float32"))


def trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


@backend_independent
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parameter_count_equals_timm(variant):
    import timm
    import torch

    # timm's XLarge checkpoints are ImageNet-21k (21843 classes).
    classes = 21843 if variant == "xlarge" else 1000
    with torch.device("meta"):
        reference = timm.create_model(f"maxvit_{variant}_tf_224", num_classes=classes)
    expected = sum(p.numel() for p in reference.parameters())
    model = VARIANTS[variant](weights=None, classes=classes)
    assert trainable_count(model) == expected
    assert count_parameters(MODEL_CONFIGS[variant], classes) == expected
    keras.backend.clear_session()


@pytest.mark.parametrize("resolution,classes", [(64, 10), (128, 3)])
def test_count_parameters_follows_resolution_and_classes(resolution, classes):
    model = small_model(input_shape=(resolution, resolution, 3), classes=classes)
    assert count_parameters(SMALL_CONFIG, classes, resolution) == trainable_count(model)


@pytest.mark.parametrize("img_size", [(64, 64), (96, 64), (128, 128)])
def test_small_config_logits_equal_timm(img_size, tmp_path):
    reference = timm_small_model(img_size=img_size)
    path = save_timm_checkpoint(reference, tmp_path / "small.safetensors")
    model = small_model(
        weights=path,
        input_shape=img_size + (3,),
        include_preprocessing=False,
        classifier_activation=None,
    )
    images = np.random.default_rng(0).normal(size=(2,) + img_size + (3,)).astype("float32")
    assert_close_to_reference(to_numpy(model(images)), timm_forward(reference, images))


@pytest.mark.parametrize(
    "source,target",
    [((64, 64), (128, 128)), ((64, 64), (96, 96)), ((128, 128), (64, 64)), ((64, 64), (96, 64))],
)
def test_checkpoint_at_another_resolution_matches_timm_resize(source, target, tmp_path):
    """Bias tables are resized as timm's checkpoint_filter_fn resizes them."""
    from timm.models.maxxvit import checkpoint_filter_fn

    trained = timm_small_model(img_size=source)
    path = save_timm_checkpoint(trained, tmp_path / "small.safetensors")
    reference = timm_small_model(img_size=target)
    reference.load_state_dict(checkpoint_filter_fn(trained.state_dict(), reference))
    model = small_model(
        weights=path,
        input_shape=target + (3,),
        include_preprocessing=False,
        classifier_activation=None,
    )
    images = np.random.default_rng(0).normal(size=(2,) + target + (3,)).astype("float32")
    outputs = model.predict_on_batch(images)  # compiled on JAX: eager JAX runs op by op
    assert_close_to_reference(to_numpy(outputs), timm_forward(reference, images))


def test_preprocessing_takes_raw_pixels(tmp_path):
    reference = timm_small_model()
    path = save_timm_checkpoint(reference, tmp_path / "small.safetensors")
    model = small_model(weights=path, classifier_activation=None)
    pixels = np.random.default_rng(1).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    normalized = (pixels / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    expected = timm_forward(reference, normalized.astype("float32"))
    assert_close_to_reference(to_numpy(model(pixels)), expected)


def test_softmax_head_and_feature_outputs(tmp_path):
    reference = timm_small_model()
    path = save_timm_checkpoint(reference, tmp_path / "small.safetensors")
    images = np.random.default_rng(2).normal(size=(2, 64, 64, 3)).astype("float32")
    logits = timm_forward(reference, images)
    probs = to_numpy(small_model(weights=path, include_preprocessing=False)(images))
    expected = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs, expected, atol=1e-5)

    features = timm_forward(reference, images, features=True)
    for pooling, expected_out in [
        (None, features),
        ("avg", features.mean((1, 2))),
        ("max", features.max((1, 2))),
    ]:
        backbone = small_model(
            weights=path, include_top=False, include_preprocessing=False, pooling=pooling
        )
        assert_close_to_reference(to_numpy(backbone(images)), expected_out)


def assert_tiny_matches(checkpoint, resolution, reference):
    """MaxViT-T loaded from `checkpoint` at `resolution` gives timm `reference`'s logits."""
    model = keras_maxvit.MaxViTTiny(
        weights=checkpoint,
        input_shape=(resolution, resolution, 3),
        include_preprocessing=False,
        classifier_activation=None,
    )
    images = np.random.default_rng(0).normal(size=(1, resolution, resolution, 3))
    images = images.astype("float32")
    # predict_on_batch: compiled on JAX (an eager call runs the full model op by op).
    outputs = model.predict_on_batch(images)
    assert_close_to_reference(to_numpy(outputs), timm_forward(reference, images))


@pytest.mark.parametrize("resolution", [224, 384])
def test_tiny_logits_equal_timm(resolution, tmp_path):
    import timm
    from conftest import perturb_timm_model

    reference = timm.create_model(f"maxvit_tiny_tf_{resolution}")
    perturb_timm_model(reference)
    path = save_timm_checkpoint(reference, tmp_path / "tiny.safetensors")
    assert_tiny_matches(path, resolution, reference)
    keras.backend.clear_session()


def test_keras_weights_file_round_trip(tmp_path):
    model = small_model()
    perturb(model)
    path = str(tmp_path / "small.weights.h5")
    model.save_weights(path)
    images = np.random.default_rng(4).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_array_equal(
        to_numpy(small_model(weights=path)(images)), to_numpy(model(images))
    )


def test_no_lambda_layers_and_unique_deterministic_names():
    model = small_model(drop_path_rate=0.1)
    names = [layer.name for layer in model.layers]
    assert len(names) == len(set(names))
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in model.layers)
    assert names == [layer.name for layer in small_model(drop_path_rate=0.1).layers]
    assert "stage1_block1_grid_attn" in names and "stage3_block0_mbconv" in names


LOAD_SCRIPT = """
import json, sys
import numpy as np, keras
import keras_maxvit  # registers the layers
model = keras.saving.load_model(sys.argv[1], safe_mode=True)
images = np.load(sys.argv[2])
print(json.dumps(keras.ops.convert_to_numpy(model(images)).tolist()))
"""


@default_backend_only  # it runs the other two backends itself
def test_keras_file_loads_under_every_backend(tmp_path):
    """A `.keras` file saved under this backend loads under all three."""
    model = small_model(drop_path_rate=0.1)
    perturb(model)
    images = np.random.default_rng(6).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    expected = to_numpy(model(images))
    path = tmp_path / "model.keras"
    model.save(path)
    np.save(tmp_path / "images.npy", images)

    same_backend = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(to_numpy(same_backend(images)), expected, atol=1e-5)
    for backend in ["tensorflow", "jax", "torch"]:
        if backend == keras.backend.backend():
            continue
        env = dict(os.environ, KERAS_BACKEND=backend)
        result = subprocess.run(
            [sys.executable, "-c", LOAD_SCRIPT, str(path), str(tmp_path / "images.npy")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
        np.testing.assert_allclose(outputs, expected, atol=1e-5, err_msg=backend)


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="TensorFlow's compiled fit is checked by the quick start, mixed_float16, remat and "
    "distributed fits",
)
def test_fit_lowers_the_loss():
    keras.utils.set_random_seed(0)
    model = small_model(classes=4, drop_path_rate=0.1)
    model.compile(
        optimizer=keras.optimizers.AdamW(1e-3),
        loss="sparse_categorical_crossentropy",
    )
    rng = np.random.default_rng(7)
    images = rng.uniform(0, 255, (8, 64, 64, 3)).astype("float32")
    labels = np.arange(8) % 4
    history = model.fit(images, labels, batch_size=8, epochs=8, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("suffix", [".pth", ".bin"])
def test_pytorch_checkpoint_files_load_with_weights_only(suffix, tmp_path):
    import torch

    reference = timm_small_model()
    path = tmp_path / f"small{suffix}"
    torch.save(reference.state_dict(), path)
    model = small_model(weights=str(path), include_preprocessing=False, classifier_activation=None)
    images = np.random.default_rng(8).normal(size=(2, 64, 64, 3)).astype("float32")
    assert_close_to_reference(to_numpy(model(images)), timm_forward(reference, images))


class NotAStateDict:
    """Pickled objects are refused: only plain tensors are read."""


def test_pytorch_checkpoint_with_code_is_refused(tmp_path):
    import torch

    path = tmp_path / "evil.pth"
    torch.save({"stem.conv1.weight": torch.zeros(1), "payload": NotAStateDict()}, path)
    with pytest.raises(ValueError, match="weights_only=True"):
        small_model(weights=str(path))


def test_keras_model_file_as_weights_at_another_resolution(tmp_path):
    reference = timm_small_model()
    checkpoint = save_timm_checkpoint(reference, tmp_path / "small.safetensors")
    saved = small_model(weights=checkpoint)
    path = tmp_path / "small.keras"
    saved.save(path)
    # The .keras file serves as weights, at its own and at another resolution.
    images = np.random.default_rng(9).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(small_model(weights=str(path))(images)), to_numpy(saved(images)), atol=1e-6
    )
    larger = small_model(weights=str(path), input_shape=(128, 128, 3))
    from_checkpoint = small_model(weights=checkpoint, input_shape=(128, 128, 3))
    for a, b in zip(larger.weights, from_checkpoint.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


def test_weights_load_into_a_maxvit_in_a_name_scope_or_a_wrapper(tmp_path):
    from keras_maxvit.weights import load_weights

    reference = timm_small_model()
    checkpoint = save_timm_checkpoint(reference, tmp_path / "small.safetensors")
    images = np.random.default_rng(10).normal(size=(2, 64, 64, 3)).astype("float32")
    # Built in a name scope: variable paths start with "encoder/".
    with keras.name_scope("encoder"):
        scoped = small_model(
            weights=checkpoint, include_preprocessing=False, classifier_activation=None
        )
    assert scoped.weights[0].path.startswith("encoder/")
    assert_close_to_reference(to_numpy(scoped(images)), timm_forward(reference, images))

    # Nested in a Sequential: the MaxViT inside loads, the wrapper's own head is left alone.
    features = timm_forward(reference, images, features=True).mean(axis=(1, 2))
    inner = small_model(include_top=False, include_preprocessing=False, pooling="avg")
    wrapper = keras.Sequential([keras.Input((64, 64, 3)), inner, keras.layers.Dense(3)])
    head = [to_numpy(w) for w in wrapper.layers[-1].weights]
    load_weights(wrapper, checkpoint)
    assert_close_to_reference(to_numpy(inner(images)), features)
    for before, after in zip(head, wrapper.layers[-1].weights, strict=True):
        np.testing.assert_array_equal(before, to_numpy(after))

    # keras.applications style: the MaxViT on `input_tensor`, the user's head in the same graph.
    inputs = keras.Input((64, 64, 3))
    base = small_model(
        input_tensor=inputs, include_top=False, include_preprocessing=False, pooling="avg"
    )
    graph = keras.Model(inputs, keras.layers.Dense(3, name="my_head")(base.output))
    load_weights(graph, checkpoint)
    assert_close_to_reference(to_numpy(base(images)), features)

    # The wrapper saved as .keras serves as weights of a plain MaxViT.
    wrapper.save(tmp_path / "wrapper.keras")
    plain = small_model(
        weights=str(tmp_path / "wrapper.keras"), include_top=False, include_preprocessing=False
    )
    for a, b in zip(plain.weights, inner.weights, strict=True):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))


@pytest.mark.slow
@pytest.mark.parametrize("resolution", [256, 384, 448])
def test_tiny_224_checkpoint_at_other_resolutions_matches_timm(resolution, tmp_path):
    import timm
    from conftest import perturb_timm_model
    from timm.models.maxxvit import checkpoint_filter_fn

    trained = timm.create_model("maxvit_tiny_tf_224")
    perturb_timm_model(trained)
    path = save_timm_checkpoint(trained, tmp_path / "tiny.safetensors")
    reference = timm.create_model("maxvit_tiny_tf_224", img_size=resolution)
    reference.load_state_dict(checkpoint_filter_fn(trained.state_dict(), reference))
    reference.eval()
    assert_tiny_matches(path, resolution, reference)

"""Bad arguments and files give clear errors that name what was received."""

import os

import numpy as np
import pytest
from conftest import SMALL_CONFIG, save_timm_checkpoint, timm_small_model

import keras_maxvit


def small_model(**kwargs):
    kwargs.setdefault("input_shape", (64, 64, 3))
    kwargs.setdefault("classes", 10)
    return keras_maxvit.MaxViT(**SMALL_CONFIG, **kwargs)


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "small.safetensors"
    return save_timm_checkpoint(timm_small_model(), path)


@pytest.mark.parametrize("weights", ["imagenet1k", "random", "model.onnx"])
def test_unknown_weights_string_lists_valid_ones(weights):
    with pytest.raises(ValueError, match=f"None, 'imagenet'.*Received: weights='{weights}'"):
        keras_maxvit.MaxViTTiny(weights=weights)


def test_weights_of_wrong_type():
    with pytest.raises(TypeError, match="Received: weights=3"):
        keras_maxvit.MaxViTTiny(weights=3)


def test_missing_weights_file_names_the_path(tmp_path):
    path = str(tmp_path / "nowhere.safetensors")
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        keras_maxvit.MaxViTTiny(weights=path)


def test_checkpoint_of_another_variant_names_tensor_and_shapes(small_checkpoint):
    wider = dict(SMALL_CONFIG, stage_filters=(32, 64, 64, 64))
    with pytest.raises(ValueError) as info:
        keras_maxvit.MaxViT(**wider, input_shape=(64, 64, 3), classes=10, weights=small_checkpoint)
    message = str(info.value)
    assert "'stages.1.blocks.0.conv.conv1_1x1.weight'" in message
    assert "(1, 1, 32, 128)" in message and "(1, 1, 32, 256)" in message
    deeper = dict(SMALL_CONFIG, depths=(1, 2, 2, 1))
    with pytest.raises(ValueError, match="has no tensor 'stages.2.blocks.1"):
        keras_maxvit.MaxViT(**deeper, input_shape=(64, 64, 3), classes=10, weights=small_checkpoint)
    shallower = dict(SMALL_CONFIG, depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="does not use, first 'stages.1.blocks.1"):
        keras_maxvit.MaxViT(
            **shallower, input_shape=(64, 64, 3), classes=10, weights=small_checkpoint
        )


def test_checkpoint_with_other_heads_count_names_the_bias_table(tmp_path):
    # 64-channel stages have 2 heads; a checkpoint with 1-head tables does not fit.
    narrow = timm_small_model(config=dict(SMALL_CONFIG, stage_filters=(32, 32, 32, 32)))
    path = save_timm_checkpoint(narrow, tmp_path / "narrow.safetensors")
    wider = dict(SMALL_CONFIG, stage_filters=(32, 32, 32, 64))
    with pytest.raises(ValueError) as info:
        keras_maxvit.MaxViT(**wider, input_shape=(64, 64, 3), classes=10, weights=path)
    assert "'stages.3.blocks.0.conv.conv1_1x1.weight'" in str(info.value)


def test_checkpoint_with_other_classes(small_checkpoint):
    with pytest.raises(ValueError, match="'head.fc.weight' has shape \\(48, 10\\)"):
        small_model(classes=5, weights=small_checkpoint)


def test_corrupt_checkpoint_names_the_file(tmp_path, small_checkpoint):
    path = tmp_path / "broken.safetensors"
    with open(small_checkpoint, "rb") as source:
        path.write_bytes(source.read()[:1000])
    with pytest.raises(ValueError, match="broken.safetensors"):
        small_model(weights=str(path))
    assert path.stat().st_size == 1000  # the user's file is left as it was


def test_input_tensor_shape_mismatch():
    import keras

    tensor = keras.Input((96, 96, 3))
    with pytest.raises(ValueError, match="does not match the shape of `input_tensor`"):
        small_model(input_tensor=tensor, input_shape=(64, 64, 3))
    model = small_model(input_tensor=tensor, input_shape=None)
    assert model.input_shape == (None, 96, 96, 3)
    assert np.isfinite(keras.ops.convert_to_numpy(model(np.zeros((1, 96, 96, 3))))).all()


def test_failed_load_leaves_the_weights_file_untouched(small_checkpoint):
    before = os.stat(small_checkpoint)
    with pytest.raises(ValueError):
        small_model(classes=3, weights=small_checkpoint)
    after = os.stat(small_checkpoint)
    assert (before.st_size, before.st_mtime_ns) == (after.st_size, after.st_mtime_ns)

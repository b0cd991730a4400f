"""Checkpoints by name: the preset table, name resolution and the Hub cache path."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    assert_close_to_reference,
    backend_independent,
    perturb_timm_model,
    timm_forward,
)

from keras_maxvit.presets import PRESETS
from keras_maxvit.weights import resolve_checkpoint


def test_preset_table_matches_timm_pretrained_cfgs():
    import timm
    from timm.models import get_pretrained_cfg

    assert set(PRESETS) == set(timm.list_pretrained("maxvit_*_tf_*"))
    assert len(PRESETS) == 21
    for tag, preset in PRESETS.items():
        cfg = get_pretrained_cfg(tag).to_dict()
        assert cfg["input_size"] == (3, preset["resolution"], preset["resolution"]), tag
        assert cfg["num_classes"] == preset["classes"], tag
        assert tuple(cfg["mean"]) == preset["mean"] and tuple(cfg["std"]) == preset["std"], tag
        assert cfg["crop_pct"] == preset["crop_pct"], tag
        assert cfg["interpolation"] == preset["interpolation"], tag
        assert tag.startswith(f"maxvit_{preset['variant']}_tf_{preset['resolution']}."), tag


@pytest.mark.parametrize(
    "weights,variant,resolution,expected",
    [
        ("imagenet", "tiny", 224, "maxvit_tiny_tf_224.in1k"),
        ("imagenet", "tiny", 384, "maxvit_tiny_tf_384.in1k"),
        ("imagenet", "small", 256, "maxvit_small_tf_224.in1k"),
        ("imagenet", "large", 448, "maxvit_large_tf_384.in1k"),
        ("imagenet", "base", 640, "maxvit_base_tf_512.in1k"),
        ("imagenet21k", "base", 384, "maxvit_base_tf_224.in21k"),
        ("imagenet21k-ft1k", "xlarge", 512, "maxvit_xlarge_tf_512.in21k_ft_in1k"),
        ("imagenet21k-ft1k", "large", 224, "maxvit_large_tf_384.in21k_ft_in1k"),
        ("maxvit_small_tf_512.in1k", "small", 224, "maxvit_small_tf_512.in1k"),
        ("hf://timm/maxvit_base_tf_224.in21k", "base", 224, "maxvit_base_tf_224.in21k"),
    ],
)
def test_names_resolve_to_checkpoints(weights, variant, resolution, expected):
    assert resolve_checkpoint(weights, variant, resolution) == expected


@pytest.mark.parametrize(
    "weights,variant,match",
    [
        ("imagenet21k", "tiny", "no 'imagenet21k' checkpoint of MaxViT-tiny"),
        ("imagenet", "xlarge", "no 'imagenet' checkpoint of MaxViT-xlarge"),
        ("maxvit_base_tf_224.in1k", "tiny", "is of MaxViT-base, not of MaxViT-tiny"),
        ("hf://timm/maxvit_tiny_tf_999.in1k", "tiny", "Unknown checkpoint"),
        ("imagenet", None, "only for the official variants"),
    ],
)
def test_bad_names(weights, variant, match):
    with pytest.raises(ValueError, match=match):
        resolve_checkpoint(weights, variant, 224)


HUB_SCRIPT = """
import json, sys, warnings
import numpy as np, keras
import keras_maxvit
images = np.load(sys.argv[1])
model = keras_maxvit.MaxViTTiny(
    weights=sys.argv[2], include_preprocessing=False, classifier_activation=None
)
out = {"logits": keras.ops.convert_to_numpy(model(images)).tolist()}
if sys.argv[3] == "new_head":
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        new_head = keras_maxvit.MaxViTTiny(
            weights="imagenet", include_preprocessing=False, classes=5
        )
    features = keras.Model(new_head.input, new_head.get_layer("head_pre_logits").output)
    out["pre_logits"] = keras.ops.convert_to_numpy(features(images)).tolist()
    out["warnings"] = [str(w.message) for w in caught]
print(json.dumps(out))
"""


def _fake_hub_cache(root, tag, model):
    """A Hugging Face Hub cache holding `model` as timm/<tag>, as the Hub lays it out."""
    from safetensors.torch import save_file

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = root / f"models--timm--{tag}"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))


def _run_hub_script(tmp_path, hub_cache, weights, mode="logits"):
    env = dict(
        os.environ,
        HF_HUB_CACHE=str(hub_cache),
        HF_HUB_OFFLINE="1",
        KERAS_HOME=str(tmp_path / "keras_home"),
    )
    return subprocess.run(
        [sys.executable, "-c", HUB_SCRIPT, str(tmp_path / "images.npy"), weights, mode],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@backend_independent
def test_imagenet_weights_load_from_the_hub_cache_then_the_keras_cache(tmp_path):
    import timm
    import torch

    reference = timm.create_model("maxvit_tiny_tf_224")
    perturb_timm_model(reference)
    hub = tmp_path / "hub"
    _fake_hub_cache(hub, "maxvit_tiny_tf_224.in1k", reference)
    images = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = timm_forward(reference, images)

    # 1. From the Hub cache: converted, then cached under KERAS_HOME.
    result = _run_hub_script(tmp_path, hub, "imagenet", mode="new_head")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert_close_to_reference(np.array(out["logits"]), expected)
    # classes=5: every weight but the classifier is the checkpoint's.
    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2))
        pre_logits = reference.forward_head(reference.forward_features(x), pre_logits=True)
    assert_close_to_reference(np.array(out["pre_logits"]), pre_logits.numpy())
    assert any("starts from random weights" in w for w in out["warnings"])
    cache_dir = tmp_path / "keras_home" / "models" / "keras_maxvit"
    assert sorted(p.name for p in cache_dir.iterdir()) == ["maxvit_tiny_tf_224.in1k.safetensors"]

    # 2. With no Hub cache at all, the Keras cache alone serves the weights.
    (tmp_path / "no_hub").mkdir()
    result = _run_hub_script(tmp_path, tmp_path / "no_hub", "maxvit_tiny_tf_224.in1k")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert_close_to_reference(np.array(out["logits"]), expected)

    # 3. A truncated cache file gives an error that names it and how to clear it.
    cached = cache_dir / "maxvit_tiny_tf_224.in1k.safetensors"
    cached.write_bytes(cached.read_bytes()[:5000])
    result = _run_hub_script(tmp_path, hub, "imagenet")
    assert result.returncode != 0
    assert str(cached) in result.stderr and "Delete it" in result.stderr
    assert cached.stat().st_size == 5000  # left for the user to inspect


@backend_independent
def test_truncated_hub_checkpoint_names_the_file(tmp_path):
    import timm

    hub = tmp_path / "hub"
    _fake_hub_cache(hub, "maxvit_tiny_tf_224.in1k", timm.create_model("maxvit_tiny_tf_224"))
    (checkpoint,) = hub.rglob("model.safetensors")
    checkpoint.write_bytes(checkpoint.read_bytes()[:3000])
    np.save(tmp_path / "images.npy", np.zeros((1, 224, 224, 3), "float32"))
    result = _run_hub_script(tmp_path, hub, "imagenet")
    assert result.returncode != 0
    assert "model.safetensors" in result.stderr and "Hugging Face cache" in result.stderr
    assert not (tmp_path / "keras_home" / "models" / "keras_maxvit").exists() or not any(
        (tmp_path / "keras_home" / "models" / "keras_maxvit").iterdir()
    )


HUB_VARIANTS = [
    ("tiny", "maxvit_tiny_tf_224.in1k", "imagenet"),
    ("small", "maxvit_small_tf_224.in1k", "imagenet"),
    pytest.param("base", "maxvit_base_tf_224.in1k", "imagenet", marks=pytest.mark.slow),
    pytest.param("large", "maxvit_large_tf_224.in1k", "imagenet", marks=pytest.mark.slow),
    pytest.param("xlarge", "maxvit_xlarge_tf_224.in21k", "imagenet21k", marks=pytest.mark.slow),
]

VARIANT_SCRIPT = """
import json, sys
import numpy as np, keras
import keras_maxvit
constructor = getattr(keras_maxvit, sys.argv[3])
preset = keras_maxvit.presets.PRESETS[sys.argv[4]]
model = constructor(
    weights=sys.argv[2], include_preprocessing=False, classifier_activation=None,
    classes=preset["classes"],
)
images = np.load(sys.argv[1])
print(json.dumps(keras.ops.convert_to_numpy(model(images)).tolist()))
"""


@pytest.mark.parametrize("variant,tag,alias", HUB_VARIANTS)
def test_named_checkpoint_from_the_hub_cache_matches_timm(variant, tag, alias, tmp_path):
    import timm

    reference = timm.create_model(tag.split(".")[0], num_classes=PRESETS[tag]["classes"])
    perturb_timm_model(reference)
    _fake_hub_cache(tmp_path / "hub", tag, reference)
    images = np.random.default_rng(1).normal(size=(1, 224, 224, 3)).astype("float32")
    np.save(tmp_path / "images.npy", images)
    expected = timm_forward(reference, images)
    del reference
    constructor = "MaxViTXLarge" if variant == "xlarge" else f"MaxViT{variant.title()}"
    env = dict(
        os.environ,
        HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_HUB_OFFLINE="1",
        KERAS_HOME=str(tmp_path / "keras_home"),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            VARIANT_SCRIPT,
            str(tmp_path / "images.npy"),
            alias,
            constructor,
            tag,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    logits = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    assert_close_to_reference(logits, expected)


@backend_independent
def test_missing_checkpoint_offline_names_the_repo(tmp_path):
    np.save(tmp_path / "images.npy", np.zeros((1, 224, 224, 3), "float32"))
    (tmp_path / "empty").mkdir()
    result = _run_hub_script(tmp_path, tmp_path / "empty", "maxvit_tiny_tf_384.in1k")
    assert result.returncode != 0
    assert "timm/maxvit_tiny_tf_384.in1k" in result.stderr

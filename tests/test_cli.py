"""The `keras-maxvit` command and the ImageNet helpers, against timm."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import (
    assert_close_to_reference,
    default_backend_only,
    perturb_timm_model,
    save_timm_checkpoint,
)

import keras_maxvit
from keras_maxvit import cli
from keras_maxvit.imagenet import imagenet_classes, load_eval_image
from keras_maxvit.presets import PRESETS


def _image(path, width, height, seed):
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


def _timm_eval_input(path, tag):
    """The image as timm's own eval transform for checkpoint `tag` prepares it."""
    import timm.data
    from PIL import Image

    config = timm.data.resolve_data_config(pretrained_cfg=PRESETS_TO_TIMM[tag])
    transform = timm.data.create_transform(**config)
    with Image.open(path) as image:
        return transform(image.convert("RGB")).numpy().transpose(1, 2, 0)


PRESETS_TO_TIMM = {
    tag: {
        "input_size": (3, p["resolution"], p["resolution"]),
        "crop_pct": p["crop_pct"],
        "interpolation": p["interpolation"],
        "mean": p["mean"],
        "std": p["std"],
        "crop_mode": p["crop_mode"],
    }
    for tag, p in PRESETS.items()
}


@pytest.mark.parametrize(
    "tag,width,height",
    [
        ("maxvit_tiny_tf_224.in1k", 300, 257),
        ("maxvit_tiny_tf_224.in1k", 180, 411),
        ("maxvit_base_tf_384.in21k_ft_in1k", 500, 389),
    ],
)
def test_eval_transform_and_preprocess_input_match_timm(tag, width, height, tmp_path):
    path = _image(tmp_path / "image.png", width, height, seed=width)
    preset = PRESETS[tag]
    pixels = load_eval_image(
        path, preset["resolution"], preset["crop_pct"], crop_mode=preset["crop_mode"]
    )
    ours = keras_maxvit.preprocess_input(pixels, weights=tag)
    np.testing.assert_allclose(ours, _timm_eval_input(path, tag), atol=1e-5)
    alias = keras_maxvit.preprocess_input(
        pixels, weights="imagenet", resolution=preset["resolution"]
    )
    if tag.endswith("in1k") and "in21k" not in tag:
        np.testing.assert_array_equal(alias, ours)
    # A model with its own preprocessing takes raw pixels: a no-op for it.
    model = keras_maxvit.MaxViT(
        stem_filters=16,
        stage_filters=(32,),
        depths=(1,),
        head_hidden_size=None,
        weights=None,
        input_shape=(64, 64, 3),
    )
    assert keras_maxvit.preprocess_input(pixels, model=model) is pixels


def test_decode_predictions():
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[281] == ("n02123045", "tabby")
    assert len({wnid for wnid, _ in classes}) == 1000
    preds = np.zeros((2, 1000), "float32")
    preds[0, [281, 5, 999]] = [0.7, 0.2, 0.1]
    preds[1, 1] = 1.0
    decoded = keras_maxvit.decode_predictions(preds, top=3)
    assert [name for _, name, _ in decoded[0]] == ["tabby", classes[5][1], "toilet_tissue"]
    assert decoded[0][0] == ("n02123045", "tabby", pytest.approx(0.7))
    assert decoded[1][0][1] == "goldfish"
    with pytest.raises(ValueError, match=r"Received: preds.shape=\(2, 10\)"):
        keras_maxvit.decode_predictions(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="Received: top=0"):
        keras_maxvit.decode_predictions(preds, top=0)


def test_list_prints_every_checkpoint(capsys):
    assert cli.main(["list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 + 21
    assert any(
        line.startswith("maxvit_xlarge_tf_224.in21k") and "506.99M" in line for line in lines
    )
    assert any(line.startswith("maxvit_tiny_tf_224.in1k") and "83.62" in line for line in lines)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    import timm

    reference = timm.create_model("maxvit_tiny_tf_224")
    perturb_timm_model(reference)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    return reference, save_timm_checkpoint(reference, path)


def test_predict_and_convert_match_timm(tiny_checkpoint, tmp_path, capsys):
    import torch

    reference, checkpoint = tiny_checkpoint
    images = [_image(tmp_path / f"{i}.png", 260 + 40 * i, 240, seed=i) for i in range(2)]
    tag = "maxvit_tiny_tf_224.in1k"
    timm_inputs = np.stack([_timm_eval_input(path, tag) for path in images])
    with torch.no_grad():
        logits = reference(torch.from_numpy(timm_inputs.transpose(0, 3, 1, 2)))
        expected = torch.softmax(logits, -1).numpy()

    assert cli.main(["predict", *images, "--weights", checkpoint, "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    classes = imagenet_classes()
    for i, path in enumerate(images):
        block = out[out.index(path) + 1 : out.index(path) + 4]
        best = np.argsort(expected[i])[::-1][:3]
        for line, index in zip(block, best, strict=True):
            wnid, name = classes[index]
            assert f"{name} ({wnid})" in line
            assert float(line.rsplit(":", 1)[1]) == pytest.approx(expected[i, index], abs=1e-4)

    out_path = tmp_path / "tiny.keras"
    assert cli.main(["convert", checkpoint, "--out", str(out_path)]) == 0
    model = keras.saving.load_model(out_path, safe_mode=True)
    raw = np.stack([load_eval_image(p, 224, 0.95) for p in images])
    # predict_on_batch: compiled on JAX (an eager call runs MaxViT-T op by op).
    assert_close_to_reference(keras.ops.convert_to_numpy(model.predict_on_batch(raw)), expected)

    # An existing file is never overwritten without --force.
    before = out_path.read_bytes()
    assert cli.main(["convert", checkpoint, "--out", str(out_path)]) == 1
    assert "exists" in capsys.readouterr().err
    assert out_path.read_bytes() == before


def test_predict_uses_the_eval_transform_and_normalization_a_file_records(
    tmp_path, capsys, monkeypatch
):
    """A timm export whose config.json says 64x64, squash, crop_pct 0.9, 0.5/0.5."""
    import functools

    import timm.data
    import torch
    from conftest import SMALL_CONFIG
    from PIL import Image
    from test_preprocessing import _timm_export

    overrides = dict(input_size=(3, 64, 64), crop_pct=0.9, crop_mode="squash", pool_size=None)
    reference, checkpoint = _timm_export(
        tmp_path / "export", "maxvit_tiny_tf_384.in1k", size=64, **overrides
    )
    config = json.loads((tmp_path / "export" / "config.json").read_text())["pretrained_cfg"]
    assert config["crop_mode"] == "squash" and config["mean"] == [0.5] * 3
    transform = timm.data.create_transform(**timm.data.resolve_data_config(pretrained_cfg=config))
    images = [_image(tmp_path / f"{i}.png", 150 + 70 * i, 120, seed=i) for i in range(2)]
    with torch.no_grad():
        inputs = []
        for path in images:
            with Image.open(path) as image:
                inputs.append(transform(image.convert("RGB")))
        expected = torch.softmax(reference(torch.stack(inputs)), -1).numpy()
    # The small configuration stands in for a variant (the command builds variants).
    small = functools.partial(keras_maxvit.MaxViT, **SMALL_CONFIG)
    monkeypatch.setattr(cli, "_constructor", lambda variant: small)
    assert cli.main(["predict", *images, "--weights", checkpoint, "--top", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    for i, path in enumerate(images):
        block = out[out.index(path) + 1 : out.index(path) + 4]
        best = np.argsort(expected[i])[::-1][:3]
        for line, index in zip(block, best, strict=True):
            assert f"class {index}:" in line
            assert float(line.rsplit(":", 1)[1]) == pytest.approx(expected[i, index], abs=1e-4)


def test_predict_takes_each_presets_eval_transform():
    for tag, preset in PRESETS.items():
        transform = cli._eval_transform(tag, tag, preset["resolution"])
        assert transform == {
            "crop_pct": preset["crop_pct"],
            "crop_mode": preset["crop_mode"],
            "interpolation": "bicubic",
        }
    assert cli._eval_transform(None, "none.safetensors", 384)["crop_mode"] == "squash"
    assert cli._eval_transform(None, "none.safetensors", 224) == {
        "crop_pct": 0.95,
        "crop_mode": "center",
        "interpolation": "bicubic",
    }


@pytest.mark.parametrize(
    "argv,message",
    [
        (["predict", "missing.jpg", "--weights", "maxvit_tiny_tf_224.in1k"], "No such image file"),
        (["predict", "{image}", "--weights", "hf://timm/maxvit_x.in1k"], "Unknown checkpoint"),
        (["predict", "{image}", "--weights", "no_such_weights"], "neither a checkpoint name"),
        (["predict", "{image}", "--weights", "missing.safetensors"], "neither a checkpoint"),
        (["predict", "{image}", "--model", "tiny", "--weights", "imagenet21k"], "no 'imagenet21k'"),
        (["convert", "maxvit_tiny_tf_224.in1k", "--out", "x.h5"], "must be a .keras file"),
        (["predict", "{not_image}", "--weights", "{checkpoint}"], "as an image"),
        (["predict", "{image}", "--weights", "{checkpoint}"], "truncated, corrupt"),
    ],
)
def test_bad_arguments_give_one_line_and_nonzero_exit(argv, message, tmp_path, capsys):
    image = _image(tmp_path / "a.png", 64, 64, seed=0)
    not_image = tmp_path / "notes.txt"
    not_image.write_text("not an image")
    checkpoint = tmp_path / "c.safetensors"
    checkpoint.write_bytes(b"")
    argv = [a.format(image=image, not_image=not_image, checkpoint=checkpoint) for a in argv]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keras-maxvit: error:") and message in err[0]


@default_backend_only
def test_console_script_help():
    script = Path(sys.executable).parent / "keras-maxvit"
    for command in ([], ["list"], ["predict"], ["convert"], ["fit"], ["explain"]):
        result = subprocess.run(
            [str(script), *command, "--help"],
            capture_output=True,
            text=True,
            env=dict(os.environ),
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        assert "usage: keras-maxvit" in result.stdout


@default_backend_only
def test_readme_commands_with_checkpoint_names(tmp_path):
    """`predict --weights imagenet` and `convert <tag>` through a local Hub cache."""
    import timm
    from test_pretrained import _fake_hub_cache

    reference = timm.create_model("maxvit_tiny_tf_224")
    perturb_timm_model(reference)
    _fake_hub_cache(tmp_path / "hub", "maxvit_tiny_tf_224.in1k", reference)
    env = dict(
        os.environ,
        HF_HUB_CACHE=str(tmp_path / "hub"),
        HF_HUB_OFFLINE="1",
        KERAS_HOME=str(tmp_path / "keras_home"),
    )
    script = str(Path(sys.executable).parent / "keras-maxvit")
    image = _image(tmp_path / "cat.png", 320, 240, seed=3)

    def run(*args):
        result = subprocess.run(
            [script, *args], env=env, capture_output=True, text=True, timeout=900
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout

    out = run("predict", image, "--model", "tiny", "--weights", "imagenet", "--top", "2")
    lines = out.strip().splitlines()
    assert lines[0] == image and len(lines) == 3
    import torch

    with torch.no_grad():
        x = torch.from_numpy(_timm_eval_input(image, "maxvit_tiny_tf_224.in1k")[None])
        probs = torch.softmax(reference(x.permute(0, 3, 1, 2)), -1).numpy()[0]
    wnid, name = imagenet_classes()[int(np.argmax(probs))]
    assert f"1. {name} ({wnid})" in lines[1]

    out_path = tmp_path / "tiny.keras"
    assert "Saved" in run("convert", "maxvit_tiny_tf_224.in1k", "--out", str(out_path))
    model = keras.saving.load_model(out_path, safe_mode=True)
    raw = load_eval_image(image, 224, 0.95)[None]
    assert_close_to_reference(keras.ops.convert_to_numpy(model(raw))[0], probs)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["fit", "--batch-size", "0"], "argument --batch-size: must be a positive integer"),
        (["fit", "--image-size", "16"], "argument --image-size: must be an integer of at least 32"),
        (["fit", "--epochs", "two"], "argument --epochs: must be an integer. Received: 'two'"),
        (["fit", "--lr=-1e-3"], "argument --lr: must be a positive number"),
        (["fit", "--drop-path-rate", "1.5"], "argument --drop-path-rate: must be in [0, 1)"),
        (["fit", "--patience", "-1"], "argument --patience: must be 0 or more"),
        (["predict", "a.png", "--top", "0"], "argument --top: must be a positive integer"),
        (["predict", "a.png", "--size", "16"], "argument --size: must be an integer of at least"),
        (["convert", "x", "--out", "y.keras", "--size", "big"], "argument --size: must be an"),
    ],
)
def test_bad_option_values_name_the_option(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Received:" in err


def test_fit_with_nothing_to_train_names_both_options(tmp_path, capsys):
    argv = ["fit", "--head-epochs", "0", "--epochs", "0", "--output-dir", str(tmp_path / "run")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "--head-epochs=0, --epochs=0" in err
    assert not (tmp_path / "run").exists()

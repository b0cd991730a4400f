"""Grad-CAM and attention maps against independent references (timm autograd, NumPy)."""

import os
import re

import keras
import numpy as np
import pytest
import torch
from conftest import (
    SMALL_CONFIG,
    default_backend_only,
    save_timm_checkpoint,
    timm_small_model,
    to_numpy,
)

import keras_maxvit
from keras_maxvit import explain
from keras_maxvit.explain.gradcam import resize_bilinear


def small_pair(tmp_path, img_size=(64, 64)):
    """A perturbed timm MaxViT and ours with its weights (no preprocessing, softmax head)."""
    reference = timm_small_model(img_size=img_size)
    path = save_timm_checkpoint(reference, tmp_path / "small.safetensors")
    model = keras_maxvit.MaxViT(
        **SMALL_CONFIG,
        weights=path,
        classes=10,
        input_shape=img_size + (3,),
        include_preprocessing=False,
    )
    return reference, model


def timm_grad_cam(reference, images, stage, class_index=None, method="gradcam"):
    """Grad-CAM (or HiResCAM) of a timm model by torch autograd: (heatmaps,
    cams, classes, logits)."""
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    store = {}
    handle = reference.stages[stage].register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = reference(x)
    handle.remove()
    index = logits.argmax(-1) if class_index is None else torch.as_tensor(class_index)
    index = index.expand(len(images)) if index.ndim == 0 else index
    score = logits.gather(1, index[:, None])[:, 0]
    (gradient,) = torch.autograd.grad(score.sum(), store["a"])
    weights = gradient.mean((2, 3), keepdim=True) if method == "gradcam" else gradient
    cams = torch.relu((weights * store["a"]).sum(1)).detach()
    heat = torch.nn.functional.interpolate(
        cams[:, None], size=images.shape[1:3], mode="bilinear", align_corners=False
    )[:, 0]
    heat = heat / heat.amax((1, 2), keepdim=True)
    return heat.numpy(), cams.numpy(), index.numpy(), score.detach().numpy()


@pytest.mark.parametrize(
    "img_size,layer,stage,class_index,method",
    [
        ((64, 64), None, 3, None, "gradcam"),
        ((96, 64), "P4", 2, 3, "gradcam"),
        ((64, 64), "stage1_block1_grid_attn", 1, [1, 7], "gradcam"),
        ((64, 64), "stage1_block1_grid_attn", 1, [1, 7], "hirescam"),
    ],
)
def test_grad_cam_equals_timm_autograd(tmp_path, img_size, layer, stage, class_index, method):
    reference, model = small_pair(tmp_path, img_size)
    images = np.random.default_rng(0).normal(size=(2,) + img_size + (3,)).astype("float32")
    result = explain.grad_cam(model, images, class_index=class_index, layer=layer, method=method)
    assert result.method == method
    heat, cams, classes, scores = timm_grad_cam(reference, images, stage, class_index, method)
    np.testing.assert_array_equal(result.classes, classes)
    # The score is the logit, not the softmax the model outputs.
    np.testing.assert_allclose(result.scores, scores, rtol=1e-4, atol=1e-4)
    assert cams.max() > 0
    np.testing.assert_allclose(result.cams, cams, atol=1e-4 * cams.max())
    np.testing.assert_allclose(result.heatmaps, heat, atol=1e-3)
    # The classifier keeps its softmax.
    assert model.get_layer("predictions").activation is keras.activations.softmax


def test_resize_bilinear_equals_torch_interpolate():
    maps = np.random.default_rng(1).uniform(size=(2, 3, 5)).astype("float32")
    ours = resize_bilinear(maps, 17, 40)
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[:, None], size=(17, 40), mode="bilinear", align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_grad_cam_at_any_size_from_a_keras_file(tmp_path):
    """An odd size (padded attention) on a reloaded any-size model: the channel
    weights equal central finite differences of the logit."""
    model = keras_maxvit.MaxViT(
        **SMALL_CONFIG, weights=None, classes=6, input_shape=(None, None, 3)
    )
    path = tmp_path / "any.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    images = np.random.default_rng(2).uniform(0, 255, (2, 70, 54, 3)).astype("float32")
    result = explain.grad_cam(loaded, images, layer="P4")
    again = explain.grad_cam(model, images, layer="P4")
    np.testing.assert_allclose(result.cams, again.cams, rtol=1e-5, atol=1e-6)
    assert result.heatmaps.shape == (2, 70, 54) and result.cams.shape == (2, 5, 4)

    tensor = loaded.get_layer(result.layer).output
    features = keras.Model(loaded.inputs[0], tensor)
    hidden_layers = keras.Model(tensor, loaded.get_layer("head_pre_logits").output)
    dense = loaded.get_layer("predictions")
    activations = features.predict(images, verbose=0).astype("float64")
    kernel, bias = (to_numpy(w).astype("float64") for w in dense.weights)

    def score(a):
        hidden = hidden_layers.predict(a.astype("float32"), verbose=0).astype("float64")
        return (hidden @ kernel + bias)[np.arange(2), result.classes]

    height, width = activations.shape[1:3]
    for channel in (0, 17, 63):
        step = np.zeros_like(activations)
        step[..., channel] = 1e-2
        derivative = (score(activations + step) - score(activations - step)) / 2e-2
        np.testing.assert_allclose(
            result.channel_weights[:, channel] * height * width, derivative, rtol=2e-2, atol=2e-3
        )


def numpy_attention(x, kernel, bias, table, partition_type, size, head_size):
    """Softmax weights `(B, gr, gc, heads, T, T)` by loops; padded tokens left 0."""
    batch, height, width, channels = x.shape
    rows, cols = size
    heads = channels // head_size
    qkv = (x.astype("float64") @ kernel + bias).reshape(batch, height, width, 3, heads, head_size)
    query, key = qkv[..., 0, :, :], qkv[..., 1, :, :]
    group_rows, group_cols = -(-height // rows), -(-width // cols)
    out = np.zeros((batch, group_rows, group_cols, heads, rows * cols, rows * cols))
    for r in range(group_rows):
        for c in range(group_cols):
            if partition_type == "block":
                pixels = [(r * rows + i, c * cols + j) for i in range(rows) for j in range(cols)]
            else:
                pixels = [
                    (i * group_rows + r, j * group_cols + c)
                    for i in range(rows)
                    for j in range(cols)
                ]
            valid = [t for t, (y, x_) in enumerate(pixels) if y < height and x_ < width]
            for t in valid:
                qi, qj = divmod(t, cols)
                logits = np.full((batch, heads, rows * cols), -np.inf)
                for s in valid:
                    ki, kj = divmod(s, cols)
                    dot = np.einsum(
                        "bhd,bhd->bh",
                        query[:, pixels[t][0], pixels[t][1]],
                        key[:, pixels[s][0], pixels[s][1]],
                    )
                    logits[:, :, s] = (
                        dot * head_size**-0.5 + table[:, ki - qi + rows - 1, kj - qj + cols - 1]
                    )
                weights = np.exp(logits - logits.max(-1, keepdims=True))
                out[:, r, c, :, t] = weights / weights.sum(-1, keepdims=True)
    return out


def perturbed_model(input_shape, window_size=None):
    model = keras_maxvit.MaxViT(
        **SMALL_CONFIG, weights=None, classes=4, input_shape=input_shape, window_size=window_size
    )
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, keras_maxvit.layers.PartitionAttentionBlock):
            table = layer.attn.relative_position_bias_table
            table.assign(rng.normal(size=table.shape).astype("float32"))
    return model


@pytest.mark.parametrize("partition_type", ["block", "grid"])
@pytest.mark.parametrize("image_size,window", [((64, 64), None), ((70, 54), 3)])
def test_attention_weights_and_maps_equal_numpy(partition_type, image_size, window):
    shape = (None, None, 3) if window else image_size + (3,)
    model = perturbed_model(shape, window)
    images = np.random.default_rng(4).uniform(0, 255, (2,) + image_size + (3,)).astype("float32")
    name = f"stage1_block1_{partition_type}_attn"
    weights, block = explain.attention_weights(model, images, name)

    inputs = keras.Model(model.inputs[0], block.input)(images)
    normed = to_numpy(block.norm1(inputs))
    attn = block.attn
    kernel, bias = (to_numpy(w).astype("float64") for w in attn.qkv.weights)
    table = to_numpy(attn.relative_position_bias_table).astype("float64")
    expected = numpy_attention(
        normed, kernel, bias, table, partition_type, attn._size, attn.head_size
    )
    real = expected.sum(-1) > 0  # queries that are pixels, not padding
    assert real.sum() == 2 * normed.shape[1] * normed.shape[2] * attn.num_heads
    np.testing.assert_allclose(weights[real], expected[real], atol=2e-5)

    # The maps put each key's weight on its stride x stride patch of the image.
    height, width = image_size
    queries = [(0, 0), (height - 1, width - 1), (height // 3, width // 2)]
    result = explain.attention_maps(model, images, name, queries)
    stride = 8  # stage 1
    assert result.stride == stride and result.partition_type == partition_type
    rows, cols = attn._size
    group_rows, group_cols = expected.shape[1:3]
    ys, xs = np.mgrid[0:height, 0:width] // stride
    for q, (y, x) in enumerate(queries):
        fy, fx = y // stride, x // stride
        if partition_type == "block":
            group = (fy // rows, fx // cols)
            same = (ys // rows == group[0]) & (xs // cols == group[1])
            token, keys = (fy % rows) * cols + fx % cols, (ys % rows) * cols + xs % cols
        else:
            group = (fy % group_rows, fx % group_cols)
            same = (ys % group_rows == group[0]) & (xs % group_cols == group[1])
            token = (fy // group_rows) * cols + fx // group_cols
            keys = (ys // group_rows) * cols + xs // group_cols
        row = expected[:, group[0], group[1], :, token]  # (B, heads, T)
        want = np.where(same[None, None], row[:, :, keys], 0.0)
        np.testing.assert_allclose(result.maps[:, q], want, atol=2e-5)
        # Over the feature map (one image pixel per key), each head's weights sum to 1.
        np.testing.assert_allclose(
            result.maps[:, q, :, ::stride, ::stride].sum((-1, -2)), 1, atol=1e-5
        )
    np.testing.assert_allclose(result.mean(), result.maps.mean(2))


@pytest.fixture(scope="module")
def tiny_classifier():
    return keras_maxvit.MaxViT(**SMALL_CONFIG, weights=None, classes=5, input_shape=(64, 64, 3))


@pytest.mark.parametrize(
    "call,error,message",
    [
        (lambda m, x: explain.grad_cam(m, x, layer="stage9"), ValueError, "layer='stage9'"),
        (lambda m, x: explain.grad_cam(m, x, layer="head_pool"), ValueError, "layer='head_pool'"),
        (lambda m, x: explain.grad_cam(m, x, class_index=5), ValueError, "class_index=5"),
        (lambda m, x: explain.grad_cam(m, x, class_index=[0]), ValueError, "class_index=[0]"),
        (
            lambda m, x: explain.grad_cam(m, x[0, :, :, :2]),
            ValueError,
            "images.shape=(1, 64, 64, 2)",
        ),
        (lambda m, x: explain.grad_cam("model", x), TypeError, "model=str"),
        (lambda m, x: explain.grad_cam(m, x, method="cam"), ValueError, "method='cam'"),
        (
            lambda m, x: explain.attention_maps(m, x, "stage0_block0_mbconv"),
            ValueError,
            "layer='stage0_block0_mbconv'",
        ),
        (
            lambda m, x: explain.attention_maps(m, x, "stage0_block0_grid_attn", [(64, 0)]),
            ValueError,
            "queries=[(64, 0)]",
        ),
    ],
)
def test_bad_arguments_are_named(tiny_classifier, call, error, message):
    images = np.zeros((2, 64, 64, 3), "float32")
    with pytest.raises(error, match=re.escape(message)):
        call(tiny_classifier, images)


def test_grad_cam_needs_a_classifier():
    backbone = keras_maxvit.MaxViT(
        **SMALL_CONFIG, weights=None, include_top=False, input_shape=(64, 64, 3)
    )
    with pytest.raises(ValueError, match="include_top=True"):
        explain.grad_cam(backbone, np.zeros((1, 64, 64, 3), "float32"))


@default_backend_only
def test_explain_command_writes_the_figures(tmp_path, capsys):
    from PIL import Image

    from keras_maxvit import cli
    from keras_maxvit.datasets.shapes import draw

    model = keras_maxvit.MaxViT(**SMALL_CONFIG, weights=None, classes=5, input_shape=(64, 64, 3))
    model.save(tmp_path / "shapes.keras")
    rng = np.random.default_rng(5)
    paths = []
    for label in (0, 2):
        paths.append(str(tmp_path / f"shape{label}.png"))
        Image.fromarray(draw(label, rng)).save(paths[-1])
    out = tmp_path / "explained"
    argv = ["explain", *paths, "--weights", str(tmp_path / "shapes.keras"), "--out", str(out)]
    assert cli.main(argv) == 0
    top = model.predict(np.stack([np.asarray(Image.open(p), "float32") for p in paths]), verbose=0)
    printed = capsys.readouterr().out.splitlines()
    for path, line, label in zip(paths, printed, top.argmax(-1), strict=True):
        target = out / (os.path.basename(path)[:-4] + "_explain.png")
        assert line == f"{path}: class {label} -> {target}"
        with Image.open(target) as figure:  # image, Grad-CAM and two attention panels
            assert figure.format == "PNG" and figure.width > 3 * figure.height
    # Nothing is overwritten without --overwrite.
    before = (out / "shape0_explain.png").stat().st_mtime_ns
    assert cli.main(argv) == 1
    assert "pass --overwrite" in capsys.readouterr().err
    assert (out / "shape0_explain.png").stat().st_mtime_ns == before
    layers = ["--attention-layer", "stage0_block0_grid_attn", "--query", "3", "60"]
    assert cli.main([*argv, "--overwrite", "--class", "4", *layers]) == 0
    assert capsys.readouterr().out.count("class 4") == 2

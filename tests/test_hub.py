"""keras_maxvit.hub: keras-hub's harness, presets via the Hub cache, timm parity, tasks.

The checkpoints come from a local Hugging Face cache laid out as the Hub's
(`HF_HUB_OFFLINE`), written by timm's own `save_for_hf`: under the tag
`maxvit_tiny_tf_224.in1k`, a tiny MaxViT whose `config.json` records its
architecture in `model_args`, as timm records it, so every preset test runs
in seconds on a CPU. Parity is against timm's outputs and eval transform.
keras-hub's `DeepLabV3ImageSegmenter` and `RetinaNetObjectDetector` are
built on that pretrained backbone, fitted on generated scenes and reloaded.

One file, one tiny configuration and one batch shape for every eager call:
under JAX most of the time is compiling, and compiled ops are reused.
"""

import json
import os
import subprocess
import sys
from typing import NamedTuple

import keras
import numpy as np
import pytest
from conftest import assert_close_to_reference, perturb_timm_model, timm_forward, to_numpy

keras_hub = pytest.importorskip("keras_hub")

from keras_hub.src.tests.test_case import TestCase  # noqa: E402

import keras_maxvit  # noqa: E402
from keras_maxvit.hub import (  # noqa: E402
    MaxViTBackbone,
    MaxViTImageClassifier,
    MaxViTImageClassifierPreprocessor,
    MaxViTImageConverter,
)
from keras_maxvit.presets import PRESETS  # noqa: E402

TAG = "maxvit_tiny_tf_224.in1k"
# The same architecture trained at 96x96 (window 3), for loading at another size.
AT_96 = "hf://timm/maxvit_tiny_tf_224.at_96"
# Every part of MaxViT at 64x64 (window = grid = 2) in three stages (P1..P4), in
# 24k weights.
TINY = {"stem_filters": 8, "stage_filters": (8, 16, 16), "depths": (1, 1, 1), "head_size": 8}
# The same model as timm's keyword overlays of `maxvit_tiny_tf_224`.
TIMM_TINY = {
    "stem_width": 8,
    "embed_dim": (8, 16, 16),
    "depths": (1, 1, 1),
    "transformer_dim_head": 8,
    "head_hidden_size": 16,
}
SIZE = 64
CLASSES = 5
LEVELS = ("P1", "P2", "P3", "P4")
# A train step through the MaxViT trunk takes ~15 s to trace (TensorFlow) or compile
# (JAX) on 2 CPU cores, the heads alone ~5 s: there the task fits train the heads on
# a frozen trunk. PyTorch, which neither traces nor compiles, trains the trunk too
# (the core suite trains MaxViT under every backend).
TRAIN_TRUNK = keras.backend.backend() == "torch"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def hub_snapshot(root, tag):
    """The snapshot folder of repo `timm/<tag>` in a Hugging Face cache at `root`."""
    repo = root / f"models--timm--{tag}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return snapshot


def timm_tiny(img_size=SIZE, seed=0):
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(
        "maxvit_tiny_tf_224", img_size=img_size, num_classes=CLASSES, **TIMM_TINY
    )
    perturb_timm_model(model, seed=seed)
    return model


def timm_pyramid(model, images):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        maps = model.forward_intermediates(x, intermediates_only=True)
    return {level: m.permute(0, 2, 3, 1).numpy() for level, m in zip(LEVELS, maps, strict=True)}


def normal_images(n=2, size=SIZE, seed=0):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype("float32")


class Hub(NamedTuple):
    root: object  # the Hugging Face cache
    reference: object  # the timm model saved there as timm/<TAG>
    at_96: object  # the one saved as AT_96


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """An offline Hugging Face cache with a tiny timm MaxViT as `timm/maxvit_tiny_tf_224.in1k`."""
    import huggingface_hub.constants
    from timm.models._hub import save_for_hf

    root = tmp_path_factory.mktemp("hf_hub")
    reference, at_96 = timm_tiny(), timm_tiny(img_size=96, seed=1)
    save_for_hf(reference, str(hub_snapshot(root, TAG)), safe_serialization=True)
    save_for_hf(at_96, str(hub_snapshot(root, AT_96.split("/")[-1])), safe_serialization=True)
    with pytest.MonkeyPatch.context() as patch:
        # Read at call time by huggingface_hub (the environment, by subprocesses).
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_HUB_CACHE", str(root))
        yield Hub(root, reference, at_96)


@pytest.fixture(scope="module")
def classifier(hub):
    """`keras_hub.models.ImageClassifier.from_preset(TAG)`, loaded once for the module."""
    return keras_hub.models.ImageClassifier.from_preset(TAG)


@pytest.fixture(scope="class")
def hub_for_class(request, hub):
    request.cls.hub = hub


# === keras-hub's own harness, on the tiny configuration ===


@pytest.mark.usefixtures("hub_for_class")
class MaxViTHarnessTest(TestCase):
    def setUp(self):
        super().setUp()
        # Backend tensors: the harness runs `compute_output_spec` on them.
        self.images = keras.ops.convert_to_tensor(normal_images())
        self.backbone_kwargs = {**TINY, "image_shape": (SIZE, SIZE, 3)}

    def test_backbone_basics(self):
        # The dtype policies reach every layer through the same code on every backend;
        # JAX's op-by-op dispatch would compile each op again for each of the five
        # policies (~50 s), so the policy checks run under TensorFlow (keras-hub's
        # harness skips them on a torch CPU). MaxViT partitions channels-last maps:
        # there is no channels_first variant to check.
        policy_checks = keras.backend.backend() == "tensorflow"
        self.run_vision_backbone_test(
            cls=MaxViTBackbone,
            init_kwargs=self.backbone_kwargs,
            input_data=self.images,
            expected_output_shape=(2, 4, 4, 16),
            expected_pyramid_output_keys=list(LEVELS),
            expected_pyramid_image_sizes=[(SIZE // 2**n,) * 2 for n in range(1, 5)],
            run_mixed_precision_check=policy_checks,
            run_quantization_check=policy_checks,
            run_data_format_check=False,
        )

    def test_backbone_saving(self):
        self.run_model_saving_test(
            cls=MaxViTBackbone, init_kwargs=self.backbone_kwargs, input_data=self.images
        )

    def test_classifier_basics_and_saving(self):
        converter = MaxViTImageConverter(image_size=(SIZE, SIZE), scale=1 / 255.0, crop_pct=0.9)
        backbone = MaxViTBackbone(**self.backbone_kwargs)
        backbone.trainable = TRAIN_TRUNK
        init_kwargs = {
            "backbone": backbone,
            "preprocessor": MaxViTImageClassifierPreprocessor(converter),
            "num_classes": 3,
        }
        pixels = np.random.default_rng(1).uniform(0, 255, (2, 80, 72, 3)).astype("float32")
        self.run_task_test(
            cls=MaxViTImageClassifier,
            init_kwargs=init_kwargs,
            train_data=(pixels, np.array([0, 2])),
            expected_output_shape=(2, 3),
        )
        self.run_model_saving_test(
            cls=MaxViTImageClassifier, init_kwargs=init_kwargs, input_data=self.images
        )

    def test_converter_in_tf_data_and_grain(self):
        pixels = np.random.default_rng(2).uniform(0, 255, (2, 80, 72, 3)).astype("float32")
        output = self.run_preprocessing_layer_test(
            cls=MaxViTImageConverter,
            init_kwargs={
                "image_size": (SIZE, SIZE),
                "scale": 1 / 255,
                "offset": -0.5,
                "crop_pct": 0.8,
            },
            input_data=pixels,
            return_output=True,
        )
        # The centre 64/80 of each side (64x57), its centre square resized to 64x64, scaled.
        crop = pixels[:, 8:72, 7:64]
        resized = keras.layers.Resizing(SIZE, SIZE, crop_to_aspect_ratio=True)(crop)
        self.assertAllClose(output, to_numpy(resized) / 255 - 0.5, atol=1e-6, rtol=1e-6)

    def test_preset(self):
        images = normal_images(seed=3)
        self.run_preset_test(
            cls=MaxViTBackbone,
            preset=TAG,
            input_data=images,
            expected_output=timm_pyramid(self.hub.reference, images)["P4"],
        )


# === Presets: the Hub cache, timm parity, new heads, other sizes ===


def test_image_classifier_from_preset_matches_timm(hub, classifier):
    assert isinstance(classifier, MaxViTImageClassifier)
    images = normal_images(seed=4)
    logits = to_numpy(classifier(images))  # a call does not preprocess (predict and fit do)
    assert_close_to_reference(logits, timm_forward(hub.reference, images))
    # The preprocessor is the checkpoint's eval transform.
    converter = classifier.preprocessor.image_converter
    assert isinstance(converter, MaxViTImageConverter)
    assert converter.image_size == (SIZE, SIZE) and converter.crop_pct == 0.95
    assert converter.interpolation == "bicubic" and converter.crop_to_aspect_ratio
    np.testing.assert_allclose(converter.scale, 1 / (255 * np.array(PRESETS[TAG]["std"])))
    # Backbone.from_preset with the hf:// handle: the same pyramid as timm's.
    backbone = keras_hub.models.Backbone.from_preset(f"hf://timm/{TAG}")
    assert isinstance(backbone, MaxViTBackbone) and backbone.image_shape == (SIZE, SIZE, 3)
    maps = keras.Model(backbone.inputs, backbone.pyramid_outputs)(images)
    expected = timm_pyramid(hub.reference, images)
    for level in LEVELS:
        assert_close_to_reference(to_numpy(maps[level]), expected[level])


def test_num_classes_gives_a_new_classifier_on_the_pretrained_head(hub):
    import torch

    classifier = MaxViTImageClassifier.from_preset(TAG, num_classes=3)
    assert classifier.output_dense.kernel.shape == (16, 3)
    images = normal_images(seed=5)
    pre_logits = keras.Model(classifier.inputs, classifier.pre_logits.output)(images)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2))
    with torch.no_grad():
        reference = hub.reference.forward_head(hub.reference.forward_features(x), pre_logits=True)
    assert_close_to_reference(to_numpy(pre_logits), reference.numpy())


def test_image_shape_resizes_the_bias_tables_as_timm(hub, tmp_path):
    """A checkpoint of 96x96 (window 3) loaded at 64x64 (window 2), as timm resizes it."""
    from timm.models.maxxvit import checkpoint_filter_fn

    reference = timm_tiny(seed=2)
    reference.load_state_dict(checkpoint_filter_fn(hub.at_96.state_dict(), reference))
    images = normal_images(seed=6)
    from_hub = MaxViTImageClassifier.from_preset(AT_96, image_shape=(SIZE, SIZE, 3))
    assert from_hub.backbone.partition_size == 2
    assert from_hub.preprocessor.image_converter.image_size == (SIZE, SIZE)
    assert_close_to_reference(to_numpy(from_hub(images)), timm_forward(reference, images))
    # A keras-hub preset saved at 96x96 loads at 64x64 with the same tables.
    at_96 = MaxViTImageClassifier.from_preset(AT_96)
    assert at_96.backbone.partition_size == 3
    at_96.save_to_preset(str(tmp_path))
    resized = keras_hub.models.ImageClassifier.from_preset(str(tmp_path), image_shape=(64, 64, 3))
    assert resized.backbone.partition_size == 2
    assert resized.preprocessor.image_converter.image_size == (SIZE, SIZE)
    for ours, expected in zip(resized.weights, from_hub.weights, strict=True):
        assert ours.path == expected.path
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(expected), ours.path)


def _hub_config(tag):
    """timm/<tag>'s config.json as the Hub serves it (architecture, classes, pretrained_cfg)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(tag).to_dict()
    return {
        "architecture": tag.split(".")[0],
        "num_classes": cfg["num_classes"],
        "pretrained_cfg": {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, tuple))},
    }


def test_every_checkpoint_is_a_preset_with_its_eval_transform(tmp_path, monkeypatch):
    import huggingface_hub.constants

    assert sorted(MaxViTImageClassifier.presets) == sorted(PRESETS)
    assert sorted(MaxViTBackbone.presets) == sorted(PRESETS)
    for tag in PRESETS:
        (hub_snapshot(tmp_path, tag) / "config.json").write_text(json.dumps(_hub_config(tag)))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    for tag, preset in PRESETS.items():
        assert MaxViTBackbone.presets[tag]["kaggle_handle"] == f"hf://timm/{tag}"
        converter = keras_hub.layers.ImageConverter.from_preset(tag)
        assert isinstance(converter, MaxViTImageConverter), tag
        side = preset["resolution"]
        assert converter.image_size == (side, side), tag
        assert converter.crop_pct == preset["crop_pct"], tag
        assert converter.crop_to_aspect_ratio == (preset["crop_mode"] == "center"), tag
        assert converter.interpolation == preset["interpolation"], tag
        std, mean = np.array(preset["std"]), np.array(preset["mean"])
        np.testing.assert_allclose(converter.scale, 1 / (255 * std), err_msg=tag)
        np.testing.assert_allclose(converter.offset, -mean / std, err_msg=tag)


@pytest.mark.parametrize("tag,size", [(TAG, (300, 260)), ("maxvit_tiny_tf_384.in1k", (420, 400))])
def test_converter_matches_timm_eval_transform(tag, size, tmp_path, monkeypatch):
    import huggingface_hub.constants
    import timm.data
    from PIL import Image

    config = _hub_config(tag)
    (hub_snapshot(tmp_path, tag) / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    converter = MaxViTImageConverter.from_preset(tag)
    # A smooth image (a 3x3 colour field, upsampled), on which resize kernels agree.
    coarse = np.random.default_rng(7).uniform(0, 255, (3, 3, 3)).astype("uint8")
    pixels = np.asarray(Image.fromarray(coarse).resize(size[::-1], Image.BICUBIC))
    cfg = config["pretrained_cfg"]
    transform = timm.data.create_transform(
        input_size=cfg["input_size"],
        interpolation=cfg["interpolation"],
        mean=cfg["mean"],
        std=cfg["std"],
        crop_pct=cfg["crop_pct"],
        crop_mode=cfg["crop_mode"],
    )
    expected = transform(Image.fromarray(pixels)).numpy().transpose(1, 2, 0)
    ours = to_numpy(converter(pixels[None].astype("float32")))[0]
    assert ours.shape == expected.shape
    # timm resizes, then crops; the converter crops (to whole pixels), then resizes:
    # the crops agree within a pixel. Without the crop (crop_pct=1) the mean error
    # of the 224 case is 0.04, with it 0.017 (0.002 at 384, which has no crop).
    error = np.abs(ours - expected)
    assert error.mean() < 0.025 and error.max() < 0.12, (error.mean(), error.max())


NEXT_BACKEND = {"tensorflow": "jax", "jax": "torch", "torch": "tensorflow"}

LOAD_SCRIPT = """
import json, sys
import keras, keras_hub, numpy as np
import keras_maxvit.hub
images, pixels = np.load(sys.argv[2]), np.load(sys.argv[3])
classifier = keras_hub.models.ImageClassifier.from_preset(sys.argv[1])
backbone = keras_hub.models.Backbone.from_preset(sys.argv[1])
converted = keras.ops.convert_to_numpy(classifier.preprocessor(pixels))
classifier.preprocessor = None  # normalized images in
if keras.backend.backend() == "jax":  # one compiled call: faster than op-by-op dispatch
    run = lambda model, x: model.predict(x, verbose=0)
else:
    run = lambda model, x: keras.ops.convert_to_numpy(model(x))
print(json.dumps({
    "classes": [type(classifier).__name__, type(backbone).__name__],
    "logits": run(classifier, images).tolist(),
    "features": run(backbone, images).tolist(),
    "converted": converted.tolist(),
}))
"""


def test_preset_round_trip_under_another_backend(classifier, tmp_path):
    """Saved here, loaded by `keras_hub.models.*.from_preset` under the next backend."""
    preset = str(tmp_path / "preset")
    classifier.save_to_preset(preset)
    assert {"config.json", "task.json", "model.weights.h5", "image_converter.json"} <= set(
        os.listdir(preset)
    )
    images = normal_images(seed=8)
    pixels = np.random.default_rng(9).uniform(0, 255, (2, 70, 90, 3)).astype("float32")
    inputs = {"images": images, "pixels": pixels}
    for name, array in inputs.items():
        np.save(tmp_path / f"{name}.npy", array)
    backend = NEXT_BACKEND[keras.backend.backend()]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            LOAD_SCRIPT,
            preset,
            tmp_path / "images.npy",
            tmp_path / "pixels.npy",
        ],
        env=dict(os.environ, KERAS_BACKEND=backend),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["classes"] == ["MaxViTImageClassifier", "MaxViTBackbone"]
    np.testing.assert_allclose(out["logits"], to_numpy(classifier(images)), rtol=1e-5, atol=1e-5)
    features = to_numpy(classifier.backbone(images))
    np.testing.assert_allclose(out["features"], features, rtol=1e-5, atol=1e-5)
    # Bicubic resizing is each backend's own: equal to float32 rounding, not bit for bit.
    converted = to_numpy(classifier.preprocessor(pixels))
    np.testing.assert_allclose(out["converted"], converted, atol=2e-3)


# === Configs, names and errors ===


def test_get_config_lists_exactly_the_constructor_arguments():
    import inspect

    backbone = MaxViTBackbone(
        **TINY, window_size=(2, 1), drop_path_rate=0.1, image_shape=(64, 32, 3)
    )
    config = backbone.get_config()
    arguments = set(inspect.signature(MaxViTBackbone).parameters) - {"kwargs"}
    assert set(config) == arguments | {"name", "trainable"}
    assert config["window_size"] == (2, 1) and config["image_shape"] == [64, 32, 3]
    classifier = MaxViTImageClassifier(backbone, num_classes=4, head_hidden_size=None)
    arguments = set(inspect.signature(MaxViTImageClassifier).parameters) - {"kwargs"}
    assert set(classifier.get_config()) == arguments | {"name"}
    assert classifier.pre_logits is None
    converter = MaxViTImageConverter(crop_pct=0.875)
    assert MaxViTImageConverter.from_config(converter.get_config()).crop_pct == 0.875


def test_core_keras_files_still_load_as_core_classes(tmp_path):
    """The hub classes register apart (`keras_maxvit.hub>...`): `.keras` files of today load."""
    core = keras_maxvit.MaxViTBackbone(
        dict(TINY), input_shape=(SIZE, SIZE, 3), include_preprocessing=False
    )
    path = str(tmp_path / "core.keras")
    core.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert type(reloaded) is keras_maxvit.MaxViTBackbone
    assert keras.saving.get_registered_name(MaxViTBackbone) == "keras_maxvit.hub>MaxViTBackbone"
    assert keras.saving.get_registered_name(keras_maxvit.MaxViTBackbone) == (
        "keras_maxvit>MaxViTBackbone"
    )
    images = normal_images(seed=10)
    np.testing.assert_allclose(to_numpy(reloaded(images)), to_numpy(core(images)), atol=1e-6)
    # A hub backbone's file records no normalization (its image converter holds it),
    # while a core backbone's is read as its own.
    from keras_maxvit.normalization import checkpoint_preprocessing

    hub_path = str(tmp_path / "hub.keras")
    MaxViTBackbone(**TINY, image_shape=(SIZE, SIZE, 3)).save(hub_path)
    assert "mean" not in (checkpoint_preprocessing(hub_path) or {})
    with_norm = keras_maxvit.MaxViTBackbone(dict(TINY), input_shape=(SIZE, SIZE, 3))
    with_norm.save(str(tmp_path / "with_norm.keras"))
    assert "mean" in checkpoint_preprocessing(str(tmp_path / "with_norm.keras"))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: MaxViTBackbone(**TINY, image_shape=(16, 16, 3)), r"Received: image_shape=\(16"),
        (lambda: MaxViTBackbone(**TINY, image_shape=(64, 64)), r"Received: image_shape=\(64, 64\)"),
        (lambda: MaxViTBackbone(**{**TINY, "head_size": 5}), "Received: stage_filters"),
        (lambda: MaxViTBackbone(**TINY, drop_path_rate=1.5), "Received: drop_path_rate=1.5"),
        (lambda: MaxViTBackbone(**TINY, window_size=0), "Received: window_size=0"),
        (lambda: MaxViTImageConverter(crop_pct=0), "Received: crop_pct=0"),
        (
            lambda: MaxViTImageClassifier(MaxViTBackbone(**TINY), num_classes=0),
            "Received: num_classes=0",
        ),
        (
            lambda: MaxViTImageClassifier(MaxViTBackbone(**TINY), num_classes=2, pooling="sum"),
            "Received: pooling='sum'",
        ),
        (
            lambda: MaxViTImageClassifier(MaxViTBackbone(**TINY), 2, head_hidden_size=-1),
            "Received: head_hidden_size=-1",
        ),
        (lambda: MaxViTBackbone.from_preset("maxvit_tiny_tf_999.in1k"), "Received: preset="),
    ],
)
def test_bad_arguments_name_what_was_received(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_channels_first_is_refused():
    keras.config.set_image_data_format("channels_first")
    try:
        with pytest.raises(ValueError, match="Received: image_data_format='channels_first'"):
            MaxViTBackbone(**TINY)
    finally:
        keras.config.set_image_data_format("channels_last")


def test_unknown_timm_model_args_are_refused(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants

    tag = "maxvit_small_tf_224.in1k"
    config = {**_hub_config(tag), "model_args": {"block_type": ["C", "C", "T", "T"]}}
    (hub_snapshot(tmp_path, tag) / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match=r"does not build: \['block_type'\]"):
        MaxViTBackbone.from_preset(tag, load_weights=False)


# === keras-hub's segmenter and detector on the pretrained MaxViT ===


def scenes(count=4, seed=0):
    """Dark images with one bright square (class 0) or disc (class 1) of side 16.

    Returns normalized images `(count, 64, 64, 3)`, masks `(count, 64, 64, 1)`
    (0 background, 1 square, 2 disc) and `yxyx` boxes with labels (one box, then
    padding). The boxes sit on the 16-pixel anchors of level P3 (stride 8).
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:SIZE, 0:SIZE]
    images = rng.uniform(0, 60, (count, SIZE, SIZE, 3)).astype("float32")
    masks = np.zeros((count, SIZE, SIZE, 1), "int32")
    boxes = np.full((count, 2, 4), -1.0, "float32")
    labels = np.full((count, 2), -1.0, "float32")
    for i in range(count):
        label = i % 2
        top, left = 8 * rng.integers(1, 6, 2)
        inside = (rows >= top) & (rows < top + 16) & (cols >= left) & (cols < left + 16)
        if label == 1:
            inside &= (rows - top - 7.5) ** 2 + (cols - left - 7.5) ** 2 <= 64
        images[i][inside] = rng.uniform(170, 255, 3)
        masks[i, ..., 0][inside] = label + 1
        boxes[i, 0], labels[i, 0] = (top, left, top + 16, left + 16), label
    return (images / 255 - 0.45) / 0.225, masks, boxes, labels


def pretrained_backbone(hub):
    """`MaxViTBackbone.from_preset(TAG)`, its pyramid checked against timm's."""
    backbone = MaxViTBackbone.from_preset(TAG)
    images = normal_images(seed=11)
    maps = keras.Model(backbone.inputs, backbone.pyramid_outputs)(images)
    expected = timm_pyramid(hub.reference, images)
    for level in LEVELS:
        assert_close_to_reference(to_numpy(maps[level]), expected[level])
    backbone.trainable = TRAIN_TRUNK
    return backbone


def assert_reloads(task, images, tmp_path):
    """`.keras` round trip (safe mode): same class, same outputs."""
    path = str(tmp_path / "task.keras")
    task.save(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    assert type(reloaded) is type(task)
    assert isinstance(reloaded.backbone.image_encoder, MaxViTBackbone)
    for ours, theirs in zip(
        keras.tree.flatten(task(images)), keras.tree.flatten(reloaded(images)), strict=True
    ):
        np.testing.assert_allclose(to_numpy(ours), to_numpy(theirs), rtol=1e-5, atol=1e-5)


def test_deeplab_v3_segmenter_on_maxvit(hub, tmp_path):
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=pretrained_backbone(hub),
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P4",
        upsampling_size=4,
        dilation_rates=[1, 2],
        projection_filters=8,
        image_shape=(SIZE, SIZE, 3),
    )
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=deeplab, num_classes=3)
    segmenter.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    images, masks, _, _ = scenes()
    history = segmenter.fit(images, masks, batch_size=4, epochs=8, verbose=0).history["loss"]
    assert history[-1] < 0.7 * history[0], history
    assert_reloads(segmenter, images[:2], tmp_path)


def test_retinanet_object_detector_on_maxvit(hub, tmp_path):
    retinanet = keras_hub.models.RetinaNetBackbone(
        image_encoder=pretrained_backbone(hub),
        min_level=3,
        max_level=4,
        use_p5=False,
        use_fpn_batch_norm=True,
        image_shape=(SIZE, SIZE, 3),
    )
    anchors = keras_hub.layers.AnchorGenerator(
        "yxyx", min_level=3, max_level=4, num_scales=1, aspect_ratios=[1.0], anchor_size=2
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=retinanet,
        num_classes=2,
        anchor_generator=anchors,
        bounding_box_format="yxyx",
        pre_logits_num_conv_layers=1,
    )
    # As RetinaNet initializes the heads' last biases (keras-hub 0.32 swaps them; see
    # `initialize_head_biases` in examples/hub_detection.py).
    box_bias = detector.box_head.prediction_layer.bias
    box_bias.assign(np.zeros(box_bias.shape, "float32"))
    class_bias = detector.classification_head.prediction_layer.bias
    class_bias.assign(np.full(class_bias.shape, -np.log(99.0), "float32"))
    detector.compile(optimizer=keras.optimizers.Adam(1e-4))
    images, _, boxes, labels = scenes(seed=1)
    # Each box has its anchor (IoU 1): the loss has positives to learn from.
    _, encoded = detector.label_encoder(images=images, gt_boxes=boxes, gt_classes=labels)
    assert (to_numpy(encoded) >= 0).sum(axis=1).tolist() == [1, 1, 1, 1]
    targets = {"boxes": boxes, "labels": labels}
    history = detector.fit(images, targets, batch_size=4, epochs=8, verbose=0).history["loss"]
    assert history[-1] < 0.5 * history[0], history
    detections = detector.predict(images, batch_size=4, verbose=0)
    assert detections["boxes"].shape == (4, 100, 4) and detections["labels"].shape == (4, 100)
    assert_reloads(detector, images[:2], tmp_path)

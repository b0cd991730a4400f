"""examples/hub_segmentation.py and examples/hub_detection.py: data, metric, short runs.

The data and the mAP are checked in the default suite (NumPy, milliseconds);
the training runs, shortened, are `slow` (`nox -s slow`): from random weights,
and with `--weights <tag>` through an offline Hub cache of a tiny timm MaxViT.
"""

import importlib.util
import pathlib

import numpy as np
import pytest
from conftest import default_backend_only, perturb_timm_model

pytest.importorskip("keras_hub")

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def detection():
    return _load("hub_detection")


@pytest.fixture(scope="module")
def segmentation():
    return _load("hub_segmentation")


def test_detection_scenes_are_deterministic_with_tight_separate_boxes(detection):
    images, boxes, labels = detection.make_dataset(30, size=64, seed=3)
    assert images.shape == (30, 64, 64, 3) and images.dtype == np.uint8
    again = detection.make_dataset(30, size=64, seed=3)
    np.testing.assert_array_equal(images, again[0])
    np.testing.assert_array_equal(boxes, again[1])
    counts = (labels >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 3 and set(np.unique(labels)) == {-1, 0, 1, 2}
    assert np.all(boxes[labels < 0] == -1)  # keras-hub's padding
    brightness = images.astype("float32").mean(-1)
    for image, scene_boxes, scene_labels in zip(brightness, boxes, labels, strict=True):
        real = scene_boxes[scene_labels >= 0]
        outside = np.ones(image.shape, bool)
        for top, left, bottom, right in real.astype(int):
            assert 0 <= top < bottom <= 64 and 0 <= left < right <= 64
            outside[top:bottom, left:right] = False
        for i, (top, left, bottom, right) in enumerate(real.astype(int)):
            # Each box holds a bright shape (>= 130 before noise; backgrounds < 150),
            # at least half of it (a triangle).
            shape = np.percentile(image[top:bottom, left:right], 75)
            assert shape > image[outside].mean() + 40
            assert 8 <= bottom - top <= 32 and 8 <= right - left <= 32  # radii 0.12-0.22 x 64
            for other in real[i + 1 :]:  # apart: boxes do not overlap
                assert detection.iou(real[i], other[None])[0] == 0


def test_average_precision_against_a_hand_computed_case(detection):
    truths = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], "float32"), np.array([0, 0]))]
    boxes = np.array([[0, 0, 10, 10], [40, 40, 50, 50], [21, 21, 30, 30], [0, 0, 10, 9]], "float32")
    # Ranked: TP, FP, TP (IoU 0.81), then a duplicate of the first box (FP).
    detections = [(boxes, np.array([0, 0, 0, 0]), np.array([0.9, 0.8, 0.7, 0.6], "float32"))]
    # Precision 1, 1/2, 2/3, 2/4 at recall 1/2, 1/2, 1, 1; the envelope gives
    # AP = 1/2 * 1 + 1/2 * 2/3.
    assert detection.average_precision(detections, truths, 0) == pytest.approx(5 / 6)
    # Class 1 has no true box: left out of the mean; class 2's detections all miss.
    detections.append((np.array([[0, 0, 5, 5]], "float32"), np.array([2]), np.array([0.5])))
    truths.append((np.array([[30, 30, 40, 40]], "float32"), np.array([2])))
    assert np.isnan(detection.average_precision(detections, truths, 1))
    assert detection.mean_average_precision(detections, truths, 3) == pytest.approx(5 / 12)


def _check_run(result, out, key, baseline_key, margin):
    with open(result["figure"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"Figure: {result['figure']}" in out and "Wall time:" in out
    assert result[key] > result[baseline_key] + margin, result


@pytest.mark.slow
@default_backend_only
def test_short_segmentation_run_beats_the_all_background_baseline(segmentation, tmp_path, capsys):
    argv = ["--train-images", "320", "--val-images", "48", "--epochs", "3", "--examples", "2"]
    result = segmentation.main(argv + ["--output-dir", str(tmp_path)])
    _check_run(result, capsys.readouterr().out, "mean_iou", "baseline_iou", 0.2)


@pytest.mark.slow
@default_backend_only
def test_short_detection_run_beats_the_prior_box_baseline(detection, tmp_path, capsys):
    argv = ["--train-images", "480", "--val-images", "48", "--epochs", "6", "--examples", "3"]
    result = detection.main(argv + ["--output-dir", str(tmp_path)])
    _check_run(result, capsys.readouterr().out, "map50", "baseline_map50", 0.2)


@pytest.mark.slow
@default_backend_only
def test_examples_take_a_pretrained_preset(segmentation, detection, tmp_path, monkeypatch, capsys):
    """`--weights <tag>` through an offline Hub cache holding a tiny 4-stage timm MaxViT."""
    import huggingface_hub.constants
    import timm
    from test_hub import TIMM_TINY, hub_snapshot
    from timm.models._hub import save_for_hf

    tag = "maxvit_tiny_tf_224.in1k"
    reference = timm.create_model(
        "maxvit_tiny_tf_224",
        img_size=64,
        num_classes=5,
        **{**TIMM_TINY, "embed_dim": (8, 16, 16, 16), "depths": (1, 1, 1, 1)},
    )
    perturb_timm_model(reference)
    save_for_hf(reference, str(hub_snapshot(tmp_path, tag)), safe_serialization=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    short = ["--weights", tag, "--train-images", "32", "--val-images", "16", "--epochs", "1"]
    for example in (segmentation, detection):
        result = example.main(short + ["--examples", "1", "--output-dir", str(tmp_path / "run")])
        assert f"on MaxViT ({tag})" in capsys.readouterr().out
        assert result["wall_time"] > 0

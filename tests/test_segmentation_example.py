"""examples/segmentation.py: its data, its IoU and a short real training run."""

import importlib.util
import os
import pathlib

import numpy as np
import pytest
from conftest import default_backend_only

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def segmentation():
    spec = importlib.util.spec_from_file_location("segmentation", EXAMPLES / "segmentation.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dataset_is_deterministic_and_masks_match_the_drawing(segmentation):
    images, masks = segmentation.make_dataset(40, size=64, seed=5)
    assert images.shape == (40, 64, 64, 3) and images.dtype == np.uint8
    assert masks.shape == (40, 64, 64) and set(np.unique(masks)) == {0, 1, 2, 3}
    again_images, again_masks = segmentation.make_dataset(40, size=64, seed=5)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(masks, again_masks)
    assert not np.array_equal(masks, segmentation.make_dataset(40, size=64, seed=6)[1])
    # Shapes are bright (>= 130 before noise), backgrounds dark (< 150 with gradient).
    brightness = images.astype("float32").mean(-1)
    assert brightness[masks > 0].mean() > brightness[masks == 0].mean() + 80


def test_mean_iou_against_a_hand_computed_case(segmentation):
    truth = np.array([[0, 0, 1, 1], [0, 0, 2, 2]])
    predicted = np.array([[0, 1, 1, 1], [0, 0, 2, 0]])
    # background: 3 / 5, class 1: 2 / 3, class 2: 1 / 2; class 3 absent from both.
    expected = np.mean([3 / 5, 2 / 3, 1 / 2])
    assert segmentation.mean_iou(truth, predicted, 4) == pytest.approx(expected)
    assert segmentation.mean_iou(truth, truth, 4) == 1.0
    # All background: background IoU 4 / 8, the others 0.
    baseline = segmentation.mean_iou(truth, np.zeros_like(truth), 4)
    assert baseline == pytest.approx((4 / 8 + 0 + 0) / 3)


@pytest.mark.slow  # minutes on 2 cores, like the keras-hub examples' runs
@default_backend_only
def test_short_training_run_beats_the_all_background_baseline(segmentation, tmp_path, capsys):
    """A shortened run of the example (seconds of training): real, and able to fail."""
    output_dir = tmp_path / "run"
    argv = ["--train-images", "480", "--val-images", "64", "--epochs", "4"]
    argv += ["--batch-size", "8", "--examples", "2", "--output-dir", str(output_dir)]
    result = segmentation.main(argv)
    out = capsys.readouterr().out
    assert os.path.isfile(result["figure"]) and result["figure"].startswith(str(output_dir))
    with open(result["figure"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert f"Figure: {result['figure']}" in out
    assert f"Mean IoU on 64 held-out images: {result['mean_iou']:.4f}" in out
    assert "Wall time:" in out
    # The all-background baseline is ~0.22 here (background ~86% of the pixels).
    assert 0.15 < result["baseline_iou"] < 0.3, result
    assert result["mean_iou"] > result["baseline_iou"] + 0.15, result
    # Shapes are found: background is better than "everything is background".
    assert result["iou_per_class"]["background"] > 0.9, result


@pytest.mark.parametrize("size", ["100", "16"])
def test_image_size_not_a_multiple_of_32_is_refused(segmentation, size, capsys):
    with pytest.raises(SystemExit) as error:
        segmentation.parse_args(["--image-size", size])
    assert error.value.code == 2
    assert f"--image-size must be a multiple of 32. Received: {size}" in capsys.readouterr().err

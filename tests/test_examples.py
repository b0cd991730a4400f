"""The quick start example runs and reports what it promises."""

import importlib.util
import pathlib

import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_classifies_the_generated_image(capsys):
    quickstart = _load("quickstart")
    quickstart.main(["--no-summary"])
    out = capsys.readouterr().out
    assert "Parameters: 30,964,144" in out
    lines = out[out.index("Top-5 ImageNet classes:") :].splitlines()[1:6]
    scores = [float(line.rsplit(":", 1)[1]) for line in lines]
    assert len(scores) == 5 and np.all(np.diff(scores) <= 0) and 0 < sum(scores) <= 1


def test_generated_image_is_deterministic():
    quickstart = _load("quickstart")
    image = quickstart.load_image(None, 64)
    assert image.shape == (64, 64, 3) and image.min() >= 0 and image.max() <= 255
    np.testing.assert_array_equal(image, quickstart.load_image(None, 64))

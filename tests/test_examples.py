"""The quick start example runs and reports what it promises."""

import importlib.util
import os
import pathlib
import shlex

import numpy as np
from conftest import default_backend_only

from keras_maxvit import training

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@default_backend_only
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


@default_backend_only
def test_readme_quick_start_fit_reaches_90_percent(tmp_path, monkeypatch):
    """The exact `keras-maxvit fit` arguments of the README quick start."""
    readme = (EXAMPLES.parent / "README.md").read_text()
    command = next(line for line in readme.splitlines() if "keras-maxvit fit --model nano" in line)
    argv = shlex.split(command.split("keras-maxvit fit", 1)[1])
    argv[argv.index("--output-dir") + 1] = str(tmp_path / "run")
    monkeypatch.setenv("KERAS_MAXVIT_QUIET", "1")
    result = training.main(argv + ["--tfds-dir", str(tmp_path / "tfds")])
    assert result["val_accuracy"] >= 0.9
    assert os.path.isfile(result["best"]) and os.path.isfile(result["plot"])

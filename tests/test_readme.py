"""The README's Python examples run as written."""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import default_backend_only
from test_pretrained import _fake_hub_cache

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert len(blocks) == 7, (
        "README.md: usage, pretrained, backbone, export, distributed (tests/test_distributed.py), "
        "explain and keras-hub examples"
    )
    return blocks


@default_backend_only
def test_readme_usage_example_runs(capsys):
    exec(compile(_python_blocks()[0], str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "(1, 1000)" in printed and "(None, 512)" in printed


@default_backend_only
def test_readme_pretrained_example_runs_from_a_local_hub_cache(tmp_path):
    """The checkpoints it names come from a Hub cache of random timm models."""
    import timm

    from keras_maxvit.imagenet import imagenet_classes

    hub = tmp_path / "hub"
    for tag in ("maxvit_tiny_tf_224.in1k", "maxvit_small_tf_384.in1k"):
        _fake_hub_cache(hub, tag, timm.create_model(tag.split(".")[0]))
    env = dict(
        os.environ,
        HF_HUB_CACHE=str(hub),
        HF_HUB_OFFLINE="1",
        KERAS_HOME=str(tmp_path / "keras_home"),
    )
    result = subprocess.run(
        [sys.executable, "-c", _python_blocks()[1]],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    names = {name for _, name in imagenet_classes()}
    decoded = re.findall(r"\('(n\d{8})', '([^']+)', ([0-9.e-]+)\)", result.stdout)
    assert len(decoded) == 3 and all(name in names for _, name, _ in decoded)
    assert np.all(np.diff([float(score) for *_, score in decoded]) <= 0)


def test_readme_backbone_example_runs(capsys):
    exec(compile(_python_blocks()[2], str(README), "exec"), {})
    printed = capsys.readouterr().out
    assert "'P5': (7, 7)}" in printed and "'P4': (13, 19), 'P5': (7, 10)}" in printed


def _small_tiny(**kwargs):
    """`MaxViTTiny` at a fraction of its depth and width: the same layers and graph structure."""
    from conftest import SMALL_CONFIG

    import keras_maxvit

    return keras_maxvit.MaxViT(**SMALL_CONFIG, **kwargs)


@default_backend_only  # test_export.py exports on every backend
@pytest.mark.parametrize(
    "full_size",
    [False, pytest.param(True, marks=pytest.mark.slow)],
    ids=["small", "tiny"],
)
def test_readme_export_example_runs(full_size, capsys, tmp_path, monkeypatch):
    """The export example as written; by default with a small MaxViT in place of
    MaxViT-T (exporting and converting the full model takes minutes: `nox -s slow`)."""
    import keras_maxvit

    if not full_size:
        monkeypatch.setattr(keras_maxvit, "MaxViTTiny", _small_tiny)
    monkeypatch.chdir(tmp_path)
    exec(compile(_python_blocks()[3], str(README), "exec"), {})
    assert capsys.readouterr().out.strip().endswith("True")


@pytest.mark.slow
@default_backend_only
def test_readme_keras_hub_example_runs_from_a_local_hub_cache(tmp_path):
    """The keras-hub example, offline: its checkpoints come from a Hub cache of
    (perturbed, random) timm models written by timm's own `save_for_hf`.

    In `nox -s slow`: it converts two full-size MaxViT-T checkpoints (about 2.5
    minutes); test_hub.py checks the same presets and tasks on small models."""
    pytest.importorskip("keras_hub")
    import timm
    from conftest import perturb_timm_model
    from test_hub import hub_snapshot
    from timm.models._hub import save_for_hf

    hub = tmp_path / "hub"
    for tag in ("maxvit_tiny_tf_224.in1k", "maxvit_tiny_tf_384.in1k"):
        model = timm.create_model(tag.split(".")[0])
        perturb_timm_model(model)
        save_for_hf(model, str(hub_snapshot(hub, tag)), safe_serialization=True)
    (tmp_path / "work").mkdir()
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1")
    result = subprocess.run(
        [sys.executable, "-c", _python_blocks()[6]],
        env=env,
        cwd=tmp_path / "work",
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "21" in lines and "(2, 1000)" in lines, result.stdout[-2000:]
    assert lines[-1] == "MaxViTImageClassifier MaxViTBackbone"
    assert (tmp_path / "work" / "maxvit_tiny_5_classes").is_dir()

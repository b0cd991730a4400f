"""`keras_maxvit.model_parallel`: the layout map and `ModelParallel` training (JAX).

The training check runs once, in the JAX session, in a JAX subprocess
with 4 host devices (`XLA_FLAGS` must be set before JAX is imported): a small
MaxViT trained 3 steps on a 2x2 `("batch", "model")` mesh must give the
losses and final weights of the same model trained on one device, with each
sharded kernel (and its optimizer slot) holding half its bytes per device.
"""

import importlib.util
import json
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import host_devices_env

import keras_maxvit
from keras_maxvit.model_parallel import get_layout_map

TIMEOUT = 240
# Every kind of variable: stride-2 blocks with a shortcut 1x1 conv and a
# stride-1 block, block and grid attention, the pre-logits head.
CONFIG = {"stem_filters": 16, "stage_filters": (32, 64), "depths": (1, 2), "head_hidden_size": 64}
# Trained at 64x64 (window 2): one stage, the same kinds of variable, a third
# of the compile time.
TRAIN_CONFIG = {"stem_filters": 16, "stage_filters": (32,), "depths": (1,), "head_hidden_size": 64}
CLASSES = 4
# Written independently of the module's rules: the variable path suffixes that
# must be sharded over "model", and the axis each is split on.
EXPECTED = {
    "_mbconv/conv1_1x1/kernel": 3,
    "_mbconv/se_fc1/kernel": 2,
    "_mbconv/se_fc2/kernel": 3,
    "_mbconv/se_fc2/bias": 0,
    "_mbconv/conv3_1x1/kernel": 2,
    "_attn/attn/qkv/kernel": 1,
    "_attn/attn/qkv/bias": 0,
    "_attn/attn/proj/kernel": 0,
    "_attn/mlp_fc1/kernel": 1,
    "_attn/mlp_fc1/bias": 0,
    "_attn/mlp_fc2/kernel": 0,
    "/head_pre_logits/kernel": 1,
    "/head_pre_logits/bias": 0,
    "/predictions/kernel": 0,
}


def expected_axis(path):
    """The axis `path` must be split on, or None (replicated)."""
    hits = [axis for suffix, axis in EXPECTED.items() if ("/" + path).endswith(suffix)]
    assert len(hits) <= 1, path
    return hits[0] if hits else None


def host_mesh(shape=(2, 2), names=("batch", "model")):
    """A mesh of named CPU devices: enough for a LayoutMap on any backend."""
    count = int(np.prod(shape))
    return keras.distribution.DeviceMesh(shape, names, devices=[f"cpu:{i}" for i in range(count)])


def small_maxvit():
    return keras_maxvit.MaxViT(
        **CONFIG, input_shape=(64, 64, 3), classes=CLASSES, include_preprocessing=False
    )


def small_hub_classifier():
    pytest.importorskip("keras_hub")
    from keras_maxvit.hub.maxvit_backbone import MaxViTBackbone
    from keras_maxvit.hub.maxvit_image_classifier import MaxViTImageClassifier

    backbone_config = {k: v for k, v in CONFIG.items() if k != "head_hidden_size"}
    backbone = MaxViTBackbone(**backbone_config, image_shape=(64, 64, 3))
    return MaxViTImageClassifier(
        backbone=backbone, num_classes=CLASSES, head_hidden_size=CONFIG["head_hidden_size"]
    )


@pytest.mark.parametrize("build", [small_maxvit, small_hub_classifier], ids=["maxvit", "hub"])
def test_every_large_kernel_matches_exactly_one_rule(build):
    model = build()
    layout_map = get_layout_map(host_mesh())
    used = set()
    for variable in model.variables:
        matches = [key for key in layout_map if re.fullmatch(key, variable.path)]
        axis = expected_axis(variable.path)
        if axis is None:
            assert matches == [], variable.path
            assert layout_map[variable.path] is None
            continue
        assert len(matches) == 1, (variable.path, matches)
        used.update(matches)
        axes = [None] * len(variable.shape)
        axes[axis] = "model"
        assert tuple(layout_map[variable.path].axes) == tuple(axes), variable.path
        assert variable.shape[axis] % 2 == 0
    # Every rule is used and every expected kind of variable is in the model.
    assert used == set(layout_map)
    paths = ["/" + v.path for v in model.variables]
    for suffix in EXPECTED:
        assert any(path.endswith(suffix) for path in paths), suffix


def test_bad_arguments():
    with pytest.raises(TypeError, match=r"`device_mesh` must be .*Received: device_mesh='mesh'"):
        get_layout_map("mesh")
    with pytest.raises(ValueError, match=r"Received: model_axis='tensor'"):
        get_layout_map(host_mesh(), model_axis="tensor")
    with pytest.raises(ValueError, match=r"Received: batch_axis='batch'"):
        get_layout_map(host_mesh(names=("data", "model")))
    with pytest.raises(ValueError, match=r"Received: batch_axis=\('batch',\)"):
        get_layout_map(host_mesh(), batch_axis=("batch",))
    with pytest.raises(ValueError, match=r"must be different.*model_axis='model'"):
        get_layout_map(host_mesh(), batch_axis="model")


SCRIPT = r"""
import json, sys
import keras, numpy as np
import keras_maxvit
from keras_maxvit.model_parallel import model_parallel

config, classes, out = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
assert len(keras.distribution.list_devices()) == 4, keras.distribution.list_devices()
rng = np.random.default_rng(0)
images = rng.normal(size=(8, 64, 64, 3)).astype("float32")
labels = rng.integers(0, classes, size=(8,))

def build():
    return keras_maxvit.MaxViT(
        **config, input_shape=(64, 64, 3), classes=classes, include_preprocessing=False,
        classifier_activation=None, drop_path_rate=0.0)

def train(model, weights):
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # One batch per epoch: each epoch's loss is one step's.
    history = model.fit(images, labels, batch_size=8, epochs=3, shuffle=False, verbose=0)
    return history.history["loss"]

def layout(variable):
    value = variable.value
    return {"shape": list(value.shape), "nbytes": int(value.nbytes),
            "spec": [None if a is None else str(a) for a in value.sharding.spec],
            "shards": sorted(int(s.data.nbytes) for s in value.addressable_shards)}

reference = build()
weights = reference.get_weights()
result = {"single": train(reference, weights)}
np.savez(out + "/single.npz", *[keras.ops.convert_to_numpy(v) for v in reference.variables])

mesh = keras.distribution.DeviceMesh((2, 2), ("batch", "model"), keras.distribution.list_devices())
keras.distribution.set_distribution(model_parallel(mesh))
model = build()
result["sharded"] = train(model, weights)
np.savez(out + "/sharded.npz", *[keras.ops.convert_to_numpy(v) for v in model.variables])
result["variables"] = {v.path: layout(v) for v in model.variables}
result["slots"] = {v.path: layout(v) for v in model.optimizer.variables if len(v.shape)}
result["paths"] = [v.path for v in reference.variables]
with open(out + "/result.json", "w") as f:
    json.dump(result, f)
"""


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    if importlib.util.find_spec("jax") is None:
        pytest.skip("JAX is not installed")
    if keras.backend.backend() != "jax":
        pytest.skip("JAX's ModelParallel: checked once, in the JAX session")
    out = tmp_path_factory.mktemp("model_parallel")
    script = out / "train.py"
    script.write_text(SCRIPT)
    env = host_devices_env(4, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    command = [sys.executable, str(script), json.dumps(TRAIN_CONFIG), str(CLASSES), str(out)]
    # subprocess.run kills the child if it outlives the timeout.
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    with open(out / "result.json") as f:
        result = json.load(f)
    single, sharded = np.load(out / "single.npz"), np.load(out / "sharded.npz")
    result["weights"] = [(single[k], sharded[k]) for k in single.files]
    return result


def test_model_parallel_equals_one_device(jax_run):
    single, sharded = np.array(jax_run["single"]), np.array(jax_run["sharded"])
    assert single.shape == (3,) and np.all(np.isfinite(single))
    assert not np.allclose(single[0], single[1:], rtol=1e-3)  # the steps change the model
    np.testing.assert_allclose(sharded, single, rtol=1e-4)
    for path, (expected, actual) in zip(jax_run["paths"], jax_run["weights"], strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5, err_msg=path)


def test_sharded_kernels_take_half_the_bytes_per_device(jax_run):
    sharded_total = sharded_per_device = 0
    for path, info in jax_run["variables"].items():
        axis = expected_axis(path)
        assert len(info["shards"]) == 4, path  # one shard per device of the mesh
        if axis is None:
            assert info["spec"] == [None] * len(info["spec"]), path
            assert info["shards"] == [info["nbytes"]] * 4, path
            continue
        axes = [None] * len(info["shape"])
        axes[axis] = "model"
        assert info["spec"] == axes, path
        assert info["shards"] == [info["nbytes"] // 2] * 4, path
        assert info["shards"][0] * 2 == info["nbytes"], path
        sharded_total += info["nbytes"]
        sharded_per_device += info["shards"][0]
    assert sharded_per_device * 2 == sharded_total > 0
    # The SGD momenta (`sgd/<path with _>_momentum`) are laid out like their variables.
    slots = {path.split("/", 1)[1]: info for path, info in jax_run["slots"].items()}
    for path, info in jax_run["variables"].items():
        if "moving_" in path:  # not trainable: no slot
            continue
        slot = slots.pop(path.replace("/", "_") + "_momentum")
        assert slot["spec"] == info["spec"] and slot["shards"] == info["shards"], path
    assert slots == {}

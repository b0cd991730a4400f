"""Training workflows: the generated dataset, two-phase fit with resume,
mixed precision, XLA and data-parallel fit."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import SMALL_CONFIG, host_devices_env, to_numpy

import keras_maxvit
from keras_maxvit import training
from keras_maxvit.datasets import shapes
from keras_maxvit.layers import MBConv


def small_model(**kwargs):
    kwargs.setdefault("input_shape", (64, 64, 3))
    kwargs.setdefault("classes", 5)
    return keras_maxvit.MaxViT(**SMALL_CONFIG, **kwargs)


def batch(n=8, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(shapes.CLASSES)
    images = np.stack([shapes.draw(int(label), rng) for label in labels]).astype("float32")
    return images, labels


def test_shapes_dataset_is_deterministic_and_balanced(tmp_path):
    import tensorflow_datasets as tfds

    builder = tfds.builder("maxvit_shapes", data_dir=str(tmp_path))
    builder.download_and_prepare()
    assert builder.info.splits["train"].num_examples == 500
    assert builder.info.splits["validation"].num_examples == 150
    labels = [int(y) for _, y in builder.as_dataset(split="train", as_supervised=True)]
    assert np.bincount(labels).tolist() == [100] * 5
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    np.testing.assert_array_equal(shapes.draw(2, rng_a), shapes.draw(2, rng_b))


def test_phase_one_trains_only_the_head_and_decay_skips_norms():
    model = small_model()
    training.set_backbone_trainable(model, False)
    trainable = {v.path.split("/")[0] for v in model.trainable_weights}
    assert trainable == set(training.HEAD_LAYERS)
    frozen_bn = model.get_layer("stage0_block0_mbconv").norm1
    assert not frozen_bn.trainable  # frozen BatchNorm runs in inference mode
    training.set_backbone_trainable(model, True)
    args = training_args(["--data-dir", "unused"])
    training.compile_phase(model, 2, args, steps_per_epoch=10)
    optimizer = model.optimizer
    decayed = {v.path for v in model.trainable_weights if optimizer._use_weight_decay(v)}
    assert "stage0_block0_block_attn/attn/qkv/kernel" in decayed
    for path in decayed:
        assert not path.endswith(("bias", "gamma", "beta", "relative_position_bias_table"))


def test_nano_has_no_pretrained_weights():
    args = training_args(["--model", "nano", "--weights", "imagenet"])
    with pytest.raises(ValueError, match="--weights=imagenet"):
        training.build_model(args, 5)


def test_remat_option_reaches_every_block():
    args = training_args(["--model", "nano", "--weights", "none", "--image-size", "64", "--remat"])
    model = training.build_model(args, 5)
    blocks = [layer for layer in model.layers if hasattr(layer, "remat")]
    assert len(blocks) == 15 and all(layer.remat for layer in blocks)


def training_args(argv):
    parser = __import__("argparse").ArgumentParser()
    training.add_arguments(parser)
    return parser.parse_args(argv)


def fit_argv(images, out, head_epochs, epochs, *extra):
    """`keras-maxvit fit` of nano from scratch on an image folder at 32x32, batch 4."""
    return [
        "--data-dir",
        str(images),
        "--model",
        "nano",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--batch-size",
        "4",
        "--head-epochs",
        str(head_epochs),
        "--epochs",
        str(epochs),
        *extra,
        "--output-dir",
        str(out),
    ]


def _image_folder(root, per_class=5):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(shapes.CLASSES[:3]):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(shapes.draw(label, rng)).save(root / name / f"{i}.png")


@pytest.mark.skipif(
    keras.backend.backend() != "torch",
    reason="the fit command's phases and files do not depend on the backend: checked under "
    "PyTorch; the command's compiled training runs in test_resume.py (JAX), the quick start "
    "and test_distributed.py (TensorFlow)",
)
def test_fit_two_phases_writes_artifacts_and_keeps_the_best_epoch(tmp_path, monkeypatch):
    # The default compile() path; resuming is tested in test_resume.py.
    _image_folder(tmp_path / "images")
    out = tmp_path / "run"
    argv = fit_argv(tmp_path / "images", out, head_epochs=1, epochs=1)
    monkeypatch.setenv("KERAS_MAXVIT_QUIET", "1")
    result = training.main(argv)
    for name in ("best.keras", "last.keras", "log.csv", "curves.png", "state.json"):
        assert (out / name).is_file(), name
    rows = np.atleast_1d(np.genfromtxt(out / "log.csv", delimiter=",", names=True))
    assert rows["epoch"].tolist() == [0, 1]
    assert result["classes"] == list(shapes.CLASSES[:3])
    # best.keras is the epoch of the best validation accuracy, re-evaluated.
    np.testing.assert_allclose(result["val_accuracy"], rows["val_accuracy"].max(), atol=1e-6)
    assert json.loads((out / "state.json").read_text())["next_epoch"] == 2


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_fit_stays_finite(policy):
    # Half-precision numerics (outputs, gradients, BatchNorm statistics) are checked on every
    # backend in test_kernels.py; the fit of each policy (float16 with Keras' loss scaling,
    # backend-independent) on PyTorch, whose steps compile nothing.
    if keras.backend.backend() != "torch":
        pytest.skip("half-precision fit: on PyTorch (numerics on all backends: test_kernels)")
    keras.mixed_precision.set_global_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        model = small_model(drop_path_rate=0.1)
        assert model.get_layer("predictions").compute_dtype == "float32"
        model.compile(keras.optimizers.AdamW(1e-3), "sparse_categorical_crossentropy")
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        images, labels = batch(8)
        history = model.fit(images, labels, batch_size=4, epochs=3, verbose=0)
        assert np.all(np.isfinite(history.history["loss"]))
        for weight in model.weights:
            if "float" in weight.dtype:
                assert np.all(np.isfinite(to_numpy(weight))), weight.path
        assert history.history["loss"][-1] < history.history["loss"][0]
    finally:
        keras.mixed_precision.set_global_policy("float32")


PARALLEL_SCRIPT = """
import os, sys
import timm, torch  # before TensorFlow, as conftest does
import numpy as np
backend = os.environ["KERAS_BACKEND"]
if backend == "tensorflow":
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
sys.path.insert(0, sys.argv[1])
from test_training import batch, small_model

def run(distributed, synchronized, weights=None):
    keras.utils.set_random_seed(0)
    if distributed and backend == "tensorflow":
        scope = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope()
    else:
        import contextlib
        scope = contextlib.nullcontext()
        if distributed:
            keras.distribution.set_distribution(keras.distribution.DataParallel())
    with scope:
        model = small_model(synchronized_batch_norm=synchronized)
        if weights is not None:
            model.set_weights(weights)
        model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    initial = model.get_weights()
    images, labels = batch(8)
    # BatchNorm in training mode: each step normalizes with the statistics of
    # the global batch of 8 (also across the replicas) and updates the moving ones.
    history = model.fit(images, labels, batch_size=8, epochs=3, shuffle=False, verbose=0)
    values = {w.path: keras.ops.convert_to_numpy(w) for w in model.weights}
    return history.history["loss"], values, initial

single, single_weights, initial = run(False, False)
tensorflow = backend == "tensorflow"
parallel, parallel_weights, _ = run(True, tensorflow, initial)
devices = len(keras.distribution.list_devices()) if backend == "jax" else 2
np.savez(
    sys.argv[2],
    devices=devices,
    single_loss=single,
    parallel_loss=parallel,
    **{"single/" + k: v for k, v in single_weights.items()},
    **{"parallel/" + k: v for k, v in parallel_weights.items()},
)
"""


@pytest.mark.skipif(
    keras.backend.backend() == "torch",
    reason="PyTorch has no single-process data parallelism in Keras (keras.distribution "
    "is JAX only; MirroredStrategy is TensorFlow)",
)
def test_data_parallel_fit_matches_single_device(tmp_path):
    """Data-parallel fit with BatchNorm training (TensorFlow MirroredStrategy
    on 2 logical CPUs with `synchronized_batch_norm=True`; JAX DataParallel on
    4 host devices) against the single-device fit of the same global batches:
    losses, weights and BatchNorm moving statistics after 3 SGD steps agree
    to float32 rounding of the differently ordered sums (rtol 1e-4, atol 1e-5)."""
    env = host_devices_env(4)
    tests_dir = os.path.dirname(__file__)
    out_path = tmp_path / "fits.npz"
    result = subprocess.run(
        [sys.executable, "-c", PARALLEL_SCRIPT, tests_dir, str(out_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tests_dir,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = dict(np.load(out_path))
    assert out["devices"] == (4 if keras.backend.backend() == "jax" else 2)
    np.testing.assert_allclose(out["parallel_loss"], out["single_loss"], rtol=1e-4)
    paths = [key[len("single/") :] for key in out if key.startswith("single/")]
    moving = [path for path in paths if "moving_" in path]
    assert len(moving) == 2 * 16  # stem + 5 MBConvs x 3 norms, mean and variance
    # BatchNorm trained: its moving variance moved from the initial ones.
    assert np.abs(out["single/stem_norm1/moving_variance"] - 1.0).max() > 1e-3
    for path in paths:
        np.testing.assert_allclose(
            out[f"parallel/{path}"], out[f"single/{path}"], rtol=1e-4, atol=1e-5, err_msg=path
        )


def _norms(model):
    return [
        layer
        for layer in model._flatten_layers()
        if isinstance(layer, (keras.layers.BatchNormalization, MBConv))
    ]


def test_synchronized_batch_norm_argument_errors():
    with pytest.raises(TypeError, match="Received: synchronized_batch_norm=1"):
        small_model(synchronized_batch_norm=1)
    with pytest.raises(TypeError, match="Received: synchronized='yes'"):
        MBConv(32, synchronized="yes")
    if keras.backend.backend() == "tensorflow":
        return
    match = "synchronized_batch_norm=True with KERAS_BACKEND=" + keras.backend.backend()
    with pytest.raises(ValueError, match=match):
        keras_maxvit.MaxViTTiny(weights=None, synchronized_batch_norm=True)
    with pytest.raises(ValueError, match="needs the TensorFlow backend"):
        MBConv(32, strides=2, synchronized=True)
    # `fit --distribute` normalizes over the global batch without it (DataParallel).
    args = training_args(["--model", "nano", "--weights", "none", "--distribute"])
    assert not any(layer.synchronized for layer in _norms(training.build_model(args, 3)))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="Keras: TensorFlow only")
def test_synchronized_batch_norm_reaches_every_norm_and_skips_the_kernel(tmp_path, monkeypatch):
    from keras_maxvit.kernels import batch_norm as batch_norm_kernels
    from keras_maxvit.kernels.select import force_kernels
    from keras_maxvit.resume import save_portable

    args = training_args(["--model", "nano", "--weights", "none", "--distribute"])
    model = training.build_model(args, 3)  # `fit --distribute` on TensorFlow
    norms = _norms(model)
    assert len(norms) == 16 + 5 and all(layer.synchronized for layer in norms)
    # Its .keras files leave synchronization out: they load under every backend.
    save_portable(model, str(tmp_path / "fit.keras"))
    assert all(layer.synchronized for layer in norms)
    fit_file = keras.saving.load_model(tmp_path / "fit.keras", safe_mode=True)
    assert not any(layer.synchronized for layer in _norms(fit_file))
    model = small_model(synchronized_batch_norm=True)
    model.save(tmp_path / "synchronized.keras")
    loaded = keras.saving.load_model(tmp_path / "synchronized.keras", safe_mode=True)
    assert all(layer.synchronized for layer in _norms(loaded))
    assert not any(layer.synchronized for layer in _norms(small_model()))

    calls = []
    kernel = batch_norm_kernels.batch_norm_train
    monkeypatch.setattr(
        batch_norm_kernels, "batch_norm_train", lambda *a: calls.append(1) or kernel(*a)
    )
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype("float32")
    with force_kernels(batch_norm_train=True):
        MBConv(32, strides=2)(x, training=True)
        assert len(calls) == 3  # the kernel replaces each of the 3 norms...
        MBConv(32, strides=2, synchronized=True)(x, training=True)
        assert len(calls) == 3  # ...but never a synchronized one


# TensorFlow's XLA compile of both models takes minutes on 2 cores: in
# `nox -s slow` there; JAX runs remat under XLA in the default suite.
_XLA_SLOW_ON_TF = [pytest.mark.slow] if keras.backend.backend() == "tensorflow" else []


@pytest.mark.parametrize("jit_compile", [False, pytest.param(True, marks=_XLA_SLOW_ON_TF)])
def test_remat_gives_the_same_updates(jit_compile, monkeypatch):
    """One SGD(1.0) step with and without remat: the same gradients (the weight
    change), the same BatchNorm statistics and the same drop-path masks."""
    if jit_compile and keras.backend.backend() == "torch":
        pytest.skip("jit_compile is XLA: TF and JAX")
    if not jit_compile and keras.backend.backend() == "jax":
        pytest.skip("JAX without jit runs op by op, a debugging mode; users' steps are jitted")
    rematerialized = []

    def counting_remat(function):
        rematerialized.append(function)
        return original_remat(function)

    original_remat = keras.remat
    monkeypatch.setattr(keras, "remat", counting_remat)
    keras.utils.set_random_seed(0)
    plain = small_model(drop_path_rate=0.3)
    remat = small_model(drop_path_rate=0.3, remat=True)
    for source, target in zip(plain.variables, remat.variables, strict=True):
        target.assign(to_numpy(source))  # seed states too (not in `weights`): the same masks
    blocks = [layer for layer in remat.layers if hasattr(layer, "remat")]
    assert len(blocks) == 15 and all(layer.remat for layer in blocks)
    images, labels = batch(8)
    before = [to_numpy(v) for v in plain.variables]
    updated = []
    for model in (plain, remat):
        model.compile(
            keras.optimizers.SGD(1.0), "sparse_categorical_crossentropy", jit_compile=jit_compile
        )
        model.train_on_batch(images, labels)
        updated.append([to_numpy(v) for v in model.variables])
        # Every block of `remat` went through keras.remat (once per trace).
        assert len(rematerialized) >= len(blocks) if model is remat else not rematerialized
    changed = 0
    for weight, old, expected, got in zip(plain.variables, before, *updated, strict=True):
        # 1e-6 absolute: a conv bias before a BatchNorm has a zero gradient up to rounding.
        tolerance = max(1e-4 * np.abs(expected - old).max(), 1e-6)
        np.testing.assert_allclose(got - old, expected - old, atol=tolerance, err_msg=weight.path)
        changed += bool(np.abs(expected - old).max() > 0)
    assert changed > 0.9 * len(before)  # every parameter, BN statistic and seed moved


def test_remat_layers_round_trip(tmp_path):
    model = small_model(remat=True)
    path = tmp_path / "remat.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert all(layer.remat for layer in loaded.layers if hasattr(layer, "remat"))
    images, _ = batch(2)
    np.testing.assert_allclose(to_numpy(loaded(images)), to_numpy(model(images)), atol=1e-6)

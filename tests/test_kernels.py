"""The kernels against the reference path (plain sublayer calls), and where
each kernel is taken.

`KERAS_MAXVIT_KERNELS=reference` and `fast` must give the same outputs, input
and weight gradients and BatchNorm moving statistics, on a small MaxViT
whose BatchNorm statistics, norms and bias tables are perturbed (identity
statistics would hide a misplaced scale or offset).
"""

import os

import keras
import numpy as np
import pytest
from conftest import to_numpy

import keras_maxvit
from keras_maxvit import kernels
from keras_maxvit.kernels import select

BACKEND = keras.backend.backend()


@pytest.fixture(autouse=True)
def _restore_mode():
    yield
    keras_maxvit.set_kernels(None)


@pytest.fixture(autouse=True)
def _chunked_gelu_on_small_maps(monkeypatch):
    """The chunked GELU on these tests' small maps, over several chunks."""
    if BACKEND == "torch":
        from keras_maxvit.kernels import torch_eager

        monkeypatch.setattr(torch_eager, "GELU_MIN_SIZE", 0)
        monkeypatch.setattr(torch_eager, "GELU_CHUNK", 1000)


def perturb(model, seed=0):
    """Random BatchNorm statistics, norm parameters and bias tables."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        path = v.path
        if "moving_variance" in path:
            v.assign(rng.uniform(0.5, 2.0, v.shape))
        elif "moving_mean" in path or path.endswith("beta"):
            v.assign(rng.uniform(-0.3, 0.3, v.shape))
        elif path.endswith("gamma"):
            v.assign(rng.uniform(0.7, 1.3, v.shape))
        elif "relative_position_bias_table" in path:
            v.assign(rng.normal(size=v.shape))


# Every kind of block (stride-2 MBConv with and without a channel change,
# stride-1 MBConv, block and grid attention) at a small cost: window = grid
# = 2, so stage maps of 8x8 and 4x4 at 32x32 (36x44 is padded at both).
TINY_CONFIG = {
    "stem_filters": 8,
    "stage_filters": (16, 16),
    "depths": (1, 2),
    "head_hidden_size": 12,
    "head_size": 8,
    "window_size": 2,
}
EVEN, PADDED = (2, 32, 32, 3), (2, 36, 44, 3)


def small_model(input_shape=EVEN[1:], **kwargs):
    keras.utils.set_random_seed(1)
    model = keras_maxvit.MaxViT(
        **TINY_CONFIG,
        weights=None,
        input_shape=input_shape,
        classes=7,
        classifier_activation=None,
        **kwargs,
    )
    perturb(model)
    return model


def images(shape=EVEN, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


def grads_and_updates(model, x, upstream, training=True):
    """(output, input gradient, weight gradients, new non-trainable values) of
    `sum(model(x) * upstream)` through `stateless_call`, on this backend."""
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    up = keras.ops.convert_to_tensor(upstream)

    def loss(x, *weights):
        out, _ = model.stateless_call(list(weights), non_trainable, x, training=training)
        return keras.ops.sum(keras.ops.cast(out, "float32") * up)

    if BACKEND == "jax":  # compiled once (eager JAX compiles every op on its own)
        import jax

        out, updates = jax.jit(
            lambda x: model.stateless_call(trainable, non_trainable, x, training=training)
        )(x)
        grads = jax.jit(jax.grad(loss, argnums=tuple(range(len(trainable) + 1))))(x, *trainable)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        out, updates = model.stateless_call(trainable, non_trainable, x, training=training)
        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch([x, *trainable])
            value = loss(x, *trainable)
        grads = tape.gradient(value, [x, *trainable])
    else:
        import torch

        out, updates = model.stateless_call(trainable, non_trainable, x, training=training)
        x = torch.tensor(x, requires_grad=True)
        weights = [w.detach().clone().requires_grad_(True) for w in trainable]
        loss(x, *weights).backward()
        grads = [x.grad, *(w.grad for w in weights)]
    numpy = [to_numpy(keras.ops.cast(g, "float32")) for g in grads]
    return (
        to_numpy(keras.ops.cast(out, "float32")),
        numpy[0],
        numpy[1:],
        [to_numpy(v) for v in updates],
    )


def assert_relative(ours, want, tol, what, floor=1e-5):
    """max |ours - want| <= tol * max |want| + floor (the floor for gradients
    that are zero but for rounding, e.g. of a bias before a BatchNorm)."""
    scale = np.abs(want).max()
    error = np.abs(ours - want).max()
    assert error <= tol * scale + floor, f"{what}: max error {error:.3e} > {tol} x {scale:.3e}"


def compare(got, want, tol):
    """Outputs, gradients and non-trainable values within `tol` (max error
    relative to the largest value)."""
    out, grad_x, grad_w, updates = got
    out_ref, grad_x_ref, grad_w_ref, updates_ref = want
    assert_relative(out, out_ref, tol, "output")
    assert_relative(grad_x, grad_x_ref, tol, "input gradient")
    assert len(grad_w) == len(grad_w_ref)
    for index, (g, g_ref) in enumerate(zip(grad_w, grad_w_ref, strict=True)):
        assert_relative(g, g_ref, tol, f"gradient of weight {index}")
    for index, (u, u_ref) in enumerate(zip(updates, updates_ref, strict=True)):
        assert_relative(u, u_ref, tol, f"non-trainable {index}")


def run_mode(mode, model, x, upstream, training):
    keras_maxvit.set_kernels(mode)
    return grads_and_updates(model, x, upstream, training=training)


@pytest.mark.parametrize("training", [True, False], ids=["train", "inference"])
@pytest.mark.parametrize("shape", [EVEN, PADDED], ids=["even", "padded"])
def test_fast_equals_reference_float32(training, shape):
    # Outputs, input and weight gradients and BatchNorm statistics (inference:
    # folded BatchNorm; training: batch statistics and their update).
    model = small_model(input_shape=shape[1:])
    x = images(shape)
    upstream = np.random.default_rng(1).normal(size=(shape[0], 7)).astype("float32")
    want = run_mode("reference", model, x, upstream, training)
    got = run_mode("fast", model, x, upstream, training)
    compare(got, want, 2e-5)
    # The BatchNorm statistics move only in training.
    moved = any(
        not np.allclose(u, to_numpy(v))
        for u, v in zip(want[3], model.non_trainable_variables, strict=True)
    )
    assert moved == training


def test_frozen_batch_norm_fast_equals_reference():
    # A frozen BatchNorm uses its moving statistics in training too (folded by
    # the fast path), and its statistics stay.
    model = small_model()
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    x = images()
    upstream = np.random.default_rng(2).normal(size=(2, 7)).astype("float32")
    want = run_mode("reference", model, x, upstream, True)
    got = run_mode("fast", model, x, upstream, True)
    compare(got, want, 2e-5)
    for u, v in zip(want[3], model.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(u, to_numpy(v))


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
@pytest.mark.parametrize("mode", ["reference", "fast"])
def test_half_precision_against_float32_reference(policy, mode):
    # Each path in half precision against the float32 reference: the error is
    # that of the half-precision activations (bfloat16: 8 bits of mantissa).
    model = small_model()
    x = images()
    upstream = np.random.default_rng(3).normal(size=(2, 7)).astype("float32")
    want = run_mode("reference", model, x, upstream, True)
    keras.mixed_precision.set_global_policy(policy)
    try:
        half = small_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    for v_half, v in zip(half.weights, model.weights, strict=True):
        v_half.assign(v)
    got = run_mode(mode, half, x, upstream, True)
    # Relative L2 errors, per tensor. Measured on this model (both paths alike):
    # bfloat16 output 0.015, input gradient 0.036, weight gradients <= 0.07;
    # float16 0.0015, 0.0042, <= 0.013; BatchNorm statistics 3e-4 / 4e-5.
    tol = {"mixed_bfloat16": (0.04, 0.08, 0.15, 2e-3), "mixed_float16": (4e-3, 0.01, 0.03, 2e-4)}
    tol_out, tol_grad_x, tol_grad_w, tol_stats = tol[policy]

    def relative(a, b):
        return np.linalg.norm(a - b) / np.linalg.norm(b)

    out, grad_x, grad_w, updates = got
    assert relative(out, want[0]) <= tol_out
    assert relative(grad_x, want[1]) <= tol_grad_x
    largest = max(np.abs(g).max() for g in want[2])
    for index, (g, g_ref) in enumerate(zip(grad_w, want[2], strict=True)):
        # Gradients that are zero but for rounding (a conv bias before a
        # training BatchNorm) are rounding noise in half precision, not compared.
        if np.abs(g_ref).max() >= 1e-5 * largest:
            assert relative(g, g_ref) <= tol_grad_w, f"gradient of weight {index}"
    for index, (u, u_ref) in enumerate(zip(updates, want[3], strict=True)):
        assert relative(u, u_ref) <= tol_stats, f"non-trainable {index}"


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's kernels without autograd")
@pytest.mark.parametrize("shape", [EVEN, PADDED], ids=["even", "padded"])
def test_predict_fast_equals_reference_without_autograd(shape):
    # `predict` runs under `torch.no_grad`, where the PyTorch kernels take
    # other forms (GELU in place, uneven "same" padding as a wider kernel):
    # the logits and the P1..P3 feature maps against the reference path.
    from keras_maxvit.models.backbone import get_pyramid_outputs

    classifier = small_model(input_shape=shape[1:])
    outputs = {**get_pyramid_outputs(classifier), "logits": classifier.output}
    model = keras.Model(classifier.inputs, outputs)
    x = images(shape)
    keras_maxvit.set_kernels("reference")
    want = model.predict_on_batch(x)
    keras_maxvit.set_kernels("fast")
    got = model.predict_on_batch(x)
    assert sorted(got) == sorted(want)
    for key in want:
        assert_relative(got[key], want[key], 2e-5, key)


@pytest.mark.skipif(BACKEND != "torch", reason="the chunked GELU is PyTorch's")
@pytest.mark.parametrize("size", [999, 3500])  # one partial chunk; three and a half
def test_chunked_gelu_matches_numpy(size):
    import torch

    from keras_maxvit.kernels import torch_eager

    rng = np.random.default_rng(4)
    x = rng.normal(scale=3.0, size=(size,))
    upstream = rng.normal(size=(size,))
    c = np.sqrt(2.0 / np.pi)
    tanh = np.tanh(c * (x + 0.044715 * x**3))
    want = 0.5 * x * (1.0 + tanh)
    want_grad = upstream * (
        0.5 * (1.0 + tanh) + 0.5 * x * (1.0 - tanh**2) * c * (1.0 + 3 * 0.044715 * x**2)
    )
    xt = torch.tensor(x, dtype=torch.float32, requires_grad=True)
    y = torch_eager.gelu_tanh(xt, chunked=True)
    assert type(y.grad_fn).__name__ == "_GeluTanhBackward"  # not ATen's GELU
    y.backward(torch.tensor(upstream, dtype=torch.float32))
    assert_relative(y.detach().numpy(), want, 1e-6, "output")
    assert_relative(xt.grad.numpy(), want_grad, 1e-6, "input gradient")
    with torch.no_grad():
        buffer = torch.tensor(x, dtype=torch.float32)
        assert torch_eager.gelu_tanh(buffer, in_place=True, chunked=True) is buffer
    assert_relative(buffer.numpy(), want, 1e-6, "in-place output")


@pytest.mark.skipif(BACKEND != "torch", reason="the stem's kernel is PyTorch's")
@pytest.mark.parametrize("strides", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 10)])
def test_stem_conv_kernel_equals_conv2d(strides, size):
    # `StemConv2D` ("conv" kernel: one channels-first conv with its bias)
    # against `keras.layers.Conv2D` with the same weights: values with and
    # without autograd, and the input, kernel and bias gradients.
    import torch

    keras_maxvit.set_kernels("fast")
    kwargs = {"filters": 4, "kernel_size": 3, "strides": strides, "padding": "same"}
    stem, conv = keras_maxvit.layers.StemConv2D(**kwargs), keras.layers.Conv2D(**kwargs)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, *size, 3)).astype("float32")
    for layer in (stem, conv):
        layer.build(x.shape)
    stem.set_weights([rng.normal(size=w.shape).astype("float32") for w in stem.weights])
    conv.set_weights(stem.get_weights())
    with torch.no_grad():
        assert_relative(to_numpy(stem(x)), to_numpy(conv(x)), 1e-6, "no autograd")
    upstream = torch.tensor(rng.normal(size=tuple(conv(x).shape)).astype("float32"))
    grads = []
    for layer in (stem, conv):
        inputs = torch.tensor(x, requires_grad=True)
        out = layer(inputs)
        (out * upstream).sum().backward()
        grads.append([to_numpy(out), to_numpy(inputs.grad)])
        grads[-1] += [to_numpy(w.value.grad) for w in layer.trainable_weights]
    for index, (got, want) in enumerate(zip(*grads, strict=True)):
        assert_relative(got, want, 1e-5, f"output and gradients {index}")


@pytest.mark.parametrize("shape", [EVEN, PADDED], ids=["even", "padded"])
def test_fused_attention_equals_einsum_path(shape):
    # `ops.dot_product_attention` with the bias (forced on CPU) against the
    # einsum/softmax path: values and gradients. Padded maps keep the einsum path.
    model = small_model(input_shape=shape[1:])
    x = images(shape)
    upstream = np.random.default_rng(4).normal(size=(2, 7)).astype("float32")
    want = run_mode("reference", model, x, upstream, True)
    calls = []
    original = kernels.attention.fused_attention

    def spy(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    kernels.attention.fused_attention = spy
    try:
        with kernels.force_kernels(fused_attention=True):
            got = run_mode("reference", model, x, upstream, True)
    finally:
        kernels.attention.fused_attention = original
    assert bool(calls) == (shape == EVEN)
    compare(got, want, 2e-5)


def test_int8_quantized_logits_close_to_float():
    # `quantize("int8")` replaces the Dense kernels; every layer must call its
    # sublayers for it to take effect (a kernel reading `layer.kernel` would
    # use int8 values as floats).
    # In "fast" mode every kernel that could stand in for a sublayer is tried.
    keras_maxvit.set_kernels("fast")
    model = small_model()
    x = images((4, *EVEN[1:]))

    def logits():
        if BACKEND == "tensorflow":  # eager: XLA compiles int8 matmuls slowly on CPU
            return to_numpy(model(x, training=False))
        model.predict_function = None
        return to_numpy(model.predict_on_batch(x))

    want = logits()
    model.quantize("int8")
    assert any(
        getattr(layer, "quantization_mode", None) == "int8" for layer in model._flatten_layers()
    )
    got = logits()
    cosine = np.sum(got * want, axis=-1) / (
        np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1)
    )
    assert cosine.min() >= 0.99, cosine
    assert not np.allclose(got, want, atol=1e-6)  # quantization did change the numbers


def test_kernel_mode_from_environment_and_set_kernels(monkeypatch):
    layer = keras.layers.Dense(4)
    layer.build((None, 3))
    x = keras.ops.ones((2, 3))
    monkeypatch.setenv(select.ENV_VAR, "reference")
    assert keras_maxvit.get_kernels() == "reference"
    assert not select.use_kernel("linear", x, layer)
    monkeypatch.setenv(select.ENV_VAR, "fast")  # read at call time
    assert select.use_kernel("linear", x, layer)
    keras_maxvit.set_kernels("reference")  # overrides the environment
    assert not select.use_kernel("linear", x, layer)
    keras_maxvit.set_kernels(None)
    assert keras_maxvit.get_kernels() == "fast"
    monkeypatch.setenv(select.ENV_VAR, "quick")
    with pytest.raises(ValueError, match="KERAS_MAXVIT_KERNELS=.quick."):
        keras_maxvit.get_kernels()
    with pytest.raises(ValueError, match="mode='quick'"):
        keras_maxvit.set_kernels("quick")
    with pytest.raises(ValueError, match="Unknown kernel 'nope'"):
        with kernels.force_kernels(nope=True):
            pass


def test_kernels_never_bypass_quantized_lora_or_other_dtype_layers(monkeypatch):
    monkeypatch.setenv(select.ENV_VAR, "fast")
    x = keras.ops.ones((2, 8))

    def dense(**kwargs):
        layer = keras.layers.Dense(8, **kwargs)
        layer.build((None, 8))
        return layer

    assert select.use_kernel("linear", x, dense())
    quantized = dense()
    quantized.quantize("int8")
    assert not select.use_kernel("linear", x, quantized)
    lora = dense()
    lora.enable_lora(2)
    assert not select.use_kernel("linear", x, lora)
    assert not select.use_kernel("linear", x, dense(dtype="bfloat16"))
    if BACKEND == "tensorflow":  # the only backend with synchronized BatchNorm in Keras
        synchronized = keras.layers.BatchNormalization(synchronized=True)
        synchronized.build((None, 8))
        assert not select.use_kernel("batch_norm_train", x, synchronized)
    # Fused attention is no CPU kernel: not even "fast" takes it on CPU.
    assert not select.use_kernel("fused_attention", x)


def test_auto_takes_cpu_kernels_only_where_measured(monkeypatch):
    monkeypatch.delenv(select.ENV_VAR, raising=False)
    x32 = keras.ops.ones((2, 8))
    x16 = keras.ops.ones((2, 8), dtype="bfloat16")
    if BACKEND == "torch":  # where `chunked_gelu` was measured
        import torch

        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    for name, kernel in select.KERNELS.items():
        with kernels.compiled_scope(True):
            compiled = select.use_kernel(name, x32)
        with kernels.compiled_scope(False):
            eager = select.use_kernel(name, x32)
            half = select.use_kernel(name, x16)
        if BACKEND != "torch":  # PyTorch reads torch.compile's own flag
            assert compiled == (BACKEND in kernel.cpu_xla), name
        assert eager == (BACKEND in kernel.cpu_eager), name
        assert not half, name  # measured in float32 only
    if BACKEND == "torch":  # not measured with AVX-512: only "fast" takes it there
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
        assert not select.use_kernel("chunked_gelu", x32)
        assert select.use_kernel("in_place_gelu", x32)
        keras_maxvit.set_kernels("fast")
        assert select.use_kernel("chunked_gelu", x32)
        keras_maxvit.set_kernels(None)
    with monkeypatch.context() as patch:  # on a GPU: only fused attention
        patch.setattr(select, "device_platform", lambda x: "gpu")
        assert not select.use_kernel("depthwise", x32)
        assert select.use_kernel("fused_attention", x16) == (BACKEND in ("jax", "torch"))
        patch.setattr(select, "device_platform", lambda x: "tpu")
        assert not select.use_kernel("fused_attention", x16)
        assert not select.use_kernel("linear", x32)


def test_compile_defaults_resolve_jit_compile():
    # TensorFlow on a CPU-only host: Keras' "auto" is no XLA, MaxViT's is XLA.
    model = small_model()
    model.compile(optimizer="adamw", loss="mse")
    assert model.jit_compile == (BACKEND != "torch")
    model.compile(optimizer="adamw", loss="mse", jit_compile=False)
    assert model.jit_compile is False


@pytest.mark.skipif(BACKEND == "torch", reason="XLA steps: JAX and TensorFlow")
def test_fit_steps_trace_with_the_xla_kernels(monkeypatch):
    # The train and predict steps run in `compiled_scope(jit_compile)`: under
    # auto the CPU kernels are taken there, and the results equal the reference.
    monkeypatch.delenv(select.ENV_VAR, raising=False)
    seen = []
    original = select.is_compiled
    monkeypatch.setattr(select, "is_compiled", lambda x: seen.append(original(x)) or seen[-1])
    model = small_model()
    x, y = images(), np.array([1, 3])
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    fast = to_numpy(model.predict_on_batch(x))
    assert seen and all(seen)
    keras_maxvit.set_kernels("reference")
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")  # retrace
    np.testing.assert_allclose(fast, to_numpy(model.predict_on_batch(x)), rtol=1e-4, atol=1e-4)
    assert model.train_on_batch(x, y) > 0


def test_keras_file_saved_by_version_0_1_loads_with_equal_logits():
    # Saved by main at f866d8e (before the kernels moved): weight names and
    # structure are unchanged, in both paths.
    here = os.path.join(os.path.dirname(__file__), "data")
    data = np.load(os.path.join(here, "maxvit_small_f866d8e.npz"))
    model = keras.saving.load_model(
        os.path.join(here, "maxvit_small_f866d8e.keras"), safe_mode=True
    )
    for mode in ("reference", "fast"):
        keras_maxvit.set_kernels(mode)
        model.predict_function = None  # traced again, with this mode's kernels
        logits = to_numpy(model.predict_on_batch(data["images"]))
        np.testing.assert_allclose(logits, data["logits"], rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow graphs")
def test_tensorflow_xla_context_is_detected_outside_maxvit_steps():
    # A user's own tf.function(jit_compile=True), e.g. a keras.Model wrapping
    # a MaxViT: the XLA kernels; the same graph without XLA: the reference path.
    import tensorflow as tf

    x = tf.ones((2, 8))
    seen = {}

    def probe(name):
        def fn(x):
            seen[name] = select.is_compiled(x)
            return x

        return fn

    tf.function(probe("xla"), jit_compile=True)(x)
    tf.function(probe("graph"))(x)
    probe("eager")(x)
    assert seen == {"xla": True, "graph": False, "eager": False}

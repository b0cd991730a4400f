"""Export for serving: SavedModel signatures, ONNX Runtime and LiteRT against Keras.

Each artifact is served a batch of raw pixels (the preprocessing is part of the
model) and must give `model.predict`'s outputs, for a classifier and a
backbone, also at a batch size other than the one a tracer may have seen.
Where Keras 3.15 cannot export a format on a backend, the test asserts the
error it gives instead (README, "Export").
"""

import importlib.util

import keras
import numpy as np
import pytest
from conftest import SMALL_CONFIG, to_numpy

import keras_maxvit

BACKEND = keras.backend.backend()
IMAGE_SHAPE = (64, 64, 3)
# The reference batch (the traced one where an exporter needs a static batch)
# and another size the artifacts must also serve (its first rows).
BATCH, OTHER_BATCH = 3, 1
SAVED_MODEL_TOL = 1e-5
ONNX_TOL = 1e-4
LITERT_TOL = 1e-4


def build_model(kind: str) -> keras.Model:
    """A small MaxViT with preprocessing; "classifier" returns logits (a softmax hides errors)."""
    head = {"classifier_activation": None} if kind == "classifier" else {"include_top": False}
    return keras_maxvit.MaxViT(
        **SMALL_CONFIG, input_shape=IMAGE_SHAPE, classes=10, include_preprocessing=True, **head
    )


def perturb(model: keras.Model, scale: float = 0.02) -> None:
    """Moves every float weight off its initial value, so a lost one shows."""
    rng = np.random.default_rng(3)
    for variable in model.weights:
        if "float" in variable.dtype:
            noise = rng.normal(size=variable.shape) * scale
            variable.assign(to_numpy(variable) + noise.astype("float32"))


def image_spec(batch: int | None) -> list:
    return [keras.InputSpec(shape=(batch,) + IMAGE_SHAPE, dtype="float32", name="image")]


@pytest.fixture(scope="module", params=["classifier", "backbone"])
def served(request):
    """(model, a batch of raw pixels, model.predict of that batch)."""
    model = build_model(request.param)
    perturb(model)
    images = np.random.default_rng(0).uniform(0, 255, (BATCH,) + IMAGE_SHAPE).astype("float32")
    return model, images, model.predict(images, verbose=0)


def assert_serves(outputs, expected, tol):
    assert outputs.shape == expected.shape, (outputs.shape, expected.shape)
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=tol)


@pytest.mark.skipif(
    BACKEND == "torch", reason="needs torch_xla on torch: test_saved_model_on_torch_needs_torch_xla"
)
def test_saved_model_signatures_serve_keras_outputs(served, tmp_path):
    import tensorflow as tf

    model, images, expected = served
    path = str(tmp_path / "saved_model")
    model.export(path, format="tf_saved_model", verbose=False)
    artifact = tf.saved_model.load(path)
    # `serving_default` is what TF Serving runs: named input in, named output out.
    signature = artifact.signatures["serving_default"]
    assert signature.structured_input_signature[1]["image"].shape.as_list() == [None, *IMAGE_SHAPE]
    for n in (BATCH, OTHER_BATCH):
        batch = tf.constant(images[:n])
        assert_serves(artifact.serve(batch).numpy(), expected[:n], SAVED_MODEL_TOL)
        outputs = signature(image=batch)
        assert list(outputs) == ["output_0"]
        assert_serves(outputs["output_0"].numpy(), expected[:n], SAVED_MODEL_TOL)


@pytest.mark.skipif(BACKEND != "torch", reason="torch only: TF and JAX export SavedModels")
def test_saved_model_on_torch_needs_torch_xla(tmp_path):
    if importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("torch_xla is installed")
    model = build_model("classifier")
    # A static batch: Keras 3.15 cannot torch.export a dynamic one for a Functional model.
    with pytest.raises(ImportError, match="torch_xla"):
        model.export(
            str(tmp_path / "saved_model"),
            format="tf_saved_model",
            input_signature=image_spec(BATCH),
            verbose=False,
        )


def run_onnx(path, images):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == ["image"]
    (outputs,) = session.run(None, {"image": images})
    return outputs


def test_onnx_runs_in_onnxruntime(served, tmp_path):
    model, images, expected = served
    path = tmp_path / "model.onnx"
    # On torch, Keras exports a dynamic batch through the TorchScript exporter,
    # which cannot trace keras.layers.LayerNormalization; a static batch goes
    # through torch.export (test_onnx_with_dynamic_batch_from_torch covers the
    # dynamic one there).
    batch = BATCH if BACKEND == "torch" else None
    model.export(str(path), format="onnx", input_signature=image_spec(batch), verbose=False)
    for n in (BATCH,) if BACKEND == "torch" else (BATCH, OTHER_BATCH):
        assert_serves(run_onnx(path, images[:n]), expected[:n], ONNX_TOL)


@pytest.mark.skipif(
    BACKEND != "torch", reason="torch only: TF and JAX export a dynamic batch with model.export"
)
@pytest.mark.parametrize("served", ["classifier"], indirect=True)
def test_onnx_with_dynamic_batch_from_torch(served, tmp_path):
    """torch.onnx's dynamo exporter, called directly, exports a dynamic batch."""
    import torch

    model, images, expected = served

    class Serving(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, image):
            return self.model(image, training=False)

    path = tmp_path / "model.onnx"
    program = torch.onnx.export(
        Serving(model).eval(),
        (torch.from_numpy(images),),
        dynamo=True,
        dynamic_shapes={"image": {0: torch.export.Dim("batch", min=1)}},
        input_names=["image"],
        verbose=False,
    )
    program.save(str(path))
    for n in (BATCH, OTHER_BATCH):
        assert_serves(run_onnx(path, images[:n]), expected[:n], ONNX_TOL)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow only (torch, JAX: tests below)")
@pytest.mark.parametrize("served", ["classifier"], indirect=True)
def test_litert_with_builtin_ops_serves_keras_outputs(served, tmp_path):
    import tensorflow as tf

    model, images, expected = served
    path = str(tmp_path / "model.tflite")
    # Builtin ops only: the Python interpreter (and most devices) cannot run Flex
    # ops. This needs the attention's transposes at 6-D or less.
    model.export(
        path,
        format="litert",
        verbose=False,
        target_spec={"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]},
    )
    interpreter = tf.lite.Interpreter(model_path=path)
    (image,) = interpreter.get_input_details()
    for n in (BATCH, OTHER_BATCH):
        interpreter.resize_tensor_input(image["index"], [n, *IMAGE_SHAPE])
        interpreter.allocate_tensors()
        interpreter.set_tensor(image["index"], images[:n])
        interpreter.invoke()
        (output,) = interpreter.get_output_details()
        assert_serves(interpreter.get_tensor(output["index"]), expected[:n], LITERT_TOL)


@pytest.mark.skipif(BACKEND != "jax", reason="JAX only")
def test_litert_on_jax_is_refused(tmp_path):
    with pytest.raises(ValueError, match="LiteRT export requires TensorFlow or PyTorch"):
        build_model("classifier").export(str(tmp_path / "model.tflite"), format="litert")


@pytest.mark.skipif(BACKEND != "torch", reason="torch only")
@pytest.mark.parametrize("served", ["classifier"], indirect=True)
def test_litert_from_torch_serves_keras_outputs(served, tmp_path):
    """Through litert-torch where installed (a static batch); else its ImportError."""
    model, images, expected = served
    path = str(tmp_path / "model.tflite")
    kwargs = {"format": "litert", "input_signature": image_spec(BATCH), "verbose": False}
    if importlib.util.find_spec("litert_torch") is None:
        with pytest.raises(ImportError, match="pip install litert-torch"):
            model.export(path, **kwargs)
        return
    model.export(path, **kwargs)
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    interpreter.allocate_tensors()
    (image,) = interpreter.get_input_details()
    interpreter.set_tensor(image["index"], images)
    interpreter.invoke()
    (output,) = interpreter.get_output_details()
    assert_serves(interpreter.get_tensor(output["index"]), expected, LITERT_TOL)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="TensorFlow only: JAX and torch exporters need a static height and width",
)
def test_any_size_model_exports_for_every_size(tmp_path):
    """A `(None, None, 3)` model: one SavedModel and one ONNX file serve every image size."""
    import tensorflow as tf

    model = keras_maxvit.MaxViT(
        **SMALL_CONFIG,
        input_shape=(None, None, 3),
        window_size=2,
        classes=10,
        classifier_activation=None,
    )
    perturb(model)
    model.export(str(tmp_path / "saved"), format="tf_saved_model", verbose=False)
    spec = [keras.InputSpec(shape=(None, None, None, 3), dtype="float32", name="image")]
    onnx_path = tmp_path / "model.onnx"
    model.export(str(onnx_path), format="onnx", input_signature=spec, verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    for size in [(64, 64), (50, 70)]:  # a multiple of the stride and a padded size
        images = np.random.default_rng(1).uniform(0, 255, (2, *size, 3)).astype("float32")
        expected = model.predict(images, verbose=0)
        assert_serves(reloaded.serve(images).numpy(), expected, SAVED_MODEL_TOL)
        assert_serves(run_onnx(onnx_path, images), expected, ONNX_TOL)

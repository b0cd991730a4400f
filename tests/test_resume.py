"""`keras-maxvit fit` resumed after an interruption continues the same run."""

import json

import keras
import numpy as np
import pytest
from test_training import _image_folder, fit_argv, training_args

import keras_maxvit
from keras_maxvit import training
from keras_maxvit.layers import MBConv

# A smaller `--model nano` for these tests: 4 blocks, 13 BatchNorms.
TINY_CONFIG = {
    "stem_filters": 16,
    "stage_filters": (32, 32, 32, 32),
    "depths": (1, 1, 1, 1),
    "head_hidden_size": 32,
}


RUN_STATE = training.RunState
COMPILE_PHASE = training.compile_phase


class Interrupted(Exception):
    pass


@pytest.fixture(autouse=True)
def tiny_nano(monkeypatch):
    """`--model nano` smaller, and on TensorFlow eager train steps: tracing
    them would take most of these tests' time, and resuming does not depend on
    it (JAX keeps its jitted steps: op-by-op JAX is slower than compiling)."""

    def compile_eagerly(model, *args, **kwargs):
        COMPILE_PHASE(model, *args, **kwargs)
        model.run_eagerly = True

    monkeypatch.setattr(training, "NANO_CONFIG", TINY_CONFIG)
    if keras.backend.backend() == "tensorflow":
        monkeypatch.setattr(training, "compile_phase", compile_eagerly)
    monkeypatch.setenv("KERAS_MAXVIT_QUIET", "1")


def _argv(tmp_path, out, head_epochs, epochs):
    # Seeded drop path: its seed states must resume too.
    return fit_argv(tmp_path / "images", out, head_epochs, epochs, "--drop-path-rate", "0.2")


def _recording_run_state(monkeypatch, steps, interrupt_at=None):
    """Records (iterations, learning rate) before every step; raises after
    epoch `interrupt_at` is logged and before its state is saved (the worst
    moment: its CSV row exists, `last.keras` is an epoch older)."""

    class Recording(RUN_STATE):
        def on_train_batch_begin(self, batch, logs=None):
            optimizer = self.model.optimizer
            steps.append((int(optimizer.iterations), float(optimizer.learning_rate)))

        def on_epoch_end(self, epoch, logs=None):
            if epoch == interrupt_at:
                raise Interrupted
            super().on_epoch_end(epoch, logs)

    monkeypatch.setattr(training, "RunState", Recording)


def _log_rows(path):
    return np.atleast_1d(np.genfromtxt(path, delimiter=",", names=True))


def _values(model):
    # Weights and BatchNorm statistics (seed states are compared in state.json:
    # their variable paths differ between models of one process).
    return {v.path: keras.ops.convert_to_numpy(v) for v in model.weights}


def test_interrupted_fit_resumes_as_the_same_run(tmp_path, monkeypatch):
    """An interrupted and resumed fit against an uninterrupted one: the same
    CSV rows (none twice), learning rate at every step, best value and
    `best.keras`, early-stopping state, BatchNorm momentum, and final weights
    and optimizer state up to float32 rounding (1e-5: the resumed run
    recompiles its train step, so the summation order may differ)."""
    _image_folder(tmp_path / "images")  # 12 training images: 3 steps an epoch
    full_steps, first_steps, resumed_steps = [], [], []

    _recording_run_state(monkeypatch, full_steps)
    training.main(_argv(tmp_path, tmp_path / "full", head_epochs=0, epochs=2))

    resumed = tmp_path / "resumed"
    _recording_run_state(monkeypatch, first_steps, interrupt_at=1)
    with pytest.raises(Interrupted):
        training.main(_argv(tmp_path, resumed, head_epochs=0, epochs=2))
    assert _log_rows(resumed / "log.csv")["epoch"].tolist() == [0, 1]
    assert json.loads((resumed / "state.json").read_text())["next_epoch"] == 1
    _recording_run_state(monkeypatch, resumed_steps)
    training.main(_argv(tmp_path, resumed, head_epochs=0, epochs=2))

    # Epoch 1 runs again, from the state after epoch 0: the warmup-cosine
    # schedule continues at step 3 of 6 with the optimizer's moments.
    assert first_steps == full_steps
    assert [step for step, _ in resumed_steps] == [3, 4, 5]
    np.testing.assert_allclose(resumed_steps, full_steps[3:], rtol=1e-6)

    full_rows, resumed_rows = _log_rows(tmp_path / "full/log.csv"), _log_rows(resumed / "log.csv")
    assert resumed_rows["epoch"].tolist() == [0, 1]
    for column in full_rows.dtype.names:
        np.testing.assert_allclose(resumed_rows[column], full_rows[column], rtol=1e-4, atol=1e-5)

    full_state = json.loads((tmp_path / "full/state.json").read_text())
    resumed_state = json.loads((resumed / "state.json").read_text())
    assert resumed_state["best"] == full_state["best"]
    assert full_state["best"] == pytest.approx(max(full_rows["val_accuracy"]))
    assert resumed_state["early_stopping"] == full_state["early_stopping"]
    assert resumed_state["seed_states"] == full_state["seed_states"]
    assert len(full_state["seed_states"]) == 15  # 5 drop paths in each of blocks 1-3

    for name in ("best.keras", "last.keras"):
        full = keras.saving.load_model(tmp_path / "full" / name, safe_mode=True)
        again = keras.saving.load_model(resumed / name, safe_mode=True)
        norms = [
            layer
            for layer in again._flatten_layers()
            if isinstance(layer, keras.layers.BatchNormalization)
        ]
        assert len(norms) == 13 and {norm.momentum for norm in norms} == {0.9}, name
        expected, got = _values(full), _values(again)
        assert expected.keys() == got.keys()
        for path in expected:
            np.testing.assert_allclose(got[path], expected[path], atol=1e-5, err_msg=path)
        if name == "last.keras":
            expected = [keras.ops.convert_to_numpy(v) for v in full.optimizer.variables]
            got = [keras.ops.convert_to_numpy(v) for v in again.optimizer.variables]
            assert len(got) == len(expected) > 50
            for value, reference in zip(got, expected, strict=True):
                np.testing.assert_allclose(value, reference, atol=1e-5)


def test_resume_keeps_a_better_best_model(tmp_path, monkeypatch):
    """A resumed run overwrites `best.keras` only with a better epoch than
    the best one before the interruption."""
    _image_folder(tmp_path / "images")
    out = tmp_path / "run"
    training.main(_argv(tmp_path, out, head_epochs=0, epochs=1))
    state = json.loads((out / "state.json").read_text())
    state["best"] = 1.0  # as if epoch 1 had been perfect: no later epoch is better
    (out / "state.json").write_text(json.dumps(state))
    saved = (out / "best.keras").read_bytes()
    training.main(_argv(tmp_path, out, head_epochs=0, epochs=2))
    assert _log_rows(out / "log.csv")["epoch"].tolist() == [0, 1]
    assert (out / "best.keras").read_bytes() == saved
    assert json.loads((out / "state.json").read_text())["best"] == 1.0


def test_adamw_keeps_its_weight_decay_exclusions_after_resume():
    """The optimizer of a resumed phase is `compile_phase`'s (its exclusions
    are not in the optimizer config), with the saved state copied in."""
    args = training_args(["--model", "nano", "--weights", "none", "--image-size", "32"])
    model = training.build_model(args, 3)
    training.compile_phase(model, 2, args, steps_per_epoch=3)
    saved = model.optimizer
    saved.build(model.trainable_variables)
    saved.iterations.assign(7)
    saved.variables[-1].assign(np.full(saved.variables[-1].shape, 0.5, "float32"))
    training.compile_phase(model, 2, args, steps_per_epoch=3)
    training.restore_optimizer(model, saved)
    optimizer = model.optimizer
    assert optimizer is not saved and int(optimizer.iterations) == 7
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(optimizer.variables[-1]), 0.5)
    decayed = {v.path for v in model.trainable_weights if optimizer._use_weight_decay(v)}
    assert "stage0_block0_block_attn/attn/qkv/kernel" in decayed
    assert not any(path.endswith(("bias", "gamma", "beta")) for path in decayed)

    training.compile_phase(model, 1, args, steps_per_epoch=3)  # Adam: other variables
    with pytest.raises(ValueError, match="does not match"):
        training.restore_optimizer(model, saved)


def test_mbconv_momentum_is_saved(tmp_path):
    """`fit` from scratch sets BatchNorm momentum 0.9; MBConv keeps it in its
    config, so a model rebuilt from a `.keras` file has it too."""
    args = training_args(["--model", "nano", "--weights", "none", "--image-size", "32"])
    model = training.build_model(args, 3)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    block = loaded.get_layer("stage3_block0_mbconv")
    assert block.get_config()["momentum"] == 0.9
    assert {block.pre_norm.momentum, block.norm1.momentum, block.norm2.momentum} == {0.9}
    assert loaded.get_layer("stem_norm1").momentum == 0.9

    default = MBConv(32, strides=2)
    assert default.get_config()["momentum"] == 0.99  # Keras' default: old files unchanged
    restored = MBConv.from_config(MBConv(32, strides=2, momentum=0.5).get_config())
    restored.build((1, 8, 8, 16))
    assert restored.momentum == 0.5 and restored.norm2.momentum == 0.5
    small = keras_maxvit.MaxViT(16, (32,), (1,), None, input_shape=(32, 32, 3), classes=2)
    assert small.get_layer("stage0_block0_mbconv").norm1.momentum == 0.99


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"momentum": "0.9"}, TypeError, "Received: momentum='0.9'"),
        ({"momentum": True}, TypeError, "Received: momentum=True"),
        ({"momentum": 1.5}, ValueError, r"\[0, 1\]. Received: momentum=1.5"),
    ],
)
def test_mbconv_momentum_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        MBConv(32, **kwargs)


def test_a_run_that_cannot_be_resumed_is_set_aside_not_overwritten(tmp_path):
    from keras_maxvit.resume import set_aside

    out = tmp_path / "run"
    out.mkdir()
    (out / "log.csv").write_text("epoch,accuracy\n0,0.5\n")
    (out / "best.keras").write_bytes(b"the user's best model")
    paths = {name: str(out / name) for name in ("best.keras", "last.keras", "log.csv")}
    folder = set_aside(paths)
    assert folder is not None and not (out / "log.csv").exists()
    moved = {p.name: p.read_bytes() for p in (out / folder).iterdir()}
    assert moved == {"log.csv": b"epoch,accuracy\n0,0.5\n", "best.keras": b"the user's best model"}
    assert set_aside(paths) is None  # nothing left to move


def test_best_model_saves_only_improvements_and_records_them_at_once(tmp_path):
    from keras_maxvit.resume import BestModel

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"next_epoch": 4, "best": 0.5, "seed_states": {"a": [1, 2]}}))
    callback = BestModel(str(tmp_path / "best.keras"), "val_accuracy", 0.5, str(state))
    callback.set_model(model)
    callback.on_epoch_end(4, {"val_accuracy": 0.5})  # not better: nothing written
    assert not (tmp_path / "best.keras").exists()
    callback.on_epoch_end(4, {"val_accuracy": 0.75})
    assert keras.saving.load_model(tmp_path / "best.keras").count_params() == 8
    # The best value is recorded before last.keras and the rest of the state move on.
    assert json.loads(state.read_text()) == {
        "next_epoch": 4,
        "best": 0.75,
        "seed_states": {"a": [1, 2]},
    }
    assert not list(tmp_path.glob(".*partial*"))  # written through a temporary file

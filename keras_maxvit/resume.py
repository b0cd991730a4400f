"""What `keras-maxvit fit` needs to resume a run as the same run.

After every epoch `last.keras` (the model with its optimizer state) and then
`state.json` are written, each atomically: the next epoch and phase, the best
validation accuracy so far (`ModelCheckpoint(initial_value_threshold=...)`),
EarlyStopping's best value and count, and the drop-path seed states, which
`.keras` files do not keep.
"""

import json
import os

import keras
import numpy as np


def monitored_value(value):
    """A monitored value for JSON: a float, or None when there is none yet."""
    return None if value is None or not np.isfinite(value) else float(value)


def _write_atomically(path: str, write) -> None:
    """`write(temporary_path)`, then the temporary file replaces `path`."""
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, f".{name}.partial{os.path.splitext(name)[1]}")
    write(temporary)
    os.replace(temporary, path)


def save_portable(model, path: str) -> None:
    """Saves `model` to `path` atomically, synchronized BatchNorm off in the file.

    Keras allows `synchronized=True` only on TensorFlow: `fit --distribute`
    turns it on for the run (`set_batch_norm`), and its `.keras` files stay
    loadable under every backend.
    """
    synchronized = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if getattr(layer, "synchronized", False)
    ]
    for layer in synchronized:
        layer.synchronized = False
    try:
        _write_atomically(path, model.save)
    finally:
        for layer in synchronized:
            layer.synchronized = True


def _write_json(path: str, data: dict) -> None:
    def write(temporary):
        with open(temporary, "w") as f:
            json.dump(data, f, indent=1)

    _write_atomically(path, write)


def seed_generators(model) -> dict:
    """The drop-path seed generators by layer path (their states are not in `.keras` files)."""
    generators = {}
    for layer in model._flatten_layers(include_self=False):
        generator = getattr(layer, "seed_generator", None)
        if generator is not None:
            generators[layer.path] = generator
    return generators


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping that continues from a saved best value and count."""

    def __init__(self, resumed: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.resumed = resumed

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.resumed:
            self.best = self.resumed["best"]
            self.wait = self.resumed["wait"]
            self.best_epoch = self.resumed["best_epoch"]


class BestModel(keras.callbacks.Callback):
    """Saves the model (`save_portable`) when `monitor` beats `best`, the
    best value of the run so far (that of an interrupted run when resumed),
    then records the new best value in `state.json` at once."""

    def __init__(self, path: str, monitor: str, best: float | None, state_path: str):
        super().__init__()
        self.path = path
        self.monitor = monitor
        self.best = -np.inf if best is None else float(best)
        self.state_path = state_path

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not value > self.best:
            return
        self.best = float(value)
        save_portable(self.model, self.path)
        if os.path.isfile(self.state_path):
            # Only the best value changes: the rest still describes last.keras.
            with open(self.state_path) as f:
                state = json.load(f)
            state["best"] = self.best
            _write_json(self.state_path, state)


class RunState(keras.callbacks.Callback):
    """After every epoch: `last.keras` (with the optimizer state), then
    `state.json` (the next epoch and what resuming needs), each written atomically."""

    def __init__(self, paths: dict, phase: int, checkpoint, early_stopping):
        super().__init__()
        self.paths = paths
        self.phase = phase
        self.checkpoint = checkpoint
        self.early_stopping = early_stopping

    def on_epoch_end(self, epoch, logs=None):
        save_portable(self.model, self.paths["last"])
        self.write(epoch + 1)

    def write(self, next_epoch: int) -> None:
        stopping = self.early_stopping
        seeds = seed_generators(self.model)
        state = {
            "next_epoch": next_epoch,
            "phase": self.phase,
            "best": monitored_value(self.checkpoint.best),
            "early_stopping": {
                "best": monitored_value(stopping.best),
                "wait": int(stopping.wait),
                "best_epoch": int(stopping.best_epoch),
            },
            "seed_states": {
                path: keras.ops.convert_to_numpy(generator.state.value).tolist()
                for path, generator in seeds.items()
            },
        }
        _write_json(self.paths["state"], state)


def truncate_log(log_path: str, start: int) -> None:
    """Keeps the CSV log's rows of epochs before `start` (an epoch that ran
    after the last saved state is run again and logged again)."""
    if not os.path.isfile(log_path):
        return
    with open(log_path) as f:
        lines = f.read().splitlines(keepends=True)
    kept = lines[:1] + [line for line in lines[1:] if int(line.split(",", 1)[0]) < start]

    def write(temporary):
        with open(temporary, "w") as f:
            f.writelines(kept)

    _write_atomically(log_path, write)


def restore_optimizer(model, saved) -> None:
    """Builds the optimizer `compile_phase` made and copies `saved`'s state
    into it (moments, iterations: the schedule step). The new optimizer keeps
    what its config does not carry (AdamW's `exclude_from_weight_decay`)."""
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    if [tuple(v.shape) for v in optimizer.variables] != [tuple(v.shape) for v in saved.variables]:
        raise ValueError(
            "The optimizer state in last.keras does not match this run's optimizer; "
            "resume with the arguments of the interrupted run or use a new --output-dir. "
            f"Received: {len(saved.variables)} saved variables for "
            f"{len(optimizer.variables)}"
        )
    for variable, value in zip(optimizer.variables, saved.variables, strict=True):
        variable.assign(keras.ops.convert_to_numpy(value))


def set_aside(paths: dict) -> str | None:
    """Moves the files of a run that cannot be resumed (no `last.keras` or
    `state.json`) into a `previous-<time>` folder beside them, so a fresh
    run overwrites nothing; returns that folder, or None if there were none."""
    import time

    present = [path for path in paths.values() if os.path.isfile(path)]
    if not present:
        return None
    folder = os.path.join(os.path.dirname(present[0]), time.strftime("previous-%Y%m%d-%H%M%S"))
    os.makedirs(folder, exist_ok=True)
    for path in present:
        os.replace(path, os.path.join(folder, os.path.basename(path)))
    return folder


def read_state(paths) -> dict | None:
    if not (os.path.isfile(paths["state"]) and os.path.isfile(paths["last"])):
        return None
    with open(paths["state"]) as f:
        state = json.load(f)
    # state.json files of earlier versions have only next_epoch and phase.
    state.setdefault("best", None)
    state.setdefault("early_stopping", None)
    state.setdefault("seed_states", {})
    return state

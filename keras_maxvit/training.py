"""Transfer learning with `model.fit`: shared by `keras-maxvit fit` and the example.

A tensorflow-datasets dataset (or a folder of class subfolders) feeds a
`tf.data` pipeline that works for every Keras backend; a (pretrained) MaxViT
gets a new head and is trained in two phases: the head alone with the backbone
frozen (its BatchNorms in inference mode), then every layer at a lower
learning rate with cosine decay and AdamW (no weight decay on norms, biases
and bias tables). The best model is kept as a `.keras` file, the run logs to
CSV, the training curves go to a PNG, and a rerun resumes from the last epoch.
"""

import argparse
import json
import os

import keras
import numpy as np

from keras_maxvit.models.maxvit import MODEL_CONFIGS, VARIANTS

NO_DECAY = ["bias", "gamma", "beta", "relative_position_bias_table"]
# `--model nano`: a MaxViT with every part of the architecture at a small
# width and depth, for CPU demos from random weights (there are no
# pretrained nano weights).
NANO_CONFIG = {
    "stem_filters": 32,
    "stage_filters": (32, 64, 128, 256),
    "depths": (1, 1, 2, 1),
    "head_hidden_size": 256,
}
HEAD_LAYERS = ("head_norm", "head_pre_logits", "predictions")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--dataset",
        default="maxvit_shapes",
        help="a tensorflow-datasets image classification dataset, e.g. tf_flowers "
        "(default: maxvit_shapes, generated locally, no download)",
    )
    source.add_argument("--data-dir", help="a folder with one subfolder of images per class")
    parser.add_argument("--tfds-dir", default=None, help="tensorflow-datasets data_dir")
    parser.add_argument(
        "--model",
        default="tiny",
        choices=(*MODEL_CONFIGS, "nano"),
        help="a MaxViT variant, or nano: a small MaxViT for CPU demos (random weights only)",
    )
    parser.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet' (default), another checkpoint name or file, or 'none' for random init",
    )
    parser.add_argument("--image-size", type=int, default=224, help="input side, at least 32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--head-epochs", type=int, default=2, help="phase 1: head only (0 to skip)")
    parser.add_argument("--epochs", type=int, default=8, help="phase 2: all layers")
    parser.add_argument("--head-lr", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of phase 2")
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--drop-path-rate", type=float, default=0.1)
    parser.add_argument("--patience", type=int, default=5, help="early stopping patience")
    parser.add_argument(
        "--precision", default="float32", choices=("float32", "mixed_bfloat16", "mixed_float16")
    )
    parser.add_argument(
        "--remat",
        action="store_true",
        help="recompute activations in the backward pass (less memory, slower steps)",
    )
    parser.add_argument("--jit-compile", default="auto", choices=("auto", "true", "false"))
    parser.add_argument("--distribute", action="store_true", help="all devices (JAX, TensorFlow)")
    parser.add_argument("--output-dir", default="runs/maxvit", help="checkpoints, log and plot")
    parser.add_argument("--seed", type=int, default=0)


def load_datasets(args):
    """(train, validation, class_names) as unbatched `tf.data` of (uint8 image, label)."""
    import tensorflow as tf

    if args.data_dir:
        if not os.path.isdir(args.data_dir):
            raise FileNotFoundError(f"--data-dir is not a folder: {args.data_dir!r}")
        common = dict(
            validation_split=0.2,
            seed=args.seed,
            image_size=(args.image_size, args.image_size),
            batch_size=None,
            label_mode="int",
        )
        train = keras.utils.image_dataset_from_directory(args.data_dir, subset="training", **common)
        val = keras.utils.image_dataset_from_directory(args.data_dir, subset="validation", **common)
        names = list(train.class_names)
        cast = lambda x, y: (tf.cast(x, tf.uint8), y)  # noqa: E731
        return train.map(cast), val.map(cast), names

    import tensorflow_datasets as tfds

    import keras_maxvit.datasets.shapes  # noqa: F401  registers maxvit_shapes

    builder = tfds.builder(args.dataset, data_dir=args.tfds_dir)
    builder.download_and_prepare()
    splits = builder.info.splits
    if "validation" in splits:
        split = ["train", "validation"]
    elif "test" in splits:
        split = ["train", "test"]
    else:
        split = ["train[:85%]", "train[85%:]"]
    train, val = builder.as_dataset(split=split, as_supervised=True, shuffle_files=True)
    names = builder.info.features["label"].names
    return train, val, names


def make_pipeline(dataset, image_size: int, batch_size: int, training: bool, seed: int = 0):
    """Resize (and augment when training), batch and prefetch; pixels stay in [0, 255]."""
    import tensorflow as tf

    def prepare(image, label):
        image = tf.cast(image, tf.float32)
        if image.shape.rank == 3 and image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        if training:
            larger = int(image_size * 1.15)
            image = tf.image.resize(image, (larger, larger), method="bicubic")
            image = tf.image.random_crop(image, (image_size, image_size, 3))
            image = tf.image.random_flip_left_right(image)
        else:
            image = tf.image.resize(image, (image_size, image_size), method="bicubic")
        return tf.clip_by_value(image, 0.0, 255.0), label

    if training:
        dataset = dataset.shuffle(2048, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch_size, drop_remainder=training).prefetch(tf.data.AUTOTUNE)


def build_model(args, classes: int):
    import keras_maxvit

    weights = None if args.weights.lower() == "none" else args.weights
    common = dict(
        weights=weights,
        input_shape=(args.image_size, args.image_size, 3),
        classes=classes,
        drop_path_rate=args.drop_path_rate,
        remat=args.remat,
    )
    if args.model == "nano":
        if weights is not None:
            raise ValueError(
                "There are no pretrained weights for `--model nano`: use `--weights none`. "
                f"Received: --weights={args.weights}"
            )
        model = keras_maxvit.MaxViT(**NANO_CONFIG, name="maxvit_nano", **common)
    else:
        model = VARIANTS[args.model](**common)
    if weights is None:
        # From scratch, BatchNorm statistics must follow the data within a
        # few hundred steps: the default momentum 0.99 would keep them near
        # their initial values for inference.
        for layer in model._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    return model


def set_backbone_trainable(model, trainable: bool) -> None:
    """Freezes or unfreezes every layer but the head (frozen BatchNorm = inference mode)."""
    for layer in model.layers:
        if layer.name not in HEAD_LAYERS:
            layer.trainable = trainable


def compile_phase(model, phase: int, args, steps_per_epoch: int) -> None:
    jit = {"auto": "auto", "true": True, "false": False}[args.jit_compile]
    if phase == 1:
        optimizer = keras.optimizers.Adam(args.head_lr)
    else:
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0,
            decay_steps=max(1, args.epochs * steps_per_epoch - steps_per_epoch),
            warmup_target=args.lr,
            warmup_steps=steps_per_epoch,
        )
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=args.weight_decay)
        optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
        jit_compile=jit,
    )


class _RunState(keras.callbacks.Callback):
    """Saves the last model and the next epoch to resume from, after every epoch."""

    def __init__(self, output_dir: str, phase: int):
        super().__init__()
        self.output_dir = output_dir
        self.phase = phase

    def on_epoch_end(self, epoch, logs=None):
        last = os.path.join(self.output_dir, "last.keras")
        temporary = os.path.join(self.output_dir, ".last.partial.keras")
        self.model.save(temporary)
        os.replace(temporary, last)
        with open(os.path.join(self.output_dir, "state.json"), "w") as f:
            json.dump({"next_epoch": epoch + 1, "phase": self.phase}, f)


def plot_curves(log_path: str, png_path: str, head_epochs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = np.genfromtxt(log_path, delimiter=",", names=True)
    rows = np.atleast_1d(rows)
    epochs = rows["epoch"] + 1
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for axis, metric in zip(axes, ("loss", "accuracy"), strict=True):
        axis.plot(epochs, rows[metric], "o-", label=f"train {metric}")
        axis.plot(epochs, rows[f"val_{metric}"], "o-", label=f"validation {metric}")
        axis.axvline(head_epochs + 0.5, color="grey", linestyle="--", label="all layers from here")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.legend()
    figure.tight_layout()
    figure.savefig(png_path, dpi=100)
    plt.close(figure)


def _distribution_scope(args):
    import contextlib

    if not args.distribute:
        return contextlib.nullcontext()
    backend = keras.backend.backend()
    if backend == "jax":
        keras.distribution.set_distribution(keras.distribution.DataParallel())
        return contextlib.nullcontext()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.distribute.MirroredStrategy().scope()
    raise ValueError(
        "--distribute works with the JAX and TensorFlow backends. "
        f"Received: KERAS_BACKEND={backend}"
    )


def run(args) -> dict:
    """Runs (or resumes) the two-phase fine-tuning; returns the final metrics and paths."""
    keras.utils.set_random_seed(args.seed)
    if args.precision != "float32":
        keras.mixed_precision.set_global_policy(args.precision)
    os.makedirs(args.output_dir, exist_ok=True)
    paths = {
        name: os.path.join(args.output_dir, file)
        for name, file in (
            ("best", "best.keras"),
            ("last", "last.keras"),
            ("log", "log.csv"),
            ("plot", "curves.png"),
            ("state", "state.json"),
        )
    }
    train_raw, val_raw, names = load_datasets(args)
    train = make_pipeline(train_raw, args.image_size, args.batch_size, True, args.seed)
    val = make_pipeline(val_raw, args.image_size, args.batch_size, False)
    steps = int(train.cardinality())
    if steps <= 0:
        steps = sum(1 for _ in train)

    start = 0
    if os.path.isfile(paths["state"]) and os.path.isfile(paths["last"]):
        with open(paths["state"]) as f:
            start = json.load(f)["next_epoch"]
        print(f"Resuming from {paths['last']} at epoch {start + 1}")

    scope = _distribution_scope(args)
    with scope:
        if start:
            model = keras.saving.load_model(paths["last"], safe_mode=True, compile=False)
        else:
            model = build_model(args, len(names))
        total = args.head_epochs + args.epochs
        for phase, first, last in ((1, 0, args.head_epochs), (2, args.head_epochs, total)):
            if start >= last:
                continue
            set_backbone_trainable(model, phase == 2)
            compile_phase(model, phase, args, steps)
            if start > first:  # resumed: continue the learning-rate schedule
                model.optimizer.iterations.assign((start - first) * steps)
            print(
                f"Phase {phase}: {'head only' if phase == 1 else 'all layers'}, "
                f"epochs {max(first, start) + 1}-{last}"
            )
            model.fit(
                train,
                validation_data=val,
                initial_epoch=max(first, start),
                epochs=last,
                callbacks=[
                    keras.callbacks.ModelCheckpoint(
                        paths["best"], monitor="val_accuracy", save_best_only=True
                    ),
                    keras.callbacks.EarlyStopping(
                        monitor="val_accuracy", patience=args.patience, restore_best_weights=False
                    ),
                    keras.callbacks.CSVLogger(paths["log"], append=True),
                    _RunState(args.output_dir, phase),
                ],
                verbose=1 if os.environ.get("KERAS_MAXVIT_QUIET") is None else 2,
            )

    best = keras.saving.load_model(paths["best"], safe_mode=True)
    loss, accuracy = best.evaluate(val, verbose=0)
    plot_curves(paths["log"], paths["plot"], args.head_epochs)
    print(f"Validation accuracy {accuracy:.4f} (loss {loss:.4f}) of the best model")
    print(f"Best model: {paths['best']}\nTraining curves: {paths['plot']}\nLog: {paths['log']}")
    return {"val_accuracy": float(accuracy), "val_loss": float(loss), "classes": names, **paths}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))

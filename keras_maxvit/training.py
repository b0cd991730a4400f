"""Transfer learning with `model.fit`: shared by `keras-maxvit fit` and the example.

A tensorflow-datasets dataset (or a folder of class subfolders) feeds a
`tf.data` pipeline that works for every Keras backend; a (pretrained) MaxViT
gets a new head and is trained in two phases: the head alone with the backbone
frozen (its BatchNorms in inference mode), then every layer at a lower
learning rate with cosine decay and AdamW (no weight decay on norms, biases
and bias tables). The best model is kept as a `.keras` file, the run logs to
CSV, the training curves go to a PNG, and a rerun resumes from the last epoch
as the same run: each epoch's batches depend only on the seed and the epoch,
and `state.json` keeps what `last.keras` does not (the best value so far,
early stopping's count, drop-path seed states); the optimizer state comes
from `last.keras`.
"""

import argparse
import os
import shutil
import tempfile

import keras
import numpy as np

from keras_maxvit import arguments, distributed
from keras_maxvit.models.maxvit import MODEL_CONFIGS, VARIANTS
from keras_maxvit.resume import (
    BestModel,
    ResumableEarlyStopping,
    RunState,
    monitored_value,
    read_state,
    restore_optimizer,
    seed_generators,
    set_aside,
    truncate_log,
)

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
    parser.add_argument(
        "--image-size", type=arguments.image_side, default=224, help="input side, at least 32"
    )
    parser.add_argument("--batch-size", type=arguments.positive_int, default=32)
    parser.add_argument(
        "--head-epochs",
        type=arguments.non_negative_int,
        default=2,
        help="phase 1: head only (0 to skip)",
    )
    parser.add_argument(
        "--epochs", type=arguments.non_negative_int, default=8, help="phase 2: all layers"
    )
    parser.add_argument("--head-lr", type=arguments.positive_float, default=1e-3)
    parser.add_argument(
        "--lr", type=arguments.positive_float, default=1e-4, help="peak learning rate of phase 2"
    )
    parser.add_argument("--weight-decay", type=arguments.non_negative_float, default=0.05)
    parser.add_argument("--drop-path-rate", type=arguments.rate, default=0.1)
    parser.add_argument(
        "--patience", type=arguments.non_negative_int, default=5, help="early stopping patience"
    )
    parser.add_argument(
        "--precision", default="float32", choices=("float32", "mixed_bfloat16", "mixed_float16")
    )
    parser.add_argument(
        "--remat",
        action="store_true",
        help="recompute activations in the backward pass (less memory, slower steps)",
    )
    parser.add_argument("--jit-compile", default="auto", choices=("auto", "true", "false"))
    parser.add_argument(
        "--distribute",
        action="store_true",
        help="data parallel over all devices and processes (see keras_maxvit.distributed)",
    )
    distributed.add_arguments(parser)
    parser.add_argument("--output-dir", default="runs/maxvit", help="checkpoints, log and plot")
    parser.add_argument("--seed", type=arguments.non_negative_int, default=0)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A seed for epoch `epoch` of a run with `--seed` (a Python int: tensor seeds
    fail under a global seed of 0)."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def load_datasets(args, cluster=None):
    """(train, validation, class_names): `train(epoch)` and `validation` are
    unbatched `tf.data` of (uint8 image, label). Each epoch reads the training
    images in an order of its own, a function of `(--seed, epoch)` alone.
    With a `distributed.Cluster`, the first process prepares a tfds dataset
    before the others."""
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
        load = _files_by_epoch(train.file_paths, args.data_dir, names, args.image_size, args.seed)
        return (lambda epoch: load(epoch).map(cast)), val.map(cast), names

    import tensorflow_datasets as tfds

    import keras_maxvit.datasets.shapes  # noqa: F401  registers maxvit_shapes

    builder = tfds.builder(args.dataset, data_dir=args.tfds_dir)
    if cluster is None:
        builder.download_and_prepare()
    else:
        cluster.chief_first(builder.download_and_prepare)
    splits = builder.info.splits
    if "validation" in splits:
        split = ["train", "validation"]
    elif "test" in splits:
        split = ["train", "test"]
    else:
        split = ["train[:85%]", "train[85%:]"]
    val = builder.as_dataset(split=split[1], as_supervised=True)
    names = builder.info.features["label"].names

    def train(epoch):
        # The files in an order of this epoch's (tfds reshuffles them otherwise
        # at every iteration, which a resumed run could not repeat).
        read_config = tfds.ReadConfig(
            shuffle_seed=_epoch_seed(args.seed, epoch), shuffle_reshuffle_each_iteration=False
        )
        return builder.as_dataset(
            split=split[0], as_supervised=True, shuffle_files=True, read_config=read_config
        )

    return train, val, names


def _files_by_epoch(paths, directory: str, class_names, image_size: int, seed: int):
    """`epoch -> dataset` of the images of `paths` as `image_dataset_from_directory`
    loads them, in a permutation of `(seed, epoch)` (Keras' own dataset
    reshuffles at every iteration, which a resumed run could not repeat)."""
    import tensorflow as tf

    labels = [class_names.index(os.path.relpath(p, directory).split(os.sep)[0]) for p in paths]

    def load(path, label):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        image = tf.image.resize(image, (image_size, image_size))
        image.set_shape((image_size, image_size, 3))
        return image, label

    def for_epoch(epoch):
        order = np.random.default_rng(_epoch_seed(seed, epoch)).permutation(len(paths))
        dataset = tf.data.Dataset.from_tensor_slices(
            ([paths[i] for i in order], tf.constant([labels[i] for i in order], tf.int32))
        )
        return dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)

    return for_epoch


def make_pipeline(
    dataset,
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int = 0,
    epochs: tuple[int, int] = (0, 1),
):
    """Resize (and augment when training), batch and prefetch; pixels stay in [0, 255].

    For training, `dataset` may be a function `epoch -> dataset` (each epoch
    its own read order, see `load_datasets`); the result is the batches of
    epochs `epochs[0]` to `epochs[1] - 1` one after another (full batches
    only): each epoch's shuffle, crops and flips are a function of
    `(seed, epoch)` alone (stateless random ops), so a resumed run gets the
    batches the interrupted one would have had.
    """
    import tensorflow as tf

    def prepare(image, label, key=None):
        image = tf.cast(image, tf.float32)
        if image.shape.rank == 3 and image.shape[-1] == 1:
            image = tf.image.grayscale_to_rgb(image)
        if key is not None:
            crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2))
            larger = int(image_size * 1.15)
            image = tf.image.resize(image, (larger, larger), method="bicubic")
            image = tf.image.stateless_random_crop(image, (image_size, image_size, 3), crop_key)
            image = tf.image.stateless_random_flip_left_right(image, flip_key)
        else:
            image = tf.image.resize(image, (image_size, image_size), method="bicubic")
        return tf.clip_by_value(image, 0.0, 255.0), label

    if not training:
        dataset = dataset.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
        return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def epoch_batches(epoch):
        # Python integers as seeds: a tensor seed fails under a global seed of 0.
        key = [int(k) for k in np.random.SeedSequence([seed, epoch]).generate_state(2)]
        source = dataset(epoch) if callable(dataset) else dataset
        shuffled = source.shuffle(2048, seed=key[0], reshuffle_each_iteration=False)

        def augment(index, example):
            return prepare(*example, tf.stack([tf.constant(key[1], tf.int64), index]))

        keyed = shuffled.enumerate().map(augment, num_parallel_calls=tf.data.AUTOTUNE)
        return keyed.batch(batch_size, drop_remainder=True)

    first, last = epochs
    batches = epoch_batches(first)
    for epoch in range(first + 1, last):
        batches = batches.concatenate(epoch_batches(epoch))
    return batches.prefetch(tf.data.AUTOTUNE)


def _synchronized(args) -> bool:
    """Synchronized BatchNorm for `--distribute` on TensorFlow (MirroredStrategy
    replicas see part of the batch each; JAX's DataParallel sees it whole)."""
    return bool(args.distribute) and keras.backend.backend() == "tensorflow"


def set_batch_norm(model, **attributes) -> None:
    """Sets BatchNorm attributes (`momentum`, `synchronized`) on every
    BatchNormalization and MBConv layer, so they are in the saved config."""
    from keras_maxvit.layers import MBConv

    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, (keras.layers.BatchNormalization, MBConv)):
            for name, value in attributes.items():
                setattr(layer, name, value)


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
        # their initial values for inference. MBConv's own `momentum`
        # keeps it in `.keras` files (its BatchNorms are built from it).
        set_batch_norm(model, momentum=0.9)
    if _synchronized(args):
        # For this run: `save_portable` keeps it out of the .keras files, which
        # load under every backend (Keras refuses synchronized=True off TensorFlow).
        set_batch_norm(model, synchronized=True)
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


def run(args) -> dict:
    """Runs (or resumes) the two-phase fine-tuning; returns the final metrics and paths."""
    if args.head_epochs + args.epochs < 1:
        raise ValueError(
            "Nothing to train: --head-epochs and --epochs are both 0. "
            f"Received: --head-epochs={args.head_epochs}, --epochs={args.epochs}"
        )
    cluster = distributed.setup(
        args.distribute, args.coordinator_address, args.num_processes, args.process_id
    )
    # Only the first process writes the run's files; the others write theirs
    # to a temporary folder, removed at the end (also after an error).
    temporary = None if cluster.chief else tempfile.mkdtemp(prefix="keras_maxvit_process_")
    try:
        return _run(args, cluster, temporary)
    finally:
        if temporary is not None:
            shutil.rmtree(temporary, ignore_errors=True)
        cluster.finish()


def _run(args, cluster, temporary) -> dict:
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
    writes = paths
    if temporary is not None:
        writes = {name: os.path.join(temporary, os.path.basename(p)) for name, p in paths.items()}
    cluster.check_batch_size(args.batch_size)
    train_raw, val_raw, names = load_datasets(args, cluster)
    val = make_pipeline(val_raw, args.image_size, args.batch_size, False)
    val = cluster.validation(val)
    examples = int(train_raw(0).cardinality())
    if examples < 0:
        examples = sum(1 for _ in train_raw(0))
    steps = examples // args.batch_size
    if steps == 0:
        raise ValueError(
            "`--batch-size` must be at most the number of training images "
            f"({examples}). Received: --batch-size={args.batch_size}"
        )

    state = read_state(paths)
    start = state["next_epoch"] if state else 0
    if state:
        print(f"Resuming from {paths['last']} at epoch {start + 1}")
        if cluster.chief:
            truncate_log(paths["log"], start)
    elif cluster.chief:
        previous = set_aside(paths)
        if previous:
            print(f"Moved the files of an earlier run that cannot be resumed to {previous}")

    best = state["best"] if state else None
    with cluster.scope():
        if start:
            # compile=True: the optimizer state of the last epoch comes along.
            model = keras.saving.load_model(paths["last"], safe_mode=True)
            saved_optimizer = getattr(model, "optimizer", None)
            if _synchronized(args):
                set_batch_norm(model, synchronized=True)
            generators = seed_generators(model)
            for path, value in state["seed_states"].items():
                if path in generators:
                    state_variable = generators[path].state
                    state_variable.assign(np.array(value, dtype=state_variable.dtype))
        else:
            model = build_model(args, len(names))
        total = args.head_epochs + args.epochs
        for phase, first, last in ((1, 0, args.head_epochs), (2, args.head_epochs, total)):
            if start >= last:
                continue
            # Within a phase, an interrupted run continues; a phase starts afresh.
            resumed = state if state and state["phase"] == phase and start > first else None
            set_backbone_trainable(model, phase == 2)
            compile_phase(model, phase, args, steps)
            cluster.prepare(model)
            if resumed:
                restore_optimizer(model, saved_optimizer)
            initial = max(first, start)
            print(
                f"Phase {phase}: {'head only' if phase == 1 else 'all layers'}, "
                f"epochs {initial + 1}-{last}"
            )
            checkpoint = BestModel(writes["best"], "val_accuracy", best, writes["state"])
            early_stopping = ResumableEarlyStopping(
                resumed=resumed["early_stopping"] if resumed else None,
                monitor="val_accuracy",
                patience=args.patience,
                restore_best_weights=False,
            )
            run_state = RunState(writes, phase, checkpoint, early_stopping)
            train = make_pipeline(
                train_raw, args.image_size, args.batch_size, True, args.seed, (initial, last)
            )
            train = cluster.shard(train, args.batch_size)
            model.fit(
                train,
                steps_per_epoch=steps,
                validation_data=val,
                initial_epoch=initial,
                epochs=last,
                callbacks=[
                    *cluster.callbacks(),
                    checkpoint,
                    early_stopping,
                    keras.callbacks.CSVLogger(writes["log"], append=True),
                    run_state,
                ],
                verbose=1 if os.environ.get("KERAS_MAXVIT_QUIET") is None else 2,
            )
            best = monitored_value(checkpoint.best)
            if early_stopping.stopped_epoch:  # a rerun goes on with the next phase
                run_state.write(last)

    # Every process evaluates (JAX's is one computation over all of them).
    best_path = writes["best"] if os.path.isfile(writes["best"]) else paths["best"]
    best = keras.saving.load_model(best_path, safe_mode=True)
    loss, accuracy = best.evaluate(val, verbose=0)
    if not cluster.chief:
        return {"val_accuracy": float(accuracy), "val_loss": float(loss), "classes": names}
    plot_curves(paths["log"], paths["plot"], args.head_epochs)
    print(f"Validation accuracy {accuracy:.4f} (loss {loss:.4f}) of the best model")
    print(f"Best model: {paths['best']}\nTraining curves: {paths['plot']}\nLog: {paths['log']}")
    return {"val_accuracy": float(accuracy), "val_loss": float(loss), "classes": names, **paths}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))

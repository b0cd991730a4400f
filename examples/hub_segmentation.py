"""Semantic segmentation with keras-hub's DeepLabV3 on a MaxViT backbone.

The scenes of examples/segmentation.py (circles, rectangles and triangles on
noisy backgrounds, with per-pixel class masks; NumPy, fixed seed, no
download), a `keras_hub.models.DeepLabV3ImageSegmenter` whose image encoder
is a `keras_maxvit.hub.MaxViTBackbone` (DeepLabV3+: spatial pyramid pooling
on P4, low-level features from P2), trained with `fit` through keras-hub's
preprocessor, and the mean IoU on held-out scenes next to the all-background
baseline. A PNG shows images, true and predicted masks. With the defaults (a
small MaxViT from random weights), a few minutes on 2 CPU cores:

    python examples/hub_segmentation.py --output-dir runs/hub_segmentation

With pretrained weights (from the Hugging Face Hub, or its local cache):

    python examples/hub_segmentation.py --weights maxvit_tiny_tf_224.in1k --image-size 96 --lr 3e-4

Set `KERAS_BACKEND` to tensorflow, jax or torch; `--help` lists every option.
"""

import argparse
import importlib.util
import os
import pathlib
import time

import keras
import keras_hub
import numpy as np

from keras_maxvit.hub import MaxViTBackbone, MaxViTImageConverter
from keras_maxvit.presets import IMAGENET_MEAN, IMAGENET_STD
from keras_maxvit.training import NO_DECAY


def _sibling(name: str):
    """A module of this folder (examples/segmentation.py: its scenes, IoU and figure)."""
    path = pathlib.Path(__file__).resolve().with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_{name}_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


segmentation = _sibling("segmentation")
CLASSES = segmentation.CLASSES
# `--weights none`: a small MaxViT from random weights, as in examples/segmentation.py.
NANO = {"stem_filters": 16, "stage_filters": (32, 64, 96, 128), "depths": (1, 1, 1, 1)}


def normalization(weights: str | None) -> tuple[list, list]:
    """`(scale, offset)` taking RGB in [0, 255] to the checkpoint's input."""
    if weights is None:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        return [1 / (255 * s) for s in std], [-m / s for m, s in zip(mean, std, strict=True)]
    converter = MaxViTImageConverter.from_preset(weights)
    return list(converter.scale), list(converter.offset)


def build_segmenter(weights: str | None, image_size: int, classes: int) -> keras.Model:
    """DeepLabV3+ on MaxViT: pretrained (`weights`, a preset) or the nano MaxViT."""
    shape = (image_size, image_size, 3)
    if weights is None:
        encoder = MaxViTBackbone(**NANO, image_shape=shape)
    else:
        encoder = MaxViTBackbone.from_preset(weights, image_shape=shape)
    deeplab = keras_hub.models.DeepLabV3Backbone(
        image_encoder=encoder,
        low_level_feature_key="P2",
        spatial_pyramid_pooling_key="P4",
        upsampling_size=4,  # P4 (stride 16) up to P2 (stride 4)
        dilation_rates=[1, 2],  # P4 is image_size / 16 wide
        image_shape=shape,
    )
    scale, offset = normalization(weights)
    preprocessor = keras_hub.models.DeepLabV3ImageSegmenterPreprocessor(
        image_converter=keras_hub.layers.DeepLabV3ImageConverter(scale=scale, offset=offset)
    )
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(
        backbone=deeplab, num_classes=classes, preprocessor=preprocessor
    )
    if weights is None:
        # From scratch, BatchNorm statistics must follow the data within a few
        # hundred steps: the default momentum 0.99 would lag far behind.
        for layer in segmenter._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    return segmenter


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        default="none",
        help="'none' (default: a small MaxViT, random init) or a MaxViT preset: a "
        "checkpoint tag such as maxvit_tiny_tf_224.in1k, hf://timm/<tag> or a preset folder",
    )
    parser.add_argument("--image-size", type=int, default=64, help="a multiple of 32")
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (cosine decay)")
    parser.add_argument("--examples", type=int, default=6, help="validation images in the PNG")
    parser.add_argument("--output-dir", default="runs/hub_segmentation")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.weights.lower() == "none":
        args.weights = None
    if args.image_size < 32 or args.image_size % 32:
        parser.error(f"--image-size must be a multiple of 32. Received: {args.image_size}")
    return args


def main(argv=None) -> dict:
    """Trains and evaluates; returns the mean IoU, its baseline and the figure path."""
    args = parse_args(argv)
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    # Distinct seeds: the validation scenes are never seen in training.
    train_images, train_masks = segmentation.make_dataset(
        args.train_images, args.image_size, args.seed
    )
    val_images, val_masks = segmentation.make_dataset(
        args.val_images, args.image_size, args.seed + 10_000
    )
    classes = len(CLASSES)
    segmenter = build_segmenter(args.weights, args.image_size, classes)
    steps = args.epochs * -(-args.train_images // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, max(1, steps - steps // 10), warmup_target=args.lr, warmup_steps=steps // 10
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=1e-4)
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    segmenter.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # (keras-hub's default metric expects one-hot masks)
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="pixel_accuracy")],
    )
    print(
        f"DeepLabV3+ on MaxViT ({args.weights or 'nano, random init'}): "
        f"{segmenter.count_params():,} parameters, {args.train_images} training images of "
        f"{args.image_size}x{args.image_size}, {keras.backend.backend()} backend"
    )
    segmenter.fit(
        train_images.astype("float32"),
        train_masks[..., None],
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=2,
    )

    # `predict` runs the preprocessor (the normalization) too.
    logits = segmenter.predict(val_images.astype("float32"), batch_size=args.batch_size, verbose=0)
    predicted = logits.argmax(-1)
    per_class = segmentation.iou_per_class(
        segmentation.confusion_matrix(val_masks, predicted, classes)
    )
    score = float(np.nanmean(per_class))  # NaN: a class absent from truth and prediction
    baseline = segmentation.mean_iou(val_masks, np.zeros_like(val_masks), classes)
    figure = os.path.join(args.output_dir, "hub_segmentation.png")
    shown = slice(0, args.examples)
    segmentation.save_figure(val_images[shown], val_masks[shown], predicted[shown], figure)
    wall_time = time.perf_counter() - start

    ious = zip(CLASSES, per_class, strict=True)
    print("IoU per class: " + ", ".join(f"{name} {iou:.3f}" for name, iou in ious))
    print(f"Mean IoU on {args.val_images} held-out images: {score:.4f}")
    print(f"All-background baseline mean IoU: {baseline:.4f}")
    print(f"Figure: {figure}")
    print(f"Wall time: {wall_time:.1f} s")
    return {
        "mean_iou": score,
        "baseline_iou": baseline,
        "iou_per_class": dict(zip(CLASSES, per_class.tolist(), strict=True)),
        "figure": figure,
        "wall_time": wall_time,
    }


if __name__ == "__main__":
    main()

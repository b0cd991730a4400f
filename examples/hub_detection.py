"""Object detection with keras-hub's RetinaNet on a MaxViT backbone.

Generates scenes of circles, rectangles and triangles on noisy backgrounds
with their bounding boxes (NumPy, fixed seed, no download; shapes do not
overlap), trains a `keras_hub.models.RetinaNetObjectDetector` whose image
encoder is a `keras_maxvit.hub.MaxViTBackbone` (feature pyramid on P3..P5)
with `fit`, and reports the mAP@0.5 (VOC-style, all-point interpolation) on
held-out scenes next to a prior-box baseline: one box per class, of the
class's mean training size, at the image centre. A PNG shows the true and
the predicted boxes. With the defaults (a small MaxViT from random weights),
a few minutes on 2 CPU cores:

    python examples/hub_detection.py --output-dir runs/hub_detection

With pretrained weights (from the Hugging Face Hub, or its local cache):

    python examples/hub_detection.py --weights maxvit_tiny_tf_224.in1k --image-size 128 --lr 2e-4

Set `KERAS_BACKEND` to tensorflow, jax or torch; `--help` lists every option.
"""

import argparse
import os
import time

import keras
import keras_hub
import numpy as np
from keras_hub.src.models.retinanet.retinanet_label_encoder import RetinaNetLabelEncoder

from keras_maxvit.hub import MaxViTBackbone, MaxViTImageConverter
from keras_maxvit.presets import IMAGENET_MEAN, IMAGENET_STD

CLASSES = ("circle", "rectangle", "triangle")
COLOURS = ("#e6194b", "#3cb44b", "#4363d8")
MAX_BOXES = 3
# `--weights none`: a small MaxViT from random weights (as in examples/segmentation.py).
NANO = {"stem_filters": 16, "stage_filters": (32, 64, 96, 128), "depths": (1, 1, 1, 1)}


def draw_scene(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One uint8 `(size, size, 3)` image with 1-3 shapes; their `yxyx` boxes and labels.

    Boxes are the tight pixel boxes `(top, left, bottom, right)` (bottom and right
    exclusive) of each shape; shapes are placed apart so that each is fully visible.
    """
    rows, cols = np.mgrid[0:size, 0:size].astype("float32")
    gradient = rng.uniform(-30, 30, 3) * (rows / size - 0.5)[..., None]
    image = rng.uniform(0, 120, 3) + gradient + rng.normal(0, 12, (size, size, 3))
    taken = np.zeros((size, size), bool)
    boxes, labels = [], []
    for _ in range(rng.integers(1, MAX_BOXES + 1)):
        for _attempt in range(20):  # a free spot, else fewer shapes
            label = int(rng.integers(len(CLASSES)))
            radius = rng.uniform(0.12, 0.22) * size
            centre = rng.uniform(radius, size - radius, 2)
            dy, dx = rows - centre[0], cols - centre[1]
            if CLASSES[label] == "circle":
                inside = dy**2 + dx**2 <= radius**2
            elif CLASSES[label] == "rectangle":
                half_height, half_width = radius * rng.uniform(0.6, 1.0, 2)
                inside = (np.abs(dy) <= half_height) & (np.abs(dx) <= half_width)
            else:  # an isosceles triangle, pointing up or down
                dy = dy if rng.random() < 0.5 else -dy
                inside = (dy <= radius * 0.8) & (np.abs(dx) <= (dy + radius) * 0.6)
            ys, xs = np.nonzero(inside)
            box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
            margin = np.zeros_like(taken)
            margin[max(box[0] - 2, 0) : box[2] + 2, max(box[1] - 2, 0) : box[3] + 2] = True
            if not (margin & taken).any():
                break
        else:
            continue
        taken |= margin
        image[inside] = rng.uniform(130, 255, 3) + rng.normal(0, 12, (int(inside.sum()), 3))
        boxes.append(box)
        labels.append(label)
    return np.clip(image, 0, 255).astype("uint8"), np.array(boxes, "float32"), np.array(labels)


def make_dataset(count: int, size: int = 64, seed: int = 0):
    """`count` scenes: uint8 images, then boxes `(count, 3, 4)` and labels `(count, 3)`
    padded with -1 (keras-hub's layout for `fit`)."""
    rng = np.random.default_rng(seed)
    images = np.zeros((count, size, size, 3), "uint8")
    boxes = np.full((count, MAX_BOXES, 4), -1.0, "float32")
    labels = np.full((count, MAX_BOXES), -1.0, "float32")
    for i in range(count):
        images[i], scene_boxes, scene_labels = draw_scene(rng, size)
        boxes[i, : len(scene_boxes)], labels[i, : len(scene_labels)] = scene_boxes, scene_labels
    return images, boxes, labels


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one `yxyx` box with each of `boxes` `(n, 4)`."""
    top, left = np.maximum(box[:2], boxes[:, :2]).T
    bottom, right = np.minimum(box[2:], boxes[:, 2:]).T
    inter = np.clip(bottom - top, 0, None) * np.clip(right - left, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-9)


def average_precision(detections, truths, label: int, threshold: float = 0.5) -> float:
    """AP of class `label` (VOC all-point interpolation); NaN if it has no true box.

    `detections`: per image `(boxes, labels, scores)`; `truths`: per image
    `(boxes, labels)`. Detections are matched best score first, each to the
    unmatched true box of highest IoU if that IoU is at least `threshold`.
    """
    found = []  # (score, is a true positive)
    total = 0
    for (boxes, labels, scores), (true_boxes, true_labels) in zip(detections, truths, strict=True):
        true_boxes = true_boxes[true_labels == label]
        total += len(true_boxes)
        matched = np.zeros(len(true_boxes), bool)
        keep = labels == label
        for index in np.argsort(-scores[keep], kind="stable"):
            box, score = boxes[keep][index], scores[keep][index]
            overlaps = iou(box, true_boxes) if len(true_boxes) else np.zeros(0)
            overlaps[matched] = -1
            hit = len(overlaps) > 0 and overlaps.max() >= threshold
            if hit:
                matched[overlaps.argmax()] = True
            found.append((score, hit))
    if total == 0:
        return float("nan")
    found.sort(key=lambda item: -item[0])
    hits = np.array([hit for _, hit in found], bool)
    recall = np.concatenate([[0.0], np.cumsum(hits) / total])
    precision = np.concatenate([[1.0], np.cumsum(hits) / np.arange(1, len(hits) + 1)])
    # The precision envelope: the best precision at any higher recall.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * precision[1:]))


def mean_average_precision(detections, truths, classes: int, threshold: float = 0.5) -> float:
    """mAP: the mean AP over the classes that have true boxes."""
    aps = [average_precision(detections, truths, label, threshold) for label in range(classes)]
    return float(np.nanmean(aps))


def prior_box_baseline(train_boxes, train_labels, count: int, size: int, classes: int) -> list:
    """Per image and class one box of the class's mean training size at the centre, score 1."""
    guesses = []
    for label in range(classes):
        boxes = train_boxes[train_labels == label]
        half_height, half_width = (boxes[:, 2:] - boxes[:, :2]).mean(0) / 2
        centre = size / 2
        guesses.append(
            [centre - half_height, centre - half_width, centre + half_height, centre + half_width]
        )
    guess = (np.array(guesses, "float32"), np.arange(classes), np.ones(classes, "float32"))
    return [guess] * count


def initialize_head_biases(detector, prior_probability: float = 0.01) -> None:
    """The last biases of the heads as RetinaNet (Lin et al., 2017) sets them.

    The classification head starts at the focal-loss prior (every anchor
    `prior_probability` foreground: bias `-log((1 - p) / p)`) and the box head at
    zero deltas (the anchors). keras-hub 0.32 initializes the other way round:
    boxes shrunk ~100x and every anchor at p = 0.5, which the regression never
    recovers from in a short run.
    """
    box_bias = detector.box_head.prediction_layer.bias
    box_bias.assign(np.zeros(box_bias.shape, "float32"))
    class_bias = detector.classification_head.prediction_layer.bias
    prior = -np.log((1 - prior_probability) / prior_probability)
    class_bias.assign(np.full(class_bias.shape, prior, "float32"))


def build_detector(weights: str | None, image_size: int, classes: int) -> keras.Model:
    """RetinaNet on MaxViT (P3..P5): pretrained (`weights`, a preset) or the nano MaxViT."""
    shape = (image_size, image_size, 3)
    if weights is None:
        encoder = MaxViTBackbone(**NANO, image_shape=shape)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        scale = [1 / (255 * s) for s in std]
        offset = [-m / s for m, s in zip(mean, std, strict=True)]
    else:
        encoder = MaxViTBackbone.from_preset(weights, image_shape=shape)
        converter = MaxViTImageConverter.from_preset(weights)
        scale, offset = list(converter.scale), list(converter.offset)
    retinanet = keras_hub.models.RetinaNetBackbone(
        image_encoder=encoder,
        min_level=3,
        max_level=5,
        use_p5=False,
        use_fpn_batch_norm=True,
        image_shape=shape,
    )
    # Anchors of 2 * 2**level pixels (16 at P3) and 1.4x that, of 3 aspect ratios:
    # the sizes of the shapes (0.2 to 0.45 of the image side at 64x64).
    anchors = keras_hub.layers.AnchorGenerator(
        "yxyx",
        min_level=3,
        max_level=5,
        num_scales=2,
        aspect_ratios=[0.5, 1.0, 2.0],
        anchor_size=2 * image_size / 64,
    )
    label_encoder = RetinaNetLabelEncoder(  # (not in keras-hub's public API)
        anchors,
        bounding_box_format="yxyx",
        encoding_format="center_xywh",
        # Shapes of 10-16 pixels can sit 4 pixels off their nearest P3 anchors (stride 8).
        positive_threshold=0.4,
        negative_threshold=0.3,
    )
    preprocessor = keras_hub.models.RetinaNetObjectDetectorPreprocessor(
        image_converter=keras_hub.layers.RetinaNetImageConverter(scale=scale, offset=offset)
    )
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=retinanet,
        num_classes=classes,
        bounding_box_format="yxyx",
        anchor_generator=anchors,
        label_encoder=label_encoder,
        pre_logits_num_conv_layers=2,
        preprocessor=preprocessor,
    )
    initialize_head_biases(detector)
    if weights is None:
        # From scratch, BatchNorm statistics must follow the data within a few
        # hundred steps: the default momentum 0.99 would lag far behind.
        for layer in detector._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = 0.9
    # Keep low-confidence detections too: mAP integrates over every threshold.
    detector.prediction_decoder = keras_hub.layers.NonMaxSuppression(
        bounding_box_format="yxyx",
        from_logits=True,
        iou_threshold=0.5,
        confidence_threshold=0.05,
        max_detections=20,
    )
    return detector


def save_figure(images, truths, detections, path: str, min_score: float = 0.5) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    columns = 3
    rows = -(-len(images) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 2.4 * rows + 0.6))
    for axis in np.ravel(axes):
        axis.set_axis_off()
    for axis, image, (true_boxes, _), (boxes, labels, scores) in zip(
        np.ravel(axes), images, truths, detections, strict=False
    ):
        axis.imshow(image)
        for top, left, bottom, right in true_boxes:
            axis.add_patch(
                Rectangle(
                    (left - 0.5, top - 0.5),
                    right - left,
                    bottom - top,
                    fill=False,
                    edgecolor="white",
                    linestyle="--",
                    linewidth=1,
                )
            )
        for (top, left, bottom, right), label, score in zip(boxes, labels, scores, strict=True):
            if score < min_score:
                continue
            colour = COLOURS[int(label)]
            axis.add_patch(
                Rectangle(
                    (left - 0.5, top - 0.5),
                    right - left,
                    bottom - top,
                    fill=False,
                    edgecolor=colour,
                    linewidth=1.5,
                )
            )
            axis.text(left, top - 1, f"{score:.2f}", color=colour, fontsize=7)
    handles = [Line2D([], [], color="white", linestyle="--", label="true box")]
    handles += [Line2D([], [], color=c, label=n) for c, n in zip(COLOURS, CLASSES, strict=True)]
    legend = figure.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=True)
    legend.get_frame().set_facecolor("#888888")
    figure.tight_layout(rect=(0, 0.6 / (2.4 * rows + 0.6), 1, 1))
    figure.savefig(path, dpi=100)
    plt.close(figure)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        default="none",
        help="'none' (default: a small MaxViT, random init) or a MaxViT preset: a "
        "checkpoint tag such as maxvit_tiny_tf_224.in1k, hf://timm/<tag> or a preset folder",
    )
    parser.add_argument("--image-size", type=int, default=64, help="a multiple of 32")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--val-images", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (cosine decay)")
    parser.add_argument("--examples", type=int, default=9, help="validation images in the PNG")
    parser.add_argument("--output-dir", default="runs/hub_detection")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.weights.lower() == "none":
        args.weights = None
    if args.image_size < 32 or args.image_size % 32:
        parser.error(f"--image-size must be a multiple of 32. Received: {args.image_size}")
    return args


def main(argv=None) -> dict:
    """Trains and evaluates; returns the mAP@0.5, its baseline and the figure path."""
    args = parse_args(argv)
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    os.makedirs(args.output_dir, exist_ok=True)

    # Distinct seeds: the validation scenes are never seen in training.
    train_images, train_boxes, train_labels = make_dataset(
        args.train_images, args.image_size, args.seed
    )
    val_images, val_boxes, val_labels = make_dataset(
        args.val_images, args.image_size, args.seed + 10_000
    )
    classes = len(CLASSES)
    detector = build_detector(args.weights, args.image_size, classes)
    steps = args.epochs * -(-args.train_images // args.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, max(1, steps - steps // 10), warmup_target=args.lr, warmup_steps=steps // 10
    )
    detector.compile(optimizer=keras.optimizers.Adam(schedule, global_clipnorm=10.0))
    print(
        f"RetinaNet on MaxViT ({args.weights or 'nano, random init'}): "
        f"{detector.count_params():,} parameters, {args.train_images} training images of "
        f"{args.image_size}x{args.image_size}, {keras.backend.backend()} backend"
    )
    detector.fit(
        train_images.astype("float32"),
        {"boxes": train_boxes, "labels": train_labels},
        batch_size=args.batch_size,
        epochs=args.epochs,
        shuffle=True,
        verbose=2,
    )

    # `predict` normalizes, then decodes the boxes and applies non-max suppression.
    # keras-hub's non-max suppression needs a fixed batch size when TensorFlow traces it:
    # pad the last batch with blank images, then drop their detections.
    padding = -len(val_images) % args.batch_size
    padded = np.concatenate([val_images, np.zeros((padding, *val_images.shape[1:]), "uint8")])
    output = detector.predict(padded.astype("float32"), batch_size=args.batch_size, verbose=0)
    detections = [
        (output["boxes"][i][:n], output["labels"][i][:n], output["confidence"][i][:n])
        for i, n in enumerate(output["num_detections"][: len(val_images)])
    ]
    truths = [
        (b[labels >= 0], labels[labels >= 0])
        for b, labels in zip(val_boxes, val_labels, strict=True)
    ]
    per_class = [average_precision(detections, truths, c) for c in range(classes)]
    score = float(np.nanmean(per_class))
    baseline = mean_average_precision(
        prior_box_baseline(train_boxes, train_labels, len(truths), args.image_size, classes),
        truths,
        classes,
    )
    figure = os.path.join(args.output_dir, "hub_detection.png")
    shown = slice(0, args.examples)
    save_figure(val_images[shown], truths[shown], detections[shown], figure)
    wall_time = time.perf_counter() - start

    aps = zip(CLASSES, per_class, strict=True)
    print("AP@0.5 per class: " + ", ".join(f"{name} {ap:.3f}" for name, ap in aps))
    print(f"mAP@0.5 on {args.val_images} held-out images: {score:.4f}")
    print(f"Prior-box baseline mAP@0.5: {baseline:.4f}")
    print(f"Figure: {figure}")
    print(f"Wall time: {wall_time:.1f} s")
    return {
        "map50": score,
        "baseline_map50": baseline,
        "ap_per_class": dict(zip(CLASSES, per_class, strict=True)),
        "figure": figure,
        "wall_time": wall_time,
    }


if __name__ == "__main__":
    main()

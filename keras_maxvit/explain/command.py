"""`keras-maxvit explain`: Grad-CAM and attention-map PNGs for image files."""

import argparse
import os
import re

import numpy as np

from keras_maxvit import arguments

_BLOCK = re.compile(r"^stage(\d+)_block(\d+)_(block|grid)_attn$")


def add_arguments(parser: argparse.ArgumentParser, variants) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument(
        "--model", choices=variants, default="tiny", help="variant (not needed for a .keras file)"
    )
    parser.add_argument(
        "--weights",
        required=True,
        help="a .keras model, a tag from `list`, 'imagenet', hf://timm/<tag> or a weights file",
    )
    parser.add_argument(
        "--class",
        dest="class_index",
        type=arguments.non_negative_int,
        default=None,
        help="the class to explain (default: each image's top class)",
    )
    parser.add_argument(
        "--layer",
        default=None,
        help="Grad-CAM layer: a block output such as stage2_block4_grid_attn, or P1..P5 "
        "(default: the last block)",
    )
    parser.add_argument(
        "--method",
        choices=("gradcam", "hirescam"),
        default="gradcam",
        help="Grad-CAM (mean gradient per channel) or HiResCAM (gradient x activation per pixel)",
    )
    parser.add_argument(
        "--attention-layer",
        action="append",
        default=None,
        help="a block or grid attention layer to map, repeatable (default: the block and "
        "grid attention of the last block of the second-to-last stage)",
    )
    parser.add_argument(
        "--query",
        nargs=2,
        type=arguments.non_negative_int,
        metavar=("Y", "X"),
        default=None,
        help="the query pixel of the attention maps (default: the Grad-CAM maximum)",
    )
    parser.add_argument(
        "--size", type=arguments.image_side, default=None, help="input side (default: the model's)"
    )
    parser.add_argument("--out", required=True, help="folder for the PNGs (created if needed)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing PNGs")


def default_attention_layers(names: list[str]) -> list[str]:
    """The block and grid attention of the last block of the second-to-last stage."""
    blocks = [(int(m[1]), int(m[2]), name) for name in names if (m := _BLOCK.match(name))]
    if not blocks:
        return names[-2:]
    stages = sorted({stage for stage, _, _ in blocks})
    stage = stages[-2] if len(stages) > 1 else stages[-1]
    last = max(block for s, block, _ in blocks if s == stage)
    return [name for s, block, name in blocks if s == stage and block == last]


def _targets(images, out: str, overwrite: bool) -> list[str]:
    stems = [os.path.splitext(os.path.basename(path))[0] for path in images]
    targets = []
    for index, stem in enumerate(stems):
        name = stem if stems.count(stem) == 1 else f"{stem}_{index}"
        targets.append(os.path.join(out, f"{name}_explain.png"))
    existing = [path for path in targets if os.path.exists(path)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass --overwrite to replace it")
    return targets


def _load(args):
    """(model, size, eval transform, class names or None) for the --weights value."""
    import keras

    from keras_maxvit import cli
    from keras_maxvit.imagenet import imagenet_classes
    from keras_maxvit.presets import PRESETS

    if args.weights.endswith(".keras"):
        if not os.path.isfile(args.weights):
            raise FileNotFoundError(f"--weights {args.weights}: no such .keras file")
        model = keras.saving.load_model(args.weights, safe_mode=True)
        side = model.inputs[0].shape[1]
        size = args.size or side or 224
        if side is not None and args.size is not None and args.size != side:
            raise ValueError(
                f"--size must be the .keras model's input side {side}. Received: --size {args.size}"
            )
        tag = None
    else:
        tag, variant, size = cli._checkpoint(args.weights, args.model, args.size)
        classes = PRESETS[tag]["classes"] if tag else (cli._file_classes(args.weights) or 1000)
        model = cli._constructor(variant)(
            weights=tag or args.weights, input_shape=(size, size, 3), classes=classes
        )
    transform = cli._eval_transform(tag, args.weights, size)
    classes = model.outputs[0].shape[-1]
    names = [name for _, name in imagenet_classes()] if classes == 1000 else None
    return model, size, transform, names


def run(args) -> list[str]:
    from keras_maxvit import explain
    from keras_maxvit.explain.figures import Overlay, save_figure
    from keras_maxvit.imagenet import load_eval_image

    for path in args.images:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"IMAGE {path}: no such file")
    targets = _targets(args.images, args.out, args.overwrite)
    model, size, transform, names = _load(args)
    images = np.stack([load_eval_image(path, size, **transform) for path in args.images])
    layers = args.attention_layer or default_attention_layers(explain.attention_layer_names(model))
    probabilities = model.predict(images, verbose=0)
    cam = explain.grad_cam(
        model, images, class_index=args.class_index, layer=args.layer, method=args.method
    )
    os.makedirs(args.out, exist_ok=True)
    for index, target in enumerate(targets):
        label = int(cam.classes[index])
        name = names[label] if names else f"class {label}"
        query = args.query or np.unravel_index(np.argmax(cam.heatmaps[index]), (size, size))
        query = (int(query[0]), int(query[1]))
        overlays = [
            Overlay(
                cam.heatmaps[index],
                f"{'HiResCAM' if cam.method == 'hirescam' else 'Grad-CAM'}: {name}\n{cam.layer}",
                "evidence for the class (1 = its maximum)",
            )
        ]
        for layer in layers:
            maps = explain.attention_maps(model, images[index : index + 1], layer, [query])
            overlays.append(
                Overlay(
                    maps.mean()[0, 0],
                    f"{maps.partition_type} attention of the star\n{layer}",
                    "attention weight (mean of heads)",
                    marker=query,
                    normalize=True,
                )
            )
        title = (
            f"{os.path.basename(args.images[index])}: {name} (p={probabilities[index, label]:.2f})"
        )
        save_figure(target, images[index], overlays, title=title)
        print(f"{args.images[index]}: {name} -> {target}")
    return targets

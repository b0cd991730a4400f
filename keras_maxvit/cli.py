"""The `keras-maxvit` command: list checkpoints, predict, convert to `.keras`, fit, explain."""

import argparse
import os
import sys

from keras_maxvit import arguments
from keras_maxvit.presets import PRESETS

# The official variants, from the checkpoint table (keras is imported only when needed).
VARIANT_NAMES = tuple(dict.fromkeys(preset["variant"] for preset in PRESETS.values()))
SIZE_HELP = "input side, at least 32 (default: the checkpoint's, or 224 for a file)"


def _constructor(variant: str):
    from keras_maxvit.models.maxvit import VARIANTS

    return VARIANTS[variant]


def _checkpoint(weights: str, variant: str, size: int | None):
    """(preset tag or None, variant, resolution) for a --weights value.

    The resolution is `size`, else the checkpoint's: its preset's, or the one
    a weights file records (timm's config.json, keras_maxvit's cache), or 224.
    """
    from keras_maxvit.normalization import checkpoint_preprocessing
    from keras_maxvit.weights import is_named_weights, resolve_checkpoint

    if is_named_weights(weights):
        tag_variant = PRESETS.get(weights.removeprefix("hf://timm/"), {}).get("variant", variant)
        tag = resolve_checkpoint(weights, tag_variant, size or 224)
        return tag, PRESETS[tag]["variant"], size or PRESETS[tag]["resolution"]
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"{weights!r} is neither a checkpoint name (see `keras-maxvit list`) "
            "nor an existing weights file"
        )
    recorded = checkpoint_preprocessing(weights) or {}
    return None, variant, size or recorded.get("resolution", 224)


def _eval_transform(tag: str | None, weights: str, size: int) -> dict:
    """crop_pct, crop_mode and interpolation of a checkpoint's eval transform.

    A preset's; for a file, what it records (timm's config.json, keras_maxvit's
    cache metadata), the rest as the official checkpoints of `size`.
    """
    from keras_maxvit.normalization import checkpoint_preprocessing, default_eval_transform

    if tag is not None:
        return {key: PRESETS[tag][key] for key in ("crop_pct", "crop_mode", "interpolation")}
    transform = default_eval_transform(size)
    recorded = checkpoint_preprocessing(weights) or {}
    transform.update((key, recorded[key]) for key in transform if key in recorded)
    return transform


def _file_classes(path: str) -> int | None:
    """Classes of the classifier stored in a local weights file, if it says."""
    from keras_maxvit import weights as weights_lib

    keras_layout = False
    if path.endswith(".safetensors"):
        state, metadata = weights_lib.read_safetensors(path)
        keras_layout = metadata.get("format") == "keras_maxvit"
    elif path.endswith((".bin", ".pth")):
        state = weights_lib.read_torch_checkpoint(path)
    else:
        return None
    fc = state.get("head.fc.weight")
    if fc is None:
        return None
    # timm layout (classes, hidden); keras_maxvit's cache layout (hidden, classes).
    return int(fc.shape[-1] if keras_layout else fc.shape[0])


def cmd_list(args) -> None:
    from keras_maxvit.models.maxvit import MODEL_CONFIGS, count_parameters

    print(f"{'checkpoint':38} {'size':>4} {'classes':>7} {'params':>9} {'top-1':>6}  mean/std")
    for tag, p in PRESETS.items():
        params = count_parameters(MODEL_CONFIGS[p["variant"]], p["classes"], p["resolution"])
        top1 = f"{p['top1']:.2f}" if p["top1"] else "-"
        norm = "imagenet" if p["mean"][0] != 0.5 else "0.5/0.5"
        print(
            f"{tag:38} {p['resolution']:>4} {p['classes']:>7} "
            f"{params / 1e6:>8.2f}M {top1:>6}  {norm}"
        )


def cmd_predict(args) -> None:
    import numpy as np

    from keras_maxvit.imagenet import decode_predictions, load_eval_image

    tag, variant, size = _checkpoint(args.weights, args.model, args.size)
    transform = _eval_transform(tag, args.weights, size)
    images = np.stack([load_eval_image(path, size, **transform) for path in args.images])
    classes = PRESETS[tag]["classes"] if tag else (_file_classes(args.weights) or 1000)
    weights = tag or args.weights
    model = _constructor(variant)(weights=weights, input_shape=(size, size, 3), classes=classes)
    probs = model.predict(images, verbose=0)
    top = min(args.top, classes)
    for path, row in zip(args.images, probs, strict=True):
        print(path)
        if classes == 1000:
            for rank, (wnid, name, score) in enumerate(decode_predictions(row[None], top)[0], 1):
                print(f"  {rank}. {name} ({wnid}): {score:.4f}")
        else:
            for rank, index in enumerate(np.argsort(row)[::-1][:top], 1):
                print(f"  {rank}. class {index}: {row[index]:.4f}")


def cmd_convert(args) -> None:
    if not args.out.endswith(".keras"):
        raise ValueError(f"--out must be a .keras file. Received: --out {args.out}")
    if os.path.exists(args.out) and not args.force:
        raise FileExistsError(f"{args.out} exists; pass --force to overwrite it")
    tag, variant, size = _checkpoint(args.source, args.model, args.size)
    classes = PRESETS[tag]["classes"] if tag else (_file_classes(args.source) or 1000)
    model = _constructor(variant)(
        weights=tag or args.source, input_shape=(size, size, 3), classes=classes
    )
    directory = os.path.dirname(os.path.abspath(args.out))
    temporary = os.path.join(directory, f".{os.path.basename(args.out)}.partial.keras")
    try:
        model.save(temporary)
        os.replace(temporary, args.out)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    print(f"Saved {model.name} ({size}x{size}, {classes} classes) to {args.out}")


def cmd_fit(args) -> None:
    from keras_maxvit import training

    training.run(args)


def cmd_explain(args) -> None:
    from keras_maxvit.explain import command

    command.run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keras-maxvit",
        description="MaxViT for Keras 3: list checkpoints, classify images, convert weights.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list the 21 official checkpoints")
    listing.set_defaults(run=cmd_list)

    predict = commands.add_parser("predict", help="classify images with a pretrained MaxViT")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    predict.add_argument("--model", choices=VARIANT_NAMES, default="tiny", help="variant")
    predict.add_argument(
        "--weights",
        default="imagenet",
        help="'imagenet', 'imagenet21k', 'imagenet21k-ft1k', a tag from `list`, "
        "hf://timm/<tag>, or a weights file (default: imagenet)",
    )
    predict.add_argument(
        "--top", type=arguments.positive_int, default=5, help="classes to show (default: 5)"
    )
    predict.add_argument(
        "--size",
        type=arguments.image_side,
        default=None,
        help="input side (default: the checkpoint's)",
    )
    predict.set_defaults(run=cmd_predict)

    convert = commands.add_parser(
        "convert", help="turn a timm checkpoint or tag into a self-contained .keras model"
    )
    convert.add_argument(
        "source", metavar="SRC", help="a tag, alias, hf://timm/<tag> or a checkpoint file"
    )
    convert.add_argument("--out", required=True, help="the .keras file to write")
    convert.add_argument(
        "--model", choices=VARIANT_NAMES, default="tiny", help="variant of a file or alias"
    )
    convert.add_argument(
        "--size",
        type=arguments.image_side,
        default=None,
        help="input side (default: the checkpoint's)",
    )
    convert.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    convert.set_defaults(run=cmd_convert)

    from keras_maxvit.training import add_arguments

    fit = commands.add_parser(
        "fit", help="fine-tune a pretrained MaxViT on a tfds dataset or an image folder"
    )
    add_arguments(fit)
    fit.set_defaults(run=cmd_fit)

    from keras_maxvit.explain.command import add_arguments as add_explain_arguments

    explain = commands.add_parser(
        "explain", help="Grad-CAM and block/grid attention maps of images, as PNGs"
    )
    add_explain_arguments(explain, VARIANT_NAMES)
    explain.set_defaults(run=cmd_explain)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, TypeError, OSError, ImportError, KeyError) as e:
        message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(f"keras-maxvit: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

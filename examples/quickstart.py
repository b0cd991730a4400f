"""Quick start: build MaxViT-T, show its summary and classify an image.

    python examples/quickstart.py                       # random weights
    python examples/quickstart.py --weights model.safetensors --image cat.jpg

With `--weights imagenet` (downloaded from the Hugging Face Hub) or a local
timm `maxvit_tiny_tf_224` checkpoint the top-5 ImageNet classes are real
predictions; with random weights (the default, no download) they are
meaningless, but the run shows the whole pipeline working. Without `--image` it classifies a
generated test image. Set `KERAS_BACKEND` to tensorflow, jax or torch.
"""

import argparse
import time

import keras
import numpy as np

import keras_maxvit


def load_image(path: str | None, size: int) -> np.ndarray:
    """An RGB image in [0, 255] resized to `size`, or a generated one."""
    if path:
        image = keras.utils.load_img(path, target_size=(size, size), interpolation="bicubic")
        return keras.utils.img_to_array(image)
    # A smooth colour gradient with a bright disc: a deterministic stand-in.
    rows, cols = np.mgrid[0:size, 0:size] / size
    disc = ((rows - 0.5) ** 2 + (cols - 0.5) ** 2 < 0.1).astype("float32")
    image = np.stack([rows, cols, disc], axis=-1) * 255.0
    return image.astype("float32")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--weights",
        default=None,
        help="'imagenet', a timm .safetensors file, ... (default: random)",
    )
    parser.add_argument("--image", default=None, help="an image file (default: generated)")
    parser.add_argument("--size", type=int, default=224, help="input side, at least 32")
    parser.add_argument("--no-summary", action="store_true", help="skip model.summary()")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    model = keras_maxvit.MaxViTTiny(weights=args.weights, input_shape=(args.size, args.size, 3))
    print(
        f"Built {model.name} on the {keras.backend.backend()} backend in "
        f"{time.perf_counter() - start:.1f} s"
    )
    if not args.no_summary:
        model.summary(line_length=110)
    print(f"Parameters: {model.count_params():,}")

    image = load_image(args.image, args.size)
    start = time.perf_counter()
    probs = keras.ops.convert_to_numpy(model(image[None], training=False))[0]
    print(f"Inference: {time.perf_counter() - start:.2f} s")
    print("Top-5 ImageNet classes:")
    for wnid, name, score in keras_maxvit.decode_predictions(probs[None], top=5)[0]:
        print(f"  {name} ({wnid}): {score:.4f}")


if __name__ == "__main__":
    main()

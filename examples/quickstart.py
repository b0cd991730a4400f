"""Quick start: build MaxViT-T, show its summary and classify an image.

    python examples/quickstart.py                       # random weights
    python examples/quickstart.py --weights model.safetensors --image cat.jpg

With `--weights` pointing at a timm `maxvit_tiny_tf_224` checkpoint
(`model.safetensors` from the Hugging Face Hub) the top-5 classes are
ImageNet class indices; with random weights they are meaningless, but the
run shows the whole pipeline working. Without `--image` it classifies a
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
    parser.add_argument("--weights", default=None, help="timm .safetensors or .weights.h5")
    parser.add_argument("--image", default=None, help="an image file (default: generated)")
    parser.add_argument("--size", type=int, default=224, help="input side, a multiple of 32")
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
    print("Top-5 classes (index: probability):")
    for index in np.argsort(probs)[::-1][:5]:
        print(f"  {index:4d}: {probs[index]:.4f}")


if __name__ == "__main__":
    main()

"""`maxvit_shapes`: a small image-classification dataset that generates itself.

Deterministic drawn shapes and textures on noisy backgrounds, so transfer
learning can be tried end to end with no download. Five classes (circle,
square, triangle, stripes, checkerboard), random colours, sizes and
positions; 64x64 RGB; 500 training and 150 validation images. Loading it
with `tfds.load("maxvit_shapes")` works once this module is imported.
"""

import numpy as np
import tensorflow_datasets as tfds

CLASSES = ("circle", "square", "triangle", "stripes", "checkerboard")
IMAGE_SIZE = 64
SPLITS = {"train": (500, 0), "validation": (150, 1)}  # (images, seed)


def draw(label: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One `(size, size, 3)` uint8 image of class `label`."""
    return draw_with_mask(label, rng, size)[0]


def draw_with_mask(label: int, rng: np.random.Generator, size: int = IMAGE_SIZE):
    """`(image, mask)`: the image `draw` makes and the boolean `(size, size)`
    mask of the pixels it painted in the shape's (or texture's) colour."""
    rows, cols = np.mgrid[0:size, 0:size].astype("float32")
    background = rng.uniform(0, 120, 3)
    image = background + rng.normal(0, 12, (size, size, 3))
    colour = rng.uniform(130, 255, 3)
    centre = rng.uniform(0.35 * size, 0.65 * size, 2)
    radius = rng.uniform(0.18 * size, 0.3 * size)
    dy, dx = rows - centre[0], cols - centre[1]
    name = CLASSES[label]
    if name == "circle":
        mask = dy**2 + dx**2 <= radius**2
    elif name == "square":
        mask = (np.abs(dy) <= radius * 0.85) & (np.abs(dx) <= radius * 0.85)
    elif name == "triangle":
        mask = (dy <= radius * 0.8) & (dy >= -radius) & (np.abs(dx) <= (dy + radius) * 0.6)
    elif name == "stripes":
        period = rng.uniform(6, 12)
        angle = rng.uniform(0, np.pi)
        mask = np.sin((rows * np.cos(angle) + cols * np.sin(angle)) * 2 * np.pi / period) > 0
    else:  # checkerboard
        cell = int(rng.integers(5, 11))
        mask = ((rows // cell + cols // cell) % 2).astype(bool)
    image[mask] = colour + rng.normal(0, 12, (int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype("uint8"), mask


class MaxvitShapes(tfds.core.GeneratorBasedBuilder):
    """Drawn shapes and textures in 5 classes, generated on the fly."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3)),
                    "label": tfds.features.ClassLabel(names=CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            description=__doc__,
        )

    def _split_generators(self, dl_manager):
        return {
            name: self._generate_examples(count, seed) for name, (count, seed) in SPLITS.items()
        }

    def _generate_examples(self, count: int, seed: int):
        rng = np.random.default_rng(seed)
        for index in range(count):
            label = index % len(CLASSES)
            yield index, {"image": draw(label, rng), "label": label}

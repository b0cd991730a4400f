"""`MaxViTImageConverter`: resize, crop and normalize images as a checkpoint expects."""

import math

import keras
import numpy as np
from keras import ops
from keras_hub.layers import ImageConverter
from keras_hub.src.utils.tensor_utils import in_tf_function

from keras_maxvit.hub.maxvit_backbone import MaxViTBackbone


def check_crop_pct(crop_pct) -> float:
    number = isinstance(crop_pct, (int, float)) and not isinstance(crop_pct, bool)
    if not number or not 0 < crop_pct <= 1:
        raise ValueError(f"`crop_pct` must be a number in (0, 1]. Received: crop_pct={crop_pct!r}")
    return float(crop_pct)


def central_crop(images, fractions):
    """The centre of `images` (`(..., H, W, C)`): `rows_num / rows_den` of the height
    and `cols_num / cols_den` of the width (integer arithmetic, so it also runs on
    symbolic sizes inside `tf.data`)."""
    (rows_num, rows_den), (cols_num, cols_den) = fractions
    if in_tf_function():
        import tensorflow as tf

        shape = tf.shape(images)
    else:
        shape = ops.shape(images)
    height, width = shape[-3], shape[-2]
    crop_height, crop_width = height * rows_num // rows_den, width * cols_num // cols_den
    top, left = (height - crop_height) // 2, (width - crop_width) // 2
    return images[..., top : top + crop_height, left : left + crop_width, :]


@keras.saving.register_keras_serializable(package="keras_maxvit.hub")
class MaxViTImageConverter(ImageConverter):
    """keras-hub's `ImageConverter` with timm's eval crop (`crop_pct`) for MaxViT.

    Takes raw RGB in `[0, 255]` (channels last, batched or not) and returns
    what the backbone takes: the centre crop, resized to `image_size`, then
    `x * scale + offset` (the checkpoint's `(x / 255 - mean) / std`).
    `from_preset` sets every argument from the checkpoint: its mean/std,
    `crop_pct`, crop mode (`crop_to_aspect_ratio=True` for timm's `"center"`,
    False for `"squash"`) and interpolation (bicubic).

    The crop is timm's eval transform: for an `image_size` of side `R`, the
    image is resized so that its shorter side (`"center"`) or both sides
    (`"squash"`) are `floor(R / crop_pct)` and the centre `R x R` is kept.
    Here that is the centre `R / floor(R / crop_pct)` of each side, then the
    resize of `ImageConverter`.

    Args:
        crop_pct: Fraction of the image the crop keeps, in `(0, 1]`; 1 for no
            crop (the 384 and 512 checkpoints), 0.95 for the 224 ones.
        Others: as in `keras_hub.layers.ImageConverter`.

    Example:

    ```python
    import numpy as np
    from keras_maxvit.hub import MaxViTImageConverter

    converter = MaxViTImageConverter(
        image_size=(224, 224), crop_pct=0.95, interpolation="bicubic",
        scale=[1 / (255 * s) for s in (0.229, 0.224, 0.225)],
        offset=[-m / s for m, s in zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))],
    )
    converter(np.random.uniform(0, 255, (2, 320, 256, 3))).shape  # (2, 224, 224, 3)
    ```
    """

    backbone_cls = MaxViTBackbone

    def __init__(self, crop_pct: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.crop_pct = check_crop_pct(crop_pct)

    def _fractions(self):
        """Per side, the kept fraction as `(R, floor(R / crop_pct))`."""
        return tuple((side, math.floor(side / self.crop_pct)) for side in self.image_size)

    def _call_python(self, inputs):
        if self.crop_pct == 1.0 or self.image_size is None:
            return super()._call_python(inputs)
        if isinstance(inputs, dict):
            raise ValueError(
                "MaxViTImageConverter does not move bounding boxes with its crop: use "
                "crop_pct=1.0 with a dict of images and boxes. "
                f"Received: crop_pct={self.crop_pct}, inputs with keys {sorted(inputs)}"
            )
        if isinstance(inputs, (list, tuple)):
            try:
                inputs = np.asarray(inputs)
            except ValueError:  # images of different sizes: one at a time
                return type(inputs)(self._call_python(x) for x in inputs)
        return super()._call_python(central_crop(inputs, self._fractions()))

    def get_config(self) -> dict:
        config = super().get_config()
        config["crop_pct"] = self.crop_pct
        return config

"""`MaxViTImageClassifierPreprocessor`: the image converter of a `MaxViTImageClassifier`."""

import keras
from keras_hub.models import ImageClassifierPreprocessor

from keras_maxvit.hub.maxvit_backbone import MaxViTBackbone
from keras_maxvit.hub.maxvit_image_converter import MaxViTImageConverter


@keras.saving.register_keras_serializable(package="keras_maxvit.hub")
class MaxViTImageClassifierPreprocessor(ImageClassifierPreprocessor):
    """Raw images (and labels) to `MaxViTImageClassifier` inputs.

    Applies its `image_converter` (a `MaxViTImageConverter`) to the images
    and passes labels and sample weights through. `from_preset` builds it
    with the checkpoint's crop, resize and normalization.

    Example:

    ```python
    from keras_maxvit.hub import MaxViTImageClassifierPreprocessor

    preprocessor = MaxViTImageClassifierPreprocessor.from_preset("maxvit_tiny_tf_224.in1k")
    ```
    """

    backbone_cls = MaxViTBackbone
    image_converter_cls = MaxViTImageConverter

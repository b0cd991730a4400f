"""MaxViT in keras-hub: `MaxViTBackbone`, `MaxViTImageClassifier` and their presets.

Needs keras-hub (`pip install "keras-maxvit[hub]"`); the core `keras_maxvit`
package does not import it. Importing this module registers:

- the classes with Keras (package `"keras_maxvit.hub"`, apart from the core
  `"keras_maxvit>MaxViTBackbone"`), so keras-hub presets and `.keras` files
  of them load, also through `keras_hub.models.Backbone.from_preset` and
  `keras_hub.models.ImageClassifier.from_preset`;
- the 21 official checkpoints as built-in presets (`MaxViTBackbone.presets`),
  each fetched from `hf://timm/<tag>`;
- MaxViT in keras-hub's loader of timm checkpoints (`timm_loader`), so any
  `hf://timm/maxvit_*_tf_*` handle loads.

Example:

```python
import keras_hub
import keras_maxvit.hub  # noqa: F401  (registers MaxViT with keras-hub)

classifier = keras_hub.models.ImageClassifier.from_preset("maxvit_tiny_tf_224.in1k")
backbone = keras_hub.models.Backbone.from_preset("hf://timm/maxvit_tiny_tf_384.in1k")
```
"""

try:
    import keras_hub  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("keras_maxvit.hub needs keras-hub: pip install 'keras-maxvit[hub]'") from e

from keras_hub.src.utils.preset_utils import register_presets

from keras_maxvit.hub import timm_loader
from keras_maxvit.hub.maxvit_backbone import MaxViTBackbone
from keras_maxvit.hub.maxvit_image_classifier import MaxViTImageClassifier
from keras_maxvit.hub.maxvit_image_classifier_preprocessor import (
    MaxViTImageClassifierPreprocessor,
)
from keras_maxvit.hub.maxvit_image_converter import MaxViTImageConverter
from keras_maxvit.hub.maxvit_presets import backbone_presets

register_presets(backbone_presets, MaxViTBackbone)
timm_loader.register()

__all__ = [
    "MaxViTBackbone",
    "MaxViTImageClassifier",
    "MaxViTImageClassifierPreprocessor",
    "MaxViTImageConverter",
]

"""`MaxViTImageClassifier`: MaxViT's own classification head on a `MaxViTBackbone`."""

import keras
from keras_hub.models import ImageClassifier, Task

from keras_maxvit.hub.maxvit_backbone import MaxViTBackbone
from keras_maxvit.hub.maxvit_image_classifier_preprocessor import (
    MaxViTImageClassifierPreprocessor,
)
from keras_maxvit.layers.stochastic_depth import check_rate
from keras_maxvit.models.validation import check_activation

POOLINGS = ("avg", "max")


def _check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
    return value


@keras.saving.register_keras_serializable(package="keras_maxvit.hub")
class MaxViTImageClassifier(ImageClassifier):
    """MaxViT image classification: a `MaxViTBackbone` and MaxViT's head.

    The head is the official one (timm's `NormMlpClassifierHead`): global
    pooling, LayerNorm (epsilon 1e-5), a tanh pre-logits `Dense`, dropout and
    the classifier `Dense`. Its layers are named as in `keras_maxvit.MaxViT`
    (`head_norm`, `head_pre_logits`, `predictions`), so a checkpoint's head
    loads into it.

    `MaxViTImageClassifier.from_preset(tag)` loads a checkpoint with its
    head and preprocessing; `from_preset(tag, num_classes=n)` keeps the
    pretrained backbone and starts a new head of `n` classes.

    Args:
        backbone: A `MaxViTBackbone`.
        num_classes: Number of classes.
        preprocessor: None, a `MaxViTImageClassifierPreprocessor`, or any
            layer or callable applied to the inputs of `fit`/`predict`.
        head_hidden_size: Width of the tanh pre-logits layer: `"auto"` for
            the backbone's output width (as in every official MaxViT), an
            int, or None for no pre-logits layer. `get_config` records the
            width chosen.
        pooling: `"avg"` (MaxViT's) or `"max"` global pooling.
        activation: Activation of the classifier; None for logits.
        dropout: Dropout rate before the classifier.
        head_dtype: Dtype policy of the head; default the backbone's.

    Example:

    ```python
    import numpy as np
    from keras_maxvit.hub import MaxViTImageClassifier

    classifier = MaxViTImageClassifier.from_preset("maxvit_tiny_tf_224.in1k")
    classifier.predict(np.random.uniform(0, 255, (1, 256, 256, 3)))  # (1, 1000) logits
    fine_tune = MaxViTImageClassifier.from_preset("maxvit_tiny_tf_224.in1k", num_classes=5)
    ```
    """

    backbone_cls = MaxViTBackbone
    preprocessor_cls = MaxViTImageClassifierPreprocessor

    def __init__(
        self,
        backbone,
        num_classes: int,
        preprocessor=None,
        head_hidden_size: int | str | None = "auto",
        pooling: str = "avg",
        activation=None,
        dropout: float = 0.0,
        head_dtype=None,
        **kwargs,
    ):
        num_classes = _check_positive_int("num_classes", num_classes)
        if head_hidden_size == "auto":
            head_hidden_size = int(backbone.output.shape[-1])
        elif head_hidden_size is not None:
            _check_positive_int("head_hidden_size", head_hidden_size)
        if pooling not in POOLINGS:
            raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
        check_rate("dropout", dropout)
        check_activation(activation)
        head_dtype_arg = head_dtype
        if head_dtype is not None and not isinstance(head_dtype, str):
            head_dtype_arg = keras.dtype_policies.serialize(keras.dtype_policies.get(head_dtype))
        head_dtype = head_dtype or backbone.dtype_policy
        # Read by the default `compile()` in `Task.__init__` (softmax or logits).
        self.activation = activation

        # A converter resizes to the backbone's input size (also when a preset is
        # loaded at another `image_shape=`: its saved converter has the old size).
        converter = getattr(preprocessor, "image_converter", None)
        size = tuple(backbone.input.shape[1:3])
        if converter is not None and converter.image_size is not None and None not in size:
            converter.image_size = size

        # === Layers ===
        self.backbone = backbone
        self.preprocessor = preprocessor
        pooler = keras.layers.GlobalAveragePooling2D if pooling == "avg" else None
        pooler = pooler or keras.layers.GlobalMaxPooling2D
        self.pooler = pooler(dtype=head_dtype, name="head_pool")
        self.head_norm = keras.layers.LayerNormalization(
            epsilon=1e-5, dtype=head_dtype, name="head_norm"
        )
        self.pre_logits = None
        if head_hidden_size is not None:
            self.pre_logits = keras.layers.Dense(
                head_hidden_size, activation="tanh", dtype=head_dtype, name="head_pre_logits"
            )
        self.output_dropout = keras.layers.Dropout(dropout, dtype=head_dtype, name="output_dropout")
        self.output_dense = keras.layers.Dense(
            num_classes, activation=activation, dtype=head_dtype, name="predictions"
        )

        # === Functional model ===
        inputs = backbone.input
        x = self.head_norm(self.pooler(backbone(inputs)))
        if self.pre_logits is not None:
            x = self.pre_logits(x)
        outputs = self.output_dense(self.output_dropout(x))
        # keras-hub's ImageClassifier builds its own head: build from Task instead.
        Task.__init__(self, inputs=inputs, outputs=outputs, **kwargs)

        # === Config ===
        self.num_classes = num_classes
        self.head_hidden_size = head_hidden_size
        self.pooling = pooling
        self.dropout = dropout
        self.head_dtype = head_dtype_arg

    def get_config(self) -> dict:
        config = Task.get_config(self)
        config.update(
            {
                "num_classes": self.num_classes,
                "head_hidden_size": self.head_hidden_size,
                "pooling": self.pooling,
                "activation": self.activation
                if self.activation is None or isinstance(self.activation, str)
                else keras.activations.serialize(self.activation),
                "dropout": self.dropout,
                "head_dtype": self.head_dtype,
            }
        )
        return config

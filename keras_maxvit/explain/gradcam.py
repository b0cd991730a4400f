"""Grad-CAM (Selvaraju et al., 2017) and HiResCAM (Draelos and Carin, 2020)
for keras_maxvit classifiers, on every backend."""

from dataclasses import dataclass

import numpy as np
from keras import ops

from keras_maxvit.explain import _graph


@dataclass
class GradCAM:
    """Grad-CAM of a batch of images.

    Attributes:
        heatmaps: `(batch, height, width)` at image resolution, each scaled to
            `[0, 1]` by its maximum (all zeros where nothing contributes).
        cams: `(batch, h, w)` at the layer's resolution, unscaled. Grad-CAM:
            `ReLU(sum_k alpha_k A_k)` with `alpha_k` the spatial mean of the
            class score's gradient `G_k` with respect to channel `k` of `A`;
            HiResCAM: `ReLU(sum_k G_k * A_k)`, the gradient taken at each
            position instead of its mean.
        channel_weights: `(batch, channels)` the `alpha_k`.
        method: `"gradcam"` or `"hirescam"`.
        classes: `(batch,)` the explained class of each image.
        scores: `(batch,)` that class's score (the logit, before the
            classifier's activation).
        layer: Name of the layer whose output `A` is.
    """

    heatmaps: np.ndarray
    cams: np.ndarray
    channel_weights: np.ndarray
    classes: np.ndarray
    scores: np.ndarray
    layer: str
    method: str = "gradcam"


METHODS = ("gradcam", "hirescam")


def resize_bilinear(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """`(B, h, w)` -> `(B, height, width)`, bilinear with half-pixel centres.

    Each input pixel is a cell of `height / h` x `width / w` output pixels,
    as `keras.ops.image.resize(..., "bilinear")` without antialiasing.
    """

    def axis(size, target):
        position = np.clip((np.arange(target) + 0.5) * size / target - 0.5, 0, size - 1)
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, size - 1)
        return low, high, (position - low).astype("float32")

    (top, bottom, fy), (left, right, fx) = axis(maps.shape[1], height), axis(maps.shape[2], width)
    rows = maps[:, top] * (1 - fy)[None, :, None] + maps[:, bottom] * fy[None, :, None]
    return rows[:, :, left] * (1 - fx) + rows[:, :, right] * fx


def _class_indices(class_index, batch: int, classes: int):
    """None, or `class_index` as one checked int64 class per image."""
    if class_index is None:
        return None
    values = np.asarray(class_index)
    if values.ndim == 0:
        values = np.full((batch,), values)
    if (
        values.shape != (batch,)
        or not np.issubdtype(values.dtype, np.integer)
        or values.min() < 0
        or values.max() >= classes
    ):
        raise ValueError(
            f"`class_index` must be None, a class in [0, {classes}) or one such class per "
            f"image ({batch} images). Received: class_index={class_index!r}"
        )
    return values.astype("int64")


def grad_cam(
    model, images, class_index=None, layer=None, batch_size: int = 16, method: str = "gradcam"
) -> GradCAM:
    """Grad-CAM heat maps of a keras_maxvit classifier.

    Args:
        model: A functional keras_maxvit classifier (`include_top=True`),
            also one loaded from a `.keras` file; any input size it accepts.
        images: `(batch, height, width, 3)` (or one `(height, width, 3)`
            image), as the model takes them (raw RGB in `[0, 255]` with the
            built-in preprocessing).
        class_index: The class to explain: None (each image's top class), an
            int, or one int per image.
        layer: Whose output the map is of: a layer name (e.g.
            `"stage2_block4_grid_attn"`, a block's output) or a pyramid level
            `"P1"`..`"P5"`. Default: the last block of the last stage.
        batch_size: Images per forward and backward pass.
        method: `"gradcam"` (the channel weights are the spatial mean of the
            gradient) or `"hirescam"` (gradient times activation at each
            position, summed over channels: where the score's first-order
            change comes from). They agree where the gradient is the same at
            every position, as at the last stage, which feeds the classifier
            through a global average; at earlier stages, whose gradient varies
            over the map, HiResCAM keeps where it is large.

    Returns:
        A `GradCAM`.
    """
    _graph.check_model(model)
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}. Received: method={method!r}")
    images = _graph.check_images(model, images)
    final = _graph.output_layer(model)
    tensor = _graph.feature_tensor(model, layer)
    features, head = _graph.split(model, tensor)
    name = tensor._keras_history.operation.name
    classes_out = model.outputs[0].shape[-1]
    requested = _class_indices(class_index, len(images), classes_out)
    forward = _graph.compiled(lambda x: features(x, training=False), features.variables)
    top_class = _graph.compiled(lambda x: ops.argmax(head(x, training=False), -1), head.variables)

    def score(x, one_hot):
        return ops.sum(ops.cast(head(x, training=False), "float32") * one_hot, axis=-1)

    cams, alphas, chosen, scores = [], [], [], []
    with _graph.linear_output(final):
        # Inside: the classifier gives logits (compiled here, never cached on the model).
        score_and_gradient = _graph.value_and_gradient(score, head.variables)
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size]
            activations = forward(batch)
            if requested is None:
                index = ops.convert_to_numpy(top_class(activations)).astype("int64")
            else:
                index = requested[start : start + len(batch)]
            one_hot = ops.convert_to_tensor(np.eye(classes_out, dtype="float32")[index])
            value, gradient = score_and_gradient(activations, one_hot)
            gradient = ops.convert_to_numpy(ops.cast(gradient, "float32"))
            activations = ops.convert_to_numpy(ops.cast(activations, "float32"))
            alpha = gradient.mean(axis=(1, 2))  # (B, channels)
            alphas.append(alpha)
            if method == "gradcam":
                cam = np.einsum("bhwc,bc->bhw", activations, alpha)
            else:
                cam = np.einsum("bhwc,bhwc->bhw", activations, gradient)
            cams.append(np.maximum(cam, 0.0))
            chosen.append(index)
            scores.append(ops.convert_to_numpy(value))
    cams = np.concatenate(cams)
    heatmaps = resize_bilinear(cams, images.shape[1], images.shape[2])
    peak = heatmaps.max(axis=(1, 2), keepdims=True)
    heatmaps = np.where(peak > 0, heatmaps / np.where(peak > 0, peak, 1.0), 0.0)
    return GradCAM(
        heatmaps=heatmaps.astype("float32"),
        cams=cams.astype("float32"),
        channel_weights=np.concatenate(alphas).astype("float32"),
        classes=np.concatenate(chosen).astype("int64"),
        scores=np.concatenate(scores).astype("float32"),
        layer=name,
        method=method,
    )

"""See what a MaxViT looks at: Grad-CAM, and its block and grid attention maps.

`grad_cam` gives a class heat map per image from any stage's output;
`attention_maps` what chosen query pixels attend to in one block (local
window) or grid (dilated, global) attention layer, mapped back to the image;
`save_figure` draws both over the image as a PNG. `keras-maxvit explain`
runs them from the command line.
"""

from keras_maxvit.explain.attention import (
    AttentionMaps,
    attention_layer_names,
    attention_maps,
    attention_weights,
)
from keras_maxvit.explain.figures import Overlay, save_figure
from keras_maxvit.explain.gradcam import GradCAM, grad_cam

__all__ = [
    "AttentionMaps",
    "GradCAM",
    "Overlay",
    "attention_layer_names",
    "attention_maps",
    "attention_weights",
    "grad_cam",
    "save_figure",
]

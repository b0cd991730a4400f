"""Heat maps and attention maps drawn over the image, saved as PNG (matplotlib)."""

import os
from dataclasses import dataclass

import numpy as np


@dataclass
class Overlay:
    """One panel: a map over the image.

    Attributes:
        values: `(height, width)` map at image resolution.
        title: Panel title.
        legend: The colour bar's label (what the colours mean).
        marker: Optional `(y, x)` pixel to mark (e.g. the attention query).
        normalize: If True the colours span `[0, max]` of `values`; else
            `[0, 1]`.
    """

    values: np.ndarray
    title: str
    legend: str
    marker: tuple | None = None
    normalize: bool = False


def save_figure(path, image, overlays, title: str | None = None, alpha: float = 0.5) -> str:
    """Saves the image beside each overlay drawn on it, with a colour bar each.

    Args:
        path: The PNG file to write (its folder must exist).
        image: `(height, width, 3)` RGB in `[0, 255]`.
        overlays: A list of `Overlay`s.
        title: Optional title above the panels.
        alpha: Opacity of the maps over the image.

    Returns:
        `path`.
    """
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "Drawing explanations needs matplotlib: pip install 'keras-maxvit[explain]'"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image = np.clip(np.asarray(image, dtype="float32"), 0, 255).astype("uint8")
    panels = len(overlays) + 1
    figure, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 4.0), squeeze=False)
    axes = axes[0]
    axes[0].imshow(image)
    axes[0].set_title("image", fontsize=10)
    for axis, overlay in zip(axes[1:], overlays, strict=True):
        values = np.asarray(overlay.values, dtype="float32")
        top = float(values.max()) if overlay.normalize and values.max() > 0 else 1.0
        axis.imshow(image)
        shown = axis.imshow(values, cmap="jet", alpha=alpha, vmin=0.0, vmax=top)
        if overlay.marker is not None:
            y, x = overlay.marker
            axis.plot(x, y, marker="*", color="white", markersize=14, markeredgecolor="black")
        axis.set_title(overlay.title, fontsize=9)
        bar = figure.colorbar(shown, ax=axis, fraction=0.046, pad=0.03)
        bar.set_label(overlay.legend, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    for axis in axes:
        axis.set_xticks([])
        axis.set_yticks([])
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    directory = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(directory, f".{os.path.basename(path)}.partial.png")
    try:
        figure.savefig(temporary, dpi=110)
        os.replace(temporary, path)
    finally:
        plt.close(figure)
        if os.path.exists(temporary):
            os.remove(temporary)
    return path

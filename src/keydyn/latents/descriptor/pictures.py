"""A picture of the chosen reference keypoints on the reference image (like the paper's figure 3)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from keydyn.latents.descriptor.references import References
from keydyn.plots import pyplot, save_figure


def write_reference_picture(path: Path, rgb: np.ndarray, references: References, title: str) -> Path:
    """Save the (H, W, 3) uint8 reference image with each reference pixel marked and numbered, as a PNG.

    Numbers follow the order of `references` (best first for SDS); colours are those of matplotlib's tab10.
    """
    plt = pyplot()
    height, width = rgb.shape[:2]
    figure, axes = plt.subplots(figsize=(6.0, 6.0 * height / width + 0.4), dpi=120)
    axes.imshow(rgb)
    uv = references.uv.numpy()
    colours = plt.get_cmap("tab10")(np.arange(len(uv)) % 10)
    axes.scatter(uv[:, 0], uv[:, 1], s=30, c=colours, edgecolors="white", linewidths=0.8)
    if len(uv) <= 10:
        for index, (u, v) in enumerate(uv):
            axes.annotate(str(index), (u, v), xytext=(4, -4), textcoords="offset points", color="white", fontsize=9)
    axes.set_title(title, fontsize=9)
    axes.axis("off")
    figure.tight_layout()
    return save_figure(figure, path)

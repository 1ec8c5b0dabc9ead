"""Pictures of a descriptor network: descriptor images as colours, and a heatmap example (paper figure 2)."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from keydyn.files import write_atomic
from keydyn.plots import pyplot, save_figure
from keydyn.vision.keypoints import Keypoints


def descriptor_colours(descriptors: torch.Tensor) -> torch.Tensor:
    """Descriptor images as RGB: their first 3 principal components, one basis shared by all images.

    Each component is scaled so that its 1st to 99th percentile over all pixels spans [0, 1]; with D < 3 the
    missing channels are 0.

    Args:
        descriptors: (B, D, H, W) descriptor images.

    Returns:
        (B, H, W, 3) uint8 images.
    """
    batch, dim, height, width = descriptors.shape
    pixels = descriptors.detach().double().permute(0, 2, 3, 1).reshape(-1, dim).cpu()
    centred = pixels - pixels.mean(dim=0)
    _, _, basis = torch.linalg.svd(centred, full_matrices=False)
    components = torch.zeros(len(pixels), 3, dtype=torch.float64)
    components[:, : min(dim, 3)] = centred @ basis[:3].T
    low, high = torch.quantile(components, 0.01, dim=0), torch.quantile(components, 0.99, dim=0)
    scaled = ((components - low) / (high - low).clamp_min(1e-12)).clamp(0.0, 1.0)
    return (scaled * 255).round().to(torch.uint8).reshape(batch, height, width, 3)


def write_descriptor_picture(path: Path, rgb: torch.Tensor, descriptors: torch.Tensor) -> Path:
    """Save the images (top row) above their descriptor colours (bottom row) as a PNG, atomically.

    Args:
        path: the .png to write.
        rgb: (B, H, W, 3) uint8 images.
        descriptors: (B, D, H, W) their descriptor images.
    """
    top = torch.cat(list(rgb.cpu()), dim=1)
    bottom = torch.cat(list(descriptor_colours(descriptors)), dim=1)
    picture = torch.cat([top, bottom], dim=0).numpy()
    write_atomic(path, lambda p: iio.imwrite(p, picture, extension=".png"))
    return path


def write_heatmap_picture(
    path: Path,
    rgb_a: torch.Tensor,
    rgb_b: torch.Tensor,
    uv_a: torch.Tensor,
    uv_b: torch.Tensor,
    located: Keypoints,
) -> Path:
    """Save a figure like the paper's figure 2 as a PNG, atomically: a reference pixel in view A, its
    heatmap in view B with the true match and the located keypoint, and the heatmap alone.

    Args:
        path: the .png to write.
        rgb_a, rgb_b: (H, W, 3) uint8 images of views A and B.
        uv_a: (2,) the reference pixel (u, v) in A.
        uv_b: (2,) its true match in B, pixels.
        located: the reference descriptor located in B (one frame, K = 1), with its heatmap.
    """
    plt = pyplot()
    heatmap = located.heatmaps[0].cpu().numpy()
    found, truth = located.uv[0].cpu().numpy(), uv_b.cpu().numpy()
    error = float(np.linalg.norm(found - truth))
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].imshow(rgb_a.cpu().numpy())
    axes[0].plot(*uv_a.cpu().numpy(), "o", markersize=9, markerfacecolor="none", markeredgecolor="lime", mew=2)
    axes[0].set_title("view A: reference pixel")
    axes[1].imshow(rgb_b.cpu().numpy())
    axes[1].imshow(heatmap, cmap="inferno", alpha=0.55, vmin=0.0, vmax=1.0)
    axes[1].plot(*truth, "+", markersize=14, color="lime", mew=2, label="true match")
    axes[1].plot(*found, "x", markersize=10, color="cyan", mew=2, label="located")
    axes[1].legend(loc="lower right", fontsize=8)
    axes[1].set_title(f"view B: confidence {float(located.confidence[0]):.2f}, error {error:.1f} px")
    shown = axes[2].imshow(heatmap, cmap="inferno", vmin=0.0, vmax=1.0)
    axes[2].set_title("heatmap (eq. 7)")
    figure.colorbar(shown, ax=axes[2], fraction=0.046)
    for axis in axes:
        axis.set_axis_off()
    figure.tight_layout()
    return save_figure(figure, path, dpi=110)

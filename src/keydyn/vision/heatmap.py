"""Descriptor heatmaps and their spatial expectations (paper appendix 6, eq. 7, 8, 10, 11).

For a reference descriptor d and a descriptor image I_D (D, H, W), the unnormalised heatmap is
H(p) = exp(-||I_D(p) - d||^2 / eta^2) (eq. 7), its normalised version is a softmax over the pixels (eq. 8),
and the spatial expectations are the softmax-weighted mean pixel (eq. 10) and mean depth (eq. 11). Everything
works on logits -||I_D(p) - d||^2 / eta^2 and is computed in float32 (in bfloat16 the logits are too coarse).

The default eta = 5 is the original code's `sigma_descriptor_heatmap` (descriptor units).
"""

from __future__ import annotations

import torch

from keydyn.vision.geometry import pixel_grid

DESCRIPTOR_ETA = 5.0  # the original code's descriptor kernel width (sigma_descriptor_heatmap), descriptor units


def descriptor_logits(descriptors: torch.Tensor, references: torch.Tensor, eta: float = DESCRIPTOR_ETA) -> torch.Tensor:
    """Heatmap logits -||I_D(p) - d_k||^2 / eta^2 for K reference descriptors in B descriptor images.

    Uses |f|^2 - 2 f.d + |d|^2 (a matrix product) rather than broadcasting the difference.

    Args:
        descriptors: (B, D, H, W) descriptor images.
        references: (B, K, D) per-image reference descriptors, or (K, D) shared by all images.
        eta: kernel width, descriptor units.

    Returns:
        (B, K, H, W) float32 logits (<= 0).
    """
    descriptors = descriptors.float()
    references = references.float()
    if references.dim() == 2:
        references = references.unsqueeze(0).expand(descriptors.shape[0], -1, -1)
    cross = torch.einsum("bkd,bdhw->bkhw", references, descriptors)
    squared = descriptors.pow(2).sum(dim=1, keepdim=True) - 2.0 * cross + references.pow(2).sum(-1)[..., None, None]
    return -squared.clamp_min(0.0) / eta**2


def spatial_expectation(logits: torch.Tensor) -> torch.Tensor:
    """Expected pixel under the normalised heatmap (eq. 8, 10).

    Args:
        logits: (..., H, W) heatmap logits (log of the unnormalised heatmap, up to a constant).

    Returns:
        (..., 2) expected pixel coordinates (u, v).
    """
    height, width = logits.shape[-2:]
    weights = torch.softmax(logits.flatten(-2), dim=-1)  # (..., H W)
    grid = pixel_grid(height, width, logits.device).reshape(-1, 2)  # (H W, 2)
    return weights @ grid


def depth_expectation(logits: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Expected depth under the normalised heatmap, over pixels with valid depth only (eq. 11).

    The heatmap is renormalised over the pixels whose depth is finite and positive.

    Args:
        logits: (B, K, H, W) heatmap logits.
        depth: (B, H, W) z-depth images, metres (0 or non-finite where unknown).

    Returns:
        (B, K) expected depth, metres; NaN for an image without any valid depth.
    """
    valid = torch.isfinite(depth) & (depth > 0)
    masked = logits.masked_fill(~valid.unsqueeze(1), float("-inf")).flatten(-2)
    weights = torch.softmax(masked, dim=-1)  # (B, K, H W)
    values = torch.where(valid, depth, torch.zeros_like(depth)).flatten(-2).unsqueeze(-1).float()  # (B, H W, 1)
    return (weights @ values).squeeze(-1)

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


def _flat_features(descriptors: torch.Tensor, references: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, D, H, W) descriptors and (B, K, D), (1, K, D) or (K, D) references -> float32 (B, D, H W) features
    and (B, K, D) references."""
    references = references.float()
    if references.dim() == 2:
        references = references.unsqueeze(0)
    return descriptors.float().flatten(2), references.expand(descriptors.shape[0], -1, -1)


def descriptor_logits(descriptors: torch.Tensor, references: torch.Tensor, eta: float = DESCRIPTOR_ETA) -> torch.Tensor:
    """Heatmap logits -||I_D(p) - d_k||^2 / eta^2 for K reference descriptors in B descriptor images.

    One batched matrix product of [2 d_k, -|d_k|^2, -1] / eta^2 with [I_D(p), 1, |I_D(p)|^2]: the whole
    (B, K, H, W) result is written once (training spends most of its loss time on tensors of this size).

    Args:
        descriptors: (B, D, H, W) descriptor images.
        references: (B, K, D) per-image reference descriptors, or (K, D) or (1, K, D) shared by all images.
        eta: kernel width, descriptor units.

    Returns:
        (B, K, H, W) float32 logits (<= 0).
    """
    batch, _, height, width = descriptors.shape
    features, references = _flat_features(descriptors, references)
    scale = 1.0 / eta**2
    features = torch.cat([features, torch.ones_like(features[:, :1]), features.pow(2).sum(1, keepdim=True)], dim=1)
    weights = torch.cat(
        [2.0 * references, -references.pow(2).sum(-1, keepdim=True), -torch.ones_like(references[..., :1])], dim=-1
    )
    logits = torch.bmm(scale * weights, features)  # (B, K, H W)
    return logits.clamp_max(0.0).view(batch, -1, height, width)


def expectations_from_logits(
    logits: torch.Tensor, depth: torch.Tensor, min_support: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected pixel (eq. 10) and expected valid depth (eq. 11) from one softmax of the logits.

    One softmax and one matrix product against [u, v, valid * depth, valid] for all four sums; renormalising
    over the valid pixels afterwards is the masked softmax of eq. 11.

    Args:
        logits: (B, K, H, W) heatmap logits.
        depth: (B, H, W) z-depth, metres (0 or non-finite where unknown).
        min_support: the share of a heatmap's weight that must lie on valid depth for it to have a depth.

    Returns:
        uv: (B, K, 2) expected pixels (u, v); z: (B, K) expected depth over valid pixels, metres (NaN when an
        image has no valid depth, or less than `min_support` of the heatmap's weight lies on valid depth).
    """
    batch, _, height, width = logits.shape
    weights = torch.softmax(logits.flatten(-2), dim=-1)  # (B, K, H W)
    valid = (torch.isfinite(depth) & (depth > 0)).flatten(1).float()  # (B, H W)
    grid = pixel_grid(height, width, logits.device).reshape(1, -1, 2).expand(batch, -1, -1)
    values = torch.where(valid > 0, depth.flatten(1).float(), torch.zeros_like(valid))
    basis = torch.cat([grid, (values * valid).unsqueeze(-1), valid.unsqueeze(-1)], dim=-1)  # (B, H W, 4)
    sums = weights @ basis  # (B, K, 4)
    support = sums[..., 3]  # the share of each heatmap's weight on valid depth
    # No weight on valid depth at all: NaN, through a division that keeps the gradient finite (0 / 0 would make it
    # NaN even where a loss masks the value out).
    depth_mean = sums[..., 2] / support.clamp_min(torch.finfo(support.dtype).tiny)
    return sums[..., :2], depth_mean.masked_fill((support < min_support) | (support == 0), float("nan"))


def heatmap_expectations(
    descriptors: torch.Tensor,
    references: torch.Tensor,
    depth: torch.Tensor,
    eta: float = DESCRIPTOR_ETA,
    min_support: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Expected pixel (eq. 10) and expected valid depth (eq. 11) of K references, for inference.

    The logits come from one matrix product without the |d_k|^2 term, which is constant per heatmap and
    cancels in the softmax (and without the clamp of `descriptor_logits`): the same expectations, faster.

    Args:
        descriptors: (B, D, H, W) descriptor images.
        references: (B, K, D) or (K, D) reference descriptors.
        depth: (B, H, W) z-depth, metres (0 or non-finite where unknown).
        eta: kernel width, descriptor units.
        min_support: the share of a heatmap's weight that must lie on valid depth for it to have a depth.

    Returns:
        uv: (B, K, 2) expected pixels (u, v); z: (B, K) expected depth over valid pixels, metres (NaN when an
        image has no valid depth, or less than `min_support` of the heatmap's weight lies on valid depth).
    """
    batch, _, height, width = descriptors.shape
    features, references = _flat_features(descriptors, references)
    scale = 1.0 / eta**2
    logits = torch.baddbmm(-scale * features.pow(2).sum(1, keepdim=True), references, features, alpha=2.0 * scale)
    return expectations_from_logits(logits.view(batch, -1, height, width), depth, min_support)

"""The descriptor training losses of the paper (appendix 6.2, eq. 6-14), batched over image pairs.

For each match (p_a in image A, true location p* in image B) the descriptor d* = I_A(p_a) induces a heatmap
over image B (eq. 7). The losses are

- heatmap: MSE between the unnormalised predicted heatmap and a kernel around p* (eq. 6, 9);
- spatial pixel: L1 distance between p* and the spatial expectation (eq. 10, 12);
- spatial depth: L1 distance between the true depth and the depth expectation over valid depth (eq. 11, 13);
- total: w_heatmap L_heatmap + w_spatial (L_pixel + L_depth) (eq. 14) + w_hidden L_hidden.

L_hidden is not in the paper: for each point of A that B cannot see (`MatchBatch.hidden_uv_a`), the peak of
its unnormalised heatmap over B, i.e. the best match B offers, which should be none. The heatmap loss pushes
a descriptor away only from pixels of the same image B, so faces never seen together (opposite sides of a
box) are free to share descriptors, and a point on a hidden face is then located, confidently, on the visible
one. The peak's gradient reaches only the closest pixel (hard-negative mining, as in Dense Object Nets'
non-match loss) and vanishes once the descriptors are a few eta apart.

Constants and where they come from (see `DescriptorLossConfig`): the target kernel width sigma is 0.00625 of
the image diagonal (the original code; 5 px at 640x480), the descriptor kernel width eta is 5 (the original
code's value at 640x480, where it used the same number for both), all weights are 1 (original code). The
pixel loss is divided by the image diagonal (original code; the paper's eq. 12 is in raw pixels), and the
depth loss is in metres (original code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from keydyn.vision.correspondence import MatchBatch
from keydyn.vision.geometry import bilinear_sample
from keydyn.vision.heatmap import DESCRIPTOR_ETA, descriptor_logits, expectations_from_logits


@dataclass(frozen=True)
class DescriptorLossConfig:
    """Constants of the descriptor losses.

    Attributes:
        sigma_fraction: width of the target heatmap kernel as a fraction of the image diagonal (original code
            0.00625: 5 px at 640x480, 2.5 px at 320x240).
        eta: width of the descriptor kernel of the predicted heatmap (eq. 7), descriptor units (original: 5).
        target_distance: "squared" is the paper's Gaussian exp(-|p - p*|^2 / sigma^2) (eq. 6); "euclidean"
            is the original code's exp(-|p - p*| / sigma^2). Default "squared": it is the stated method and
            the same kernel as the predicted heatmap; the original's form decays over sigma^2 pixels (25 px
            at 640x480), a much wider target.
        pixel_normalization: "diagonal" divides the pixel loss by the image diagonal (original code, so the
            three terms have comparable size with unit weights); "none" keeps raw pixels (paper eq. 12).
        heatmap_weight: w_heatmap (eq. 14; original 1).
        spatial_weight: w_spatial, on the pixel and depth terms (eq. 14; original 1).
        hidden_weight: w_hidden, on the hidden-point loss (not in the paper; 0 leaves it out).
    """

    sigma_fraction: float = 0.00625
    eta: float = DESCRIPTOR_ETA
    target_distance: Literal["squared", "euclidean"] = "squared"
    pixel_normalization: Literal["diagonal", "none"] = "diagonal"
    heatmap_weight: float = 1.0
    spatial_weight: float = 1.0
    hidden_weight: float = 0.0

    def sigma(self, height: int, width: int) -> float:
        """Target kernel width in pixels for an H x W image."""
        return self.sigma_fraction * math.hypot(height, width)


@dataclass(frozen=True)
class DescriptorLosses:
    """Scalar losses of a batch (each a 0-dim tensor; `total` carries the gradient of the others).

    Attributes:
        total: eq. 14.
        heatmap: eq. 9, mean over matches and pixels.
        pixel: eq. 12, mean over matches (divided by the image diagonal unless configured otherwise).
        depth: eq. 13, mean over matches, metres.
        hidden: mean over the hidden points of their heatmap's peak in B, in [0, 1] (0 when there are none).
        pixel_error: mean Euclidean distance between p* and the spatial expectation, pixels (a metric).
    """

    total: torch.Tensor
    heatmap: torch.Tensor
    pixel: torch.Tensor
    depth: torch.Tensor
    hidden: torch.Tensor
    pixel_error: torch.Tensor


def target_heatmap(
    uv: torch.Tensor, height: int, width: int, sigma: float, distance: Literal["squared", "euclidean"] = "squared"
) -> torch.Tensor:
    """Target heatmaps around true matches (eq. 6).

    Args:
        uv: (..., 2) true match locations (u, v), pixels (subpixel allowed).
        height, width: image size.
        sigma: kernel width, pixels.
        distance: "squared" exp(-|p - p*|^2 / sigma^2) (paper) or "euclidean" exp(-|p - p*| / sigma^2) (original).

    Returns:
        (..., H, W) float32 heatmaps with values in (0, 1].
    """
    if distance not in ("squared", "euclidean"):
        raise ValueError(f"distance {distance!r}: use 'squared' or 'euclidean'")
    uv = uv.float()
    du2 = (torch.arange(width, dtype=torch.float32, device=uv.device) - uv[..., :1]).pow(2)  # (..., W)
    dv2 = (torch.arange(height, dtype=torch.float32, device=uv.device) - uv[..., 1:]).pow(2)  # (..., H)
    if distance == "squared":  # separable: exp(-du^2 / s^2) exp(-dv^2 / s^2), one product at full size
        return torch.exp(-dv2 / sigma**2).unsqueeze(-1) * torch.exp(-du2 / sigma**2).unsqueeze(-2)
    return torch.exp(-(dv2.unsqueeze(-1) + du2.unsqueeze(-2)).sqrt() / sigma**2)


def _masked_mean(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean of (B, N) values over the valid entries (0 when there are none)."""
    weights = valid.to(values.dtype)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def descriptor_losses(
    descriptors_a: torch.Tensor,
    descriptors_b: torch.Tensor,
    depth_b: torch.Tensor,
    matches: MatchBatch,
    config: DescriptorLossConfig | None = None,
) -> DescriptorLosses:
    """The paper's losses for B image pairs.

    Args:
        descriptors_a: (B, D, H, W) descriptor images of the A images.
        descriptors_b: (B, D, H, W) descriptor images of the B images.
        depth_b: (B, H, W) depth images of B, metres (for eq. 11).
        matches: N (padded) matches per pair; uv_a at A's pixel centres, uv_b the true locations in B.
        config: constants (defaults: the original code's, see `DescriptorLossConfig`).

    Returns:
        The losses, means over the valid matches of the whole batch.
    """
    config = config or DescriptorLossConfig()
    height, width = descriptors_b.shape[-2:]
    references = bilinear_sample(descriptors_a.float(), matches.uv_a)  # (B, N, D)
    logits = descriptor_logits(descriptors_b, references, config.eta)  # (B, N, H, W)
    hidden = torch.zeros((), device=logits.device)
    if config.hidden_weight:
        negatives = bilinear_sample(descriptors_a.float(), matches.hidden_uv_a)  # (B, M, D)
        peaks = descriptor_logits(descriptors_b, negatives, config.eta).flatten(-2).amax(-1).exp()  # (B, M)
        hidden = _masked_mean(peaks, matches.hidden_valid)
    target = target_heatmap(matches.uv_b, height, width, config.sigma(height, width), config.target_distance)
    squared_error = torch.linalg.vector_norm(logits.exp() - target, dim=(-2, -1)).pow(2) / (height * width)
    heatmap = _masked_mean(squared_error, matches.valid)
    expected_uv, expected_depth = expectations_from_logits(logits, depth_b)  # (B, N, 2), (B, N)
    difference = expected_uv - matches.uv_b
    scale = math.hypot(height, width) if config.pixel_normalization == "diagonal" else 1.0
    pixel = _masked_mean(difference.abs().sum(-1) / scale, matches.valid)
    depth = _masked_mean((expected_depth - matches.depth_b).abs().nan_to_num(0.0), matches.valid)
    total = config.heatmap_weight * heatmap + config.spatial_weight * (pixel + depth) + config.hidden_weight * hidden
    pixel_error = _masked_mean(difference.detach().norm(dim=-1), matches.valid)
    return DescriptorLosses(total, heatmap, pixel, depth, hidden, pixel_error)

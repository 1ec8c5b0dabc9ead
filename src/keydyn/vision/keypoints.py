"""Descriptor keypoints at control time: the correspondence function g_c (paper 3.2, appendix 6.3) and SDS.

Given descriptor images and K reference descriptors, each keypoint is located by the spatial expectation of
its heatmap (eq. 10) in pixels, by the depth expectation over valid depth (eq. 11) in depth, unprojected to
the world with the camera's K and T_world_camera, and scored by the unnormalised heatmap at the expected
pixel (eq. 15). All K keypoints of all B frames are computed at once.

Depth can instead be read from the depth image at the expected pixel (`depth_mode="pixel"`): a heatmap that
straddles the object's edge blends the object's depth with the table's in eq. 11, and its point sinks below
the surface; the pixel's own depth keeps it on the surface.

Depth holes (pixels 0, negative or non-finite, as real sensors give) are left out of eq. 11. A keypoint whose
heatmap puts less than `MIN_DEPTH_SUPPORT` of its weight on valid depth has no depth (NaN, in either mode): its
expectation would come from the heatmap's far tails, e.g. the table around an object that is a hole in the
depth image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from keydyn.vision.correspondence import sample_pixels
from keydyn.vision.geometry import bilinear_sample, transform_points, unproject
from keydyn.vision.heatmap import DESCRIPTOR_ETA, descriptor_logits, heatmap_expectations

DepthMode = Literal["expectation", "pixel"]
DEPTH_MODES = ("expectation", "pixel")
MIN_DEPTH_SUPPORT = 0.01
"""The share of a keypoint's heatmap weight that must lie on valid depth for the keypoint to have a depth."""


@dataclass(frozen=True)
class Keypoints:
    """K keypoints located in B frames (without the B dimension when a single frame was given).

    Attributes:
        uv: (B, K, 2) float32 expected pixel (u, v).
        depth: (B, K) float32 expected z-depth, metres.
        points_camera: (B, K, 3) float32 points in the camera frame, metres.
        points_world: (B, K, 3) float32 points in the world frame, metres.
        confidence: (B, K) float32 in [0, 1], the unnormalised heatmap at the expected pixel (eq. 15).
        heatmaps: (B, K, H, W) float32 unnormalised heatmaps (eq. 7), or None unless asked for.
    """

    uv: torch.Tensor
    depth: torch.Tensor
    points_camera: torch.Tensor
    points_world: torch.Tensor
    confidence: torch.Tensor
    heatmaps: torch.Tensor | None = None


def locate_keypoints(
    descriptors: torch.Tensor,
    references: torch.Tensor,
    depth: torch.Tensor,
    intrinsics: torch.Tensor,
    T_world_camera: torch.Tensor,
    eta: float = DESCRIPTOR_ETA,
    return_heatmaps: bool = False,
    depth_mode: DepthMode = "expectation",
) -> Keypoints:
    """The correspondence function for K reference descriptors in one frame or a batch of B frames.

    Args:
        descriptors: (B, D, H, W) or (D, H, W) descriptor images.
        references: (K, D) reference descriptors (shared by all frames) or (B, K, D).
        depth: (B, H, W) or (H, W) z-depth images, metres (0 or non-finite where unknown).
        intrinsics: (B, 3, 3) or (3, 3) camera K, pixels.
        T_world_camera: (B, 4, 4) or (4, 4) camera poses (OpenCV frame), metres.
        eta: descriptor kernel width (eq. 7); use the value the network was trained with.
        return_heatmaps: also return the (B, K, H, W) unnormalised heatmaps.
        depth_mode: "expectation", the heatmap-weighted valid depth (eq. 11, paper); "pixel", the depth at the
            nearest pixel to the expected one, or the expectation where that pixel has no valid depth.

    Returns:
        `Keypoints` with a leading B dimension, or without it when `descriptors` was (D, H, W). Depths and
        points are NaN for keypoints with less than `MIN_DEPTH_SUPPORT` of their heatmap on valid depth (all of
        them in a frame without any valid depth).
    """
    single = descriptors.dim() == 3
    if single:
        descriptors, depth = descriptors.unsqueeze(0), depth.unsqueeze(0)
    if intrinsics.dim() == 2:
        intrinsics = intrinsics.unsqueeze(0)
    if T_world_camera.dim() == 2:
        T_world_camera = T_world_camera.unsqueeze(0)
    uv, z = heatmap_expectations(descriptors, references, depth, eta, MIN_DEPTH_SUPPORT)  # (B, K, 2), (B, K)
    if depth_mode == "pixel":
        z = torch.where(torch.isnan(z), z, depth_at_pixels(depth, uv, fallback=z))  # unsupported stays NaN
    elif depth_mode != "expectation":
        raise ValueError(f"depth mode {depth_mode!r}: use one of {', '.join(DEPTH_MODES)}")
    geometry_dtype = torch.promote_types(intrinsics.dtype, torch.float32)
    camera = unproject(uv.to(geometry_dtype), z.to(geometry_dtype), intrinsics.unsqueeze(1).to(geometry_dtype))
    world = transform_points(T_world_camera.unsqueeze(1).to(geometry_dtype), camera)
    sampled = bilinear_sample(descriptors.float(), uv)  # (B, K, D): I_D at the expected pixels
    if references.dim() == 2:
        references = references.unsqueeze(0)
    confidence = torch.exp(-(sampled - references.float()).pow(2).sum(-1) / eta**2)
    located = Keypoints(
        uv=uv,
        depth=z,
        points_camera=camera.float(),
        points_world=world.float(),
        confidence=confidence,
        heatmaps=descriptor_logits(descriptors, references, eta).exp() if return_heatmaps else None,
    )
    if not single:
        return located
    return Keypoints(*(None if value is None else value[0] for value in vars(located).values()))


def depth_at_pixels(depth: torch.Tensor, uv: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
    """The depth image at the nearest pixel to each of K pixels per image.

    Args:
        depth: (B, H, W) z-depth, metres (0 or non-finite where unknown).
        uv: (B, K, 2) pixels (u, v), clamped into the image.
        fallback: (B, K) depth used where the nearest pixel has no valid depth, metres.

    Returns:
        (B, K) float32 depth, metres.
    """
    height, width = depth.shape[-2:]
    u = uv[..., 0].round().long().clamp(0, width - 1)
    v = uv[..., 1].round().long().clamp(0, height - 1)
    read = depth[torch.arange(depth.shape[0], device=depth.device)[:, None], v, u].float()
    return torch.where(torch.isfinite(read) & (read > 0), read, fallback.float())


def sample_reference_descriptors(
    descriptors: torch.Tensor, mask: torch.Tensor, num: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference descriptors at distinct pixels drawn uniformly from the object mask of a reference image.

    Args:
        descriptors: (D, H, W) descriptor image of the reference image.
        mask: (H, W) bool object mask.
        num: K; fewer if the mask has fewer pixels.
        generator: CPU torch generator.

    Returns:
        references: (K, D) float32 descriptors.
        uv: (K, 2) float32 their pixels (u, v) in the reference image.
    """
    uv = sample_pixels(mask, num, generator)
    return descriptors[:, uv[:, 1], uv[:, 0]].T.float(), uv.float()


def confidence_ranking(confidences: torch.Tensor, score: Literal["mean", "original"] = "mean") -> torch.Tensor:
    """(C,) SDS ranking of C candidates (higher first) from their confidences (F, C) (eq. 15) over F frames.

    "mean": the mean confidence (paper); "original": minus the mean of exp(3 (1 - h)^2) (the original code;
    punishes frames where a candidate is lost).
    """
    if score == "mean":
        return confidences.mean(dim=0)
    if score == "original":
        return -torch.exp(3.0 * (1.0 - confidences).pow(2)).mean(dim=0)
    raise ValueError(f"score {score!r}: use 'mean' or 'original'")


def select_spatial_descriptors(
    ranking: torch.Tensor, positions: torch.Tensor, min_distance: float, num_select: int = 5
) -> torch.Tensor:
    """Spatial Descriptor Set (SDS): the best-ranked candidates that are spread apart, chosen greedily.

    Candidates are taken best first, skipping any within `min_distance` of one already chosen. The paper ranks
    by mean confidence (`confidence_ranking`) and uses a 25 px separation at 640x480 (scale it with the
    resolution; the original code used 22 px) with K* = 4 or 5.

    Args:
        ranking: (C,) score of each of C candidates, higher is better (ties: lower index first).
        positions: (C, P) candidate positions in the reference image (P = 2 pixels, or P = 3 metres).
        min_distance: minimum Euclidean distance between chosen candidates, in the units of `positions`.
        num_select: K*.

    Returns:
        (K*,) int64 indices of the chosen candidates, best first.

    Raises:
        ValueError: when fewer than K* candidates are far enough apart.
    """
    order = torch.argsort(ranking, descending=True, stable=True)
    distances = torch.cdist(positions.double(), positions.double())  # (C, C)
    chosen: list[int] = []
    for index in order.tolist():
        if all(distances[index, other] >= min_distance for other in chosen):
            chosen.append(index)
            if len(chosen) == num_select:
                return torch.tensor(chosen, dtype=torch.int64)
    raise ValueError(
        f"only {len(chosen)} of {num_select} candidates are at least {min_distance:g} apart; lower min_distance or "
        "sample more candidates"
    )

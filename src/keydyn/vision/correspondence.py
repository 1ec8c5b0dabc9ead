"""Pixel correspondences between two RGB-D views, from depth, camera geometry and (optionally) object poses.

Two views of the same moment (two cameras) see the same world points: a pixel of view A on the object is
unprojected with A's depth to a world point and projected into view B. Two views of different moments see
the same *object* points when the object's pose is known at both: the world point is carried by
T_world_object(B) T_world_object(A)^-1 before projecting. A match is kept when its projection lies in B's
image, in front of B's camera, where B's depth image agrees with the projected depth (else something hides
the point from B) and, by default, on B's object mask at the nearest pixel. Depth agrees when the nearest
pixel's depth is within the tolerance (the original code's test), or when the depth interpolated bilinearly
at the projection is, away from depth discontinuities: on a slanted surface the nearest pixel's depth is off
by up to half a pixel's depth change, more than the tolerance at low resolution.

Points that land inside B's image but clearly behind what B sees there (by more than `hidden_margin`: another
face of the object, or an occluder) come back too, as hidden points: B must not show them anywhere, so the
descriptor losses can use them as negatives (the two cameras, or two moments, see faces that never share an
image).

All sampling takes a CPU `torch.Generator`, so a seed fixes the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from keydyn.vision.geometry import invert_transform, project, unproject_to_world
from keydyn.vision.views import RGBDView


@dataclass(frozen=True)
class CorrespondenceConfig:
    """How matches are found and checked.

    Attributes:
        depth_tolerance: metres; a projected point whose depth differs from B's depth image by more than
            this is taken as occluded (the original code's margin: 3 mm).
        max_depth_step: metres; the interpolated depth is trusted only where the 4 pixels around the
            projection span at most this much depth: beyond, they straddle a discontinuity (an outline),
            where interpolation mixes the near and far surfaces. Slanted surfaces change depth by about
            1 cm per pixel at 96x72 and 45 degrees, a quarter of that at 320x240.
        require_mask_b: keep only matches that land on B's object mask.
        follow_object: carry points with the object's pose between the two views' moments (both views need
            `T_world_object`); False for two cameras at the same moment.
        hidden_margin: metres; a point projecting inside B's image is hidden when B's depth at its nearest
            pixel is nearer than the point by more than this (1 cm: well beyond the depth changes across a
            pixel at an outline, so points at the edge of a face are neither matched nor hidden).
    """

    depth_tolerance: float = 0.003
    max_depth_step: float = 0.02
    require_mask_b: bool = True
    follow_object: bool = False
    hidden_margin: float = 0.01


@dataclass(frozen=True)
class Correspondences:
    """N matched pixels between view A and view B.

    Attributes:
        uv_a: (N, 2) float32 pixel coordinates (u, v) in A (integer pixel centres).
        uv_b: (N, 2) float32 pixel coordinates in B, subpixel: the exact projection of the point.
        depth_a: (N,) float32 A's z-depth at uv_a, metres.
        depth_b: (N,) float32 z-depth of the point in B's camera frame, metres (agrees with B's depth image
            at uv_b to within the tolerance).
        points_world: (N, 3) float64 the matched points in the world at B's moment, metres.
        hidden_uv_a: (M, 2) float32 pixels of A (integer pixel centres) whose points B cannot see: they
            project inside B's image behind a nearer surface (see `CorrespondenceConfig.hidden_margin`).
    """

    uv_a: torch.Tensor
    uv_b: torch.Tensor
    depth_a: torch.Tensor
    depth_b: torch.Tensor
    points_world: torch.Tensor
    hidden_uv_a: torch.Tensor

    def __len__(self) -> int:
        return int(self.uv_a.shape[0])


@dataclass(frozen=True)
class MatchBatch:
    """Matches of B image pairs padded to N per pair, for batched losses.

    Attributes:
        uv_a: (B, N, 2) float32 pixel coordinates in the A images.
        uv_b: (B, N, 2) float32 pixel coordinates in the B images.
        depth_b: (B, N) float32 true z-depth of each match in its B camera, metres.
        valid: (B, N) bool, False for padding.
        hidden_uv_a: (B, M, 2) float32 pixels of the A images whose points their B images do not show.
        hidden_valid: (B, M) bool, False for padding.
    """

    uv_a: torch.Tensor
    uv_b: torch.Tensor
    depth_b: torch.Tensor
    valid: torch.Tensor
    hidden_uv_a: torch.Tensor
    hidden_valid: torch.Tensor

    def to(self, device: torch.device | str) -> MatchBatch:
        return MatchBatch(*(value.to(device) for value in vars(self).values()))

    def pairs(self, part: slice) -> MatchBatch:
        """The matches of the pairs `part` of the batch."""
        return MatchBatch(*(value[part] for value in vars(self).values()))


def sample_pixels(region: torch.Tensor, num: int, generator: torch.Generator) -> torch.Tensor:
    """Up to `num` distinct pixels drawn uniformly from a boolean region (all of them if it has fewer).

    Args:
        region: (H, W) bool, e.g. an object mask (or its complement for background pixels).
        num: how many pixels to draw.
        generator: CPU torch generator.

    Returns:
        (n, 2) int64 pixel coordinates (u, v), n = min(num, region.sum()), in random order.
    """
    rows, cols = torch.nonzero(region, as_tuple=True)
    order = torch.randperm(rows.numel(), generator=generator)[:num].to(rows.device)
    return torch.stack([cols[order], rows[order]], dim=-1)


def sample_non_matches(
    uv_b: torch.Tensor, region: torch.Tensor, num_per_match: int, min_distance: float, generator: torch.Generator
) -> torch.Tensor:
    """For each match, pixels of a region of B at least `min_distance` pixels from the true match.

    Args:
        uv_b: (N, 2) true match locations in B, pixels.
        region: (H, W) bool where non-matches may lie (B's object mask, its background, or everything).
        num_per_match: M non-matches per match, drawn uniformly with replacement.
        min_distance: pixels.
        generator: CPU torch generator.

    Returns:
        (N, M, 2) int64 pixel coordinates (u, v).
    """
    rows, cols = torch.nonzero(region, as_tuple=True)
    candidates = torch.stack([cols, rows], dim=-1)  # (P, 2)
    allowed = torch.cdist(uv_b.double(), candidates.double()) >= min_distance  # (N, P)
    if not bool(allowed.any(dim=1).all()):
        raise ValueError(f"some match has no pixel of the region at least {min_distance} px away")
    picks = torch.multinomial(allowed.double().cpu(), num_per_match, replacement=True, generator=generator)
    return candidates[picks.to(candidates.device)]


def find_correspondences(
    view_a: RGBDView,
    view_b: RGBDView,
    num_samples: int,
    generator: torch.Generator,
    config: CorrespondenceConfig | None = None,
) -> Correspondences:
    """Matches from object pixels of view A into view B (the geometry is computed in float64).

    Args:
        view_a, view_b: the two views (same size or not).
        num_samples: how many pixels of A's object mask (with valid depth) to try; fewer come back, those
            that pass every check, in the sampled (random) order.
        generator: CPU torch generator for the sampling.
        config: checks and whether to follow the object between moments (default `CorrespondenceConfig()`).
    """
    config = config or CorrespondenceConfig()
    depth_a = view_a.depth
    known_a = view_a.mask & torch.isfinite(depth_a) & (depth_a > 0)
    uv_a = sample_pixels(known_a, num_samples, generator)
    z_a = depth_a[uv_a[:, 1], uv_a[:, 0]].double()
    points = unproject_to_world(uv_a.double(), z_a, view_a.intrinsics.double(), view_a.T_world_camera.double())
    if config.follow_object:
        if view_a.T_world_object is None or view_b.T_world_object is None:
            raise ValueError("follow_object needs T_world_object in both views")
        carry = view_b.T_world_object.double() @ invert_transform(view_a.T_world_object.double())
        points = points @ carry[:3, :3].T + carry[:3, 3]
    uv_b, z_b = project(points, view_b.intrinsics.double(), view_b.T_world_camera.double())
    pixel_b = torch.floor(uv_b + 0.5).long()  # nearest pixel centre
    inside = (
        (z_b > 0)
        & (pixel_b[:, 0] >= 0)
        & (pixel_b[:, 0] < view_b.width)
        & (pixel_b[:, 1] >= 0)
        & (pixel_b[:, 1] < view_b.height)
    )
    u_b = pixel_b[:, 0].clamp(0, view_b.width - 1)
    v_b = pixel_b[:, 1].clamp(0, view_b.height - 1)
    nearest = view_b.depth[v_b, u_b].double()  # NaN or 0 where unknown: fails the comparison
    interpolated, step = _interpolate_depth(view_b.depth, uv_b)
    agrees = ((nearest - z_b).abs() <= config.depth_tolerance) | (
        (step <= config.max_depth_step) & ((interpolated - z_b).abs() <= config.depth_tolerance)
    )
    keep = inside & agrees
    hidden = inside & ~agrees & (nearest > 0) & (nearest < z_b - config.hidden_margin)  # NaN compares False
    if config.require_mask_b:
        keep &= view_b.mask[v_b, u_b]
    return Correspondences(
        uv_a=uv_a[keep].float(),
        uv_b=uv_b[keep].float(),
        depth_a=z_a[keep].float(),
        depth_b=z_b[keep].float(),
        points_world=points[keep],
        hidden_uv_a=uv_a[hidden].float(),
    )


def _interpolate_depth(depth: torch.Tensor, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear depth at (N, 2) subpixel positions of an (H, W) depth image, and the depth step around them.

    Returns:
        depth: (N,) float64 interpolated depth (the 4 pixels around each position, clamped at the border).
        step: (N,) float64 max - min of those 4 depths; inf where any of them is unknown (0 or non-finite).
    """
    height, width = depth.shape
    known = torch.where(torch.isfinite(depth) & (depth > 0), depth, torch.full_like(depth, float("nan"))).double()
    low = torch.floor(uv).long()
    fraction = uv - low
    corners, weights = [], []
    for du, dv in ((0, 0), (1, 0), (0, 1), (1, 1)):
        u = (low[:, 0] + du).clamp(0, width - 1)
        v = (low[:, 1] + dv).clamp(0, height - 1)
        corners.append(known[v, u])
        wu = fraction[:, 0] if du else 1 - fraction[:, 0]
        wv = fraction[:, 1] if dv else 1 - fraction[:, 1]
        weights.append(wu * wv)
    corners_t, weights_t = torch.stack(corners), torch.stack(weights)
    step = corners_t.amax(dim=0) - corners_t.amin(dim=0)
    return (corners_t * weights_t).sum(dim=0), torch.nan_to_num(step, nan=float("inf"))


def stack_correspondences(matches: list[Correspondences], num_matches: int, num_hidden: int = 0) -> MatchBatch:
    """Pad (or cut) each pair's matches to `num_matches`, and its hidden points to `num_hidden`, and stack
    them into a batch of len(matches) pairs."""
    batch = len(matches)
    device = matches[0].uv_a.device if batch else None
    uv_a = torch.zeros((batch, num_matches, 2), device=device)
    uv_b = torch.zeros((batch, num_matches, 2), device=device)
    depth_b = torch.zeros((batch, num_matches), device=device)
    valid = torch.zeros((batch, num_matches), dtype=torch.bool, device=device)
    hidden_uv_a = torch.zeros((batch, num_hidden, 2), device=device)
    hidden_valid = torch.zeros((batch, num_hidden), dtype=torch.bool, device=device)
    for i, pair in enumerate(matches):
        n = min(len(pair), num_matches)
        uv_a[i, :n], uv_b[i, :n], depth_b[i, :n] = pair.uv_a[:n], pair.uv_b[:n], pair.depth_b[:n]
        valid[i, :n] = True
        m = min(len(pair.hidden_uv_a), num_hidden)
        hidden_uv_a[i, :m] = pair.hidden_uv_a[:m]
        hidden_valid[i, :m] = True
    return MatchBatch(uv_a, uv_b, depth_b, valid, hidden_uv_a, hidden_valid)

"""Pinhole camera geometry in torch: pixels + z-depth <-> camera and world points.

Conventions (as `keydyn.sim.render`): pixel (u, v) is column u, row v, and the centre of the pixel in row v,
column u has continuous coordinate (u, v) exactly. Camera frames follow OpenCV (x right, y down, z forward);
depth is z-depth in metres. Intrinsics K are (3, 3) in pixels, poses T_world_camera are (4, 4) in metres.

Every function broadcasts: points (..., 3) go with intrinsics (..., 3, 3) and poses (..., 4, 4) whose leading
dimensions broadcast against the points' (e.g. points (B, K, 3) with poses (B, 1, 4, 4)). Results take the
dtype and device of the inputs after type promotion.
"""

from __future__ import annotations

import torch


def pixel_grid(height: int, width: int, device: torch.device | str | None = None) -> torch.Tensor:
    """(H, W, 2) float32 pixel coordinates (u, v) of every pixel centre."""
    v, u = torch.meshgrid(
        torch.arange(height, dtype=torch.float32, device=device),
        torch.arange(width, dtype=torch.float32, device=device),
        indexing="ij",
    )
    return torch.stack([u, v], dim=-1)


def unproject(uv: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor) -> torch.Tensor:
    """Pixels and z-depths -> points in the camera frame.

    Args:
        uv: (..., 2) pixel coordinates (u, v).
        depth: (...) z-depth, metres.
        intrinsics: (..., 3, 3) K, pixels (leading dimensions broadcast).

    Returns:
        (..., 3) points in the camera frame, metres.
    """
    fx, fy = intrinsics[..., 0, 0], intrinsics[..., 1, 1]
    cx, cy, skew = intrinsics[..., 0, 2], intrinsics[..., 1, 2], intrinsics[..., 0, 1]
    y = (uv[..., 1] - cy) / fy
    x = (uv[..., 0] - cx - skew * y) / fx
    return torch.stack([x * depth, y * depth, depth], dim=-1)


def transform_points(transform: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply rigid transforms (..., 4, 4) to points (..., 3); leading dimensions broadcast."""
    return (transform[..., :3, :3] @ points.unsqueeze(-1)).squeeze(-1) + transform[..., :3, 3]


def invert_transform(transform: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms (..., 4, 4) (rotation transposed, no general matrix inverse)."""
    rotation_t = transform[..., :3, :3].transpose(-1, -2)
    inverse = torch.zeros_like(transform)
    inverse[..., :3, :3] = rotation_t
    inverse[..., :3, 3] = -(rotation_t @ transform[..., :3, 3:4]).squeeze(-1)
    inverse[..., 3, 3] = 1.0
    return inverse


def unproject_to_world(
    uv: torch.Tensor, depth: torch.Tensor, intrinsics: torch.Tensor, T_world_camera: torch.Tensor
) -> torch.Tensor:
    """Pixels (..., 2) and z-depths (...) -> world points (..., 3), metres."""
    return transform_points(T_world_camera, unproject(uv, depth, intrinsics))


def project(
    points_world: torch.Tensor, intrinsics: torch.Tensor, T_world_camera: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """World points -> pixel coordinates and z-depths.

    Args:
        points_world: (..., 3) metres.
        intrinsics: (..., 3, 3) K, pixels.
        T_world_camera: (..., 4, 4) camera pose.

    Returns:
        uv: (..., 2) pixel coordinates; meaningless where the depth is not positive (behind the camera).
        depth: (...) z-depth in the camera frame, metres.
    """
    camera = transform_points(invert_transform(T_world_camera), points_world)
    depth = camera[..., 2]
    pixels = (intrinsics @ camera.unsqueeze(-1)).squeeze(-1)
    return pixels[..., :2] / depth.unsqueeze(-1), depth


def quaternion_to_matrix(quaternion: torch.Tensor) -> torch.Tensor:
    """Unit quaternions (..., 4), (w, x, y, z) as in the dataset -> rotation matrices (..., 3, 3)."""
    w, x, y, z = (quaternion / quaternion.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ]
    return torch.stack([torch.stack(row, dim=-1) for row in rows], dim=-2)


def pose_matrix(position: torch.Tensor, quaternion: torch.Tensor) -> torch.Tensor:
    """Positions (..., 3), metres, and quaternions (..., 4) (w, x, y, z) -> rigid transforms (..., 4, 4)."""
    rotation = quaternion_to_matrix(quaternion.to(position.dtype))
    transform = torch.zeros((*rotation.shape[:-2], 4, 4), dtype=rotation.dtype, device=rotation.device)
    transform[..., :3, :3] = rotation
    transform[..., :3, 3] = position
    transform[..., 3, 3] = 1.0
    return transform


def bilinear_sample(images: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Sample images at subpixel locations, bilinearly (pixel centres at integer coordinates, border clamped).

    Args:
        images: (B, C, H, W).
        uv: (B, N, 2) pixel coordinates (u, v).

    Returns:
        (B, N, C) sampled values.
    """
    height, width = images.shape[-2:]
    scale = torch.tensor([2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], dtype=uv.dtype, device=uv.device)
    grid = (uv * scale - 1.0).to(images.dtype).unsqueeze(2)  # (B, N, 1, 2), align_corners=True convention
    sampled = torch.nn.functional.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return sampled.squeeze(-1).transpose(1, 2)


def seen_points(
    points_world: torch.Tensor,
    depth: torch.Tensor,
    intrinsics: torch.Tensor,
    T_world_camera: torch.Tensor,
    tolerance: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which points a camera sees in its rendered depth images.

    A point is seen when it projects inside the image, in front of the camera, onto a pixel whose depth (sampled
    bilinearly) is within `tolerance` of the point's own z-depth: a point behind an occluder, or on a face turned
    away, is not.

    Args:
        points_world: (B, K, 3) metres.
        depth: (B, H, W) rendered z-depth, metres.
        intrinsics: (3, 3) or (B, 1, 3, 3) K, pixels.
        T_world_camera: (4, 4) or (B, 1, 4, 4) camera poses.
        tolerance: metres.

    Returns:
        uv: (B, K, 2) the points' pixels; seen: (B, K) bool.
    """
    uv, z = project(points_world, intrinsics, T_world_camera)
    height, width = depth.shape[-2:]
    inside = (uv[..., 0] >= 0) & (uv[..., 0] <= width - 1) & (uv[..., 1] >= 0) & (uv[..., 1] <= height - 1)
    rendered = bilinear_sample(depth.unsqueeze(1).to(uv.dtype), uv).squeeze(-1)  # (B, K)
    return uv, inside & (z > 0) & ((rendered - z).abs() <= tolerance)

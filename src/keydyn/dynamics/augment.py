"""SE(2) data augmentation of latent windows (paper appendix 7.1): one random planar rigid motion per window.

The motion rotates by a yaw about the world z axis and then translates in xy:
p' = R(yaw) p + t. It moves every object keypoint (x, y; z unchanged) and the pusher position, and rotates
the pusher velocity actions (velocities do not translate). Pushing on a level, uniform table is invariant under
such motions, so an augmented window is another plausible trajectory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from keydyn.latents.base import LatentLayout


@dataclass(frozen=True)
class PlanarMotion:
    """A batch of SE(2) motions: yaw (B,) radians and translation (B, 2) metres."""

    yaw: torch.Tensor
    translation: torch.Tensor

    def rotation(self) -> torch.Tensor:
        """(B, 2, 2) rotation matrices."""
        c, s = torch.cos(self.yaw), torch.sin(self.yaw)
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


def sample_planar_motions(
    batch: int,
    generator: torch.Generator,
    max_translation: float = 0.4,
    max_yaw: float = math.pi,
    dtype: torch.dtype = torch.float32,
) -> PlanarMotion:
    """B motions with translation uniform in +-max_translation metres per axis and yaw uniform in +-max_yaw."""
    yaw = (torch.rand(batch, generator=generator, dtype=dtype) * 2 - 1) * max_yaw
    translation = (torch.rand(batch, 2, generator=generator, dtype=dtype) * 2 - 1) * max_translation
    return PlanarMotion(yaw, translation)


def transform_points_xy(points: torch.Tensor, motion: PlanarMotion) -> torch.Tensor:
    """Move (B, ..., 2) xy positions by the per-sample motions: R p + t."""
    shape = points.shape
    flat = points.reshape(shape[0], -1, 2)
    moved = flat @ motion.rotation().to(points).transpose(1, 2) + motion.translation.to(points)[:, None]
    return moved.reshape(shape)


def rotate_vectors_xy(vectors: torch.Tensor, motion: PlanarMotion) -> torch.Tensor:
    """Rotate (B, ..., 2) xy vectors (velocities) by the per-sample yaw: R v."""
    shape = vectors.shape
    flat = vectors.reshape(shape[0], -1, 2)
    return (flat @ motion.rotation().to(vectors).transpose(1, 2)).reshape(shape)


def transform_latents(latents: torch.Tensor, motion: PlanarMotion) -> torch.Tensor:
    """Move (B, T, D) latents (K keypoints x 3 then pusher xy, metres) by the per-sample motions."""
    layout = LatentLayout.from_dim(latents.shape[-1])
    batch, steps = latents.shape[:2]
    keypoints = latents[..., : layout.keypoint_dim].reshape(batch, steps, layout.num_keypoints, 3)
    moved_xy = transform_points_xy(keypoints[..., :2], motion)
    keypoints = torch.cat([moved_xy, keypoints[..., 2:]], dim=-1).reshape(batch, steps, layout.keypoint_dim)
    pusher = transform_points_xy(latents[..., layout.keypoint_dim :], motion)
    return torch.cat([keypoints, pusher], dim=-1)


def augment_windows(
    latents: torch.Tensor,
    actions: torch.Tensor,
    generator: torch.Generator,
    max_translation: float = 0.4,
    max_yaw: float = math.pi,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply one random SE(2) motion per window.

    Args:
        latents: (B, T, D) latents, metres.
        actions: (B, T', 2) pusher velocities, m/s.
        generator: source of the random motions (seeded by the caller).

    Returns:
        The moved latents (B, T, D) and rotated actions (B, T', 2).
    """
    motion = sample_planar_motions(latents.shape[0], generator, max_translation, max_yaw)
    return transform_latents(latents, motion), rotate_vectors_xy(actions, motion)

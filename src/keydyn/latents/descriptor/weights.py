"""Learnable convex combinations of keypoints: the WDS / WSDS latents (the original's DynaNetMLPWeightMatrix).

W = softmax(alpha) row by row, an (M, K) matrix with non-negative rows summing to 1, maps the K located
object keypoints x to M = K weighted keypoints z = W x. Convex combinations commute with rigid motions, so
z can be augmented like any latent. W is trained jointly with the dynamics (the loss compares prediction and
target both mapped by W) and fixed at control time. alpha starts as in the original: 2.0 on the diagonal,
log(1 / K) elsewhere.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from keydyn.latents.base import LatentLayout

PARAMETER_PREFIX = "keypoint_weights."  # the key prefix of alpha inside a dynamics checkpoint (DescriptorLatent)


class KeypointWeights(nn.Module):
    """z = [W x_obj, pusher] for latents of K keypoints; alpha (M, K) is the only parameter (M = K)."""

    def __init__(self, num_keypoints: int) -> None:
        super().__init__()
        alpha = torch.full((num_keypoints, num_keypoints), math.log(1.0 / num_keypoints))
        alpha.fill_diagonal_(2.0)
        self.alpha = nn.Parameter(alpha)

    @property
    def matrix(self) -> torch.Tensor:
        """(M, K) W = softmax(alpha) over each row."""
        return torch.softmax(self.alpha, dim=1)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., 3 K + 2) latents of located keypoints -> (..., 3 M + 2) latents of weighted keypoints, metres."""
        layout = LatentLayout(self.alpha.shape[1])
        keypoints = latents[..., : layout.keypoint_dim].unflatten(-1, (layout.num_keypoints, 3))
        mixed = torch.einsum("mk,...kc->...mc", self.matrix.to(latents.dtype), keypoints)
        return torch.cat([mixed.flatten(-2), latents[..., layout.keypoint_dim :]], dim=-1)

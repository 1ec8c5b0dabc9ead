"""Occluded keypoints placed by the rigid motion of the seen ones.

A descriptor keypoint whose object point is hidden (behind the pusher or another object, or on a face turned
away from the camera) is still located somewhere: at the best-matching pixel the camera does see, often
centimetres away. Its confidence (eq. 15) is low there, so a keypoint below a confidence threshold is taken as
occluded and put where the rigid motion of the confident keypoints carries it: the motion (a rotation about
the world z axis and a translation, as for an object pushed on a table) that best maps the confident
keypoints' positions in the reference image onto their positions now (least squares, closed form), applied to
the occluded keypoint's position in the reference image. A frame with fewer than two confident keypoints is
left as located. Nothing here uses ground truth.
"""

from __future__ import annotations

import torch

MIN_SEEN = 2  # confident keypoints needed to fit a planar rigid motion


def fill_occluded_keypoints(
    points: torch.Tensor, confidence: torch.Tensor, reference_points: torch.Tensor, min_confidence: float
) -> torch.Tensor:
    """Replace the keypoints with confidence below `min_confidence` by the rigid motion of the others.

    Args:
        points: (B, K, 3) located keypoints in the world frame, metres (NaN where no depth was found).
        confidence: (B, K) their confidences in [0, 1].
        reference_points: (K, 3) the same keypoints located in the reference image, world frame, metres.
        min_confidence: keypoints below this count as occluded; 0 keeps every keypoint as located.

    Returns:
        (B, K, 3) points (same dtype as `points`): the confident ones as located, the occluded ones moved with
        the confident ones from the reference image, in frames with at least two confident keypoints.
    """
    if points.dim() != 3 or points.shape[-1] != 3 or reference_points.shape != points.shape[1:]:
        raise ValueError(
            f"points {tuple(points.shape)} must be (B, K, 3) and reference_points "
            f"{tuple(reference_points.shape)} (K, 3) with the same K"
        )
    if min_confidence <= 0:
        return points
    located = points.double()
    seen = (confidence >= min_confidence) & torch.isfinite(located).all(dim=-1)  # (B, K)
    weight = seen.double().unsqueeze(-1)  # (B, K, 1)
    count = weight.sum(dim=1, keepdim=True).clamp(min=1.0)  # (B, 1, 1)
    reference = reference_points.double().unsqueeze(0)  # (1, K, 3)
    now = torch.where(seen.unsqueeze(-1), located, torch.zeros_like(located))
    reference_centre = (weight * reference).sum(dim=1, keepdim=True) / count  # (B, 1, 3)
    centre = (weight * now).sum(dim=1, keepdim=True) / count
    a, b = reference - reference_centre, now - centre  # (B, K, 3)
    sine = (weight[..., 0] * (a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0])).sum(dim=1)  # (B,)
    cosine = (weight[..., 0] * (a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1])).sum(dim=1)
    angle = torch.atan2(sine, cosine)[:, None]  # (B, 1) rotation about z, radians
    cos, sin = torch.cos(angle), torch.sin(angle)
    moved = (
        torch.stack([cos * a[..., 0] - sin * a[..., 1], sin * a[..., 0] + cos * a[..., 1], a[..., 2]], dim=-1) + centre
    )  # (B, K, 3)
    enough = (seen.sum(dim=1) >= MIN_SEEN)[:, None]  # (B, 1)
    fill = enough & ~seen
    return torch.where(fill.unsqueeze(-1), moved, located).to(points.dtype)

"""Occluded keypoints are placed by the rigid motion of the confident ones (keydyn.keypoints.completion)."""

import math

import pytest
import torch

from keydyn.keypoints.completion import fill_occluded_keypoints


def planar_motion(points: torch.Tensor, angle: float, shift: tuple[float, float, float]) -> torch.Tensor:
    """(K, 3) points rotated by `angle` radians about z, then shifted (metres)."""
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]], dtype=points.dtype)
    return points @ rotation.T + torch.tensor(shift, dtype=points.dtype)


REFERENCE = torch.tensor(
    [[0.05, 0.02, 0.03], [-0.04, 0.03, 0.03], [0.01, -0.05, 0.03], [0.03, 0.04, 0.0], [-0.02, -0.02, 0.01]],
    dtype=torch.float64,
)


def test_occluded_keypoints_move_rigidly_with_the_confident_ones():
    truth = torch.stack([planar_motion(REFERENCE, 0.7, (0.1, -0.2, 0.0)), planar_motion(REFERENCE, -2.5, (0, 0.3, 0))])
    located = truth.clone()
    located[0, 1] += torch.tensor([0.04, -0.03, 0.02])  # occluded: located on some other visible part
    located[1, 3] = float("nan")  # no depth there
    located[1, 4] += torch.tensor([-0.05, 0.0, 0.0])
    confidence = torch.full((2, 5), 0.8)
    confidence[0, 1], confidence[1, 4] = 0.1, 0.2
    filled = fill_occluded_keypoints(located, confidence, REFERENCE, min_confidence=0.4)
    torch.testing.assert_close(filled, truth, atol=1e-12, rtol=0)
    assert torch.equal(filled[0, [0, 2, 3, 4]], located[0, [0, 2, 3, 4]])  # the confident ones stay as located


def test_filling_is_off_at_zero_and_needs_two_confident_keypoints():
    located = planar_motion(REFERENCE, 0.3, (0.0, 0.1, 0.0))[None].float()
    located[0, 0] += 0.05
    confidence = torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.9]])
    assert torch.equal(fill_occluded_keypoints(located, confidence, REFERENCE.float(), 0.0), located)
    assert torch.equal(fill_occluded_keypoints(located, confidence, REFERENCE.float(), 0.5), located)  # one seen
    confidence[0, 3] = 0.9
    filled = fill_occluded_keypoints(located, confidence, REFERENCE.float(), 0.5)
    assert filled.dtype == torch.float32 and not torch.equal(filled[0, 0], located[0, 0])


def test_filling_checks_shapes():
    with pytest.raises(ValueError, match="reference_points"):
        fill_occluded_keypoints(torch.zeros(2, 5, 3), torch.ones(2, 5), torch.zeros(4, 3), 0.5)

"""Pose errors between the final and the goal object pose, as the paper reports them."""

from __future__ import annotations

import numpy as np


def angle_between(quaternion_a: np.ndarray, quaternion_b: np.ndarray) -> np.ndarray:
    """Rotation angle (radians, in [0, pi]) taking orientation a to b; (..., 4) (w, x, y, z) quaternions.

    The axis-angle magnitude of a^-1 b: a yaw of +179 deg against -179 deg is 2 deg, not 358.
    """
    a = np.asarray(quaternion_a, dtype=float)
    b = np.asarray(quaternion_b, dtype=float)
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    dot = np.clip(np.abs(np.sum(a * b, axis=-1)), 0.0, 1.0)
    return 2.0 * np.arccos(dot)


def pose_errors(
    position: np.ndarray, quaternion: np.ndarray, goal_position: np.ndarray, goal_quaternion: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(position error in metres (3D distance), angle error in radians) between poses, broadcast over (...)."""
    distance = np.linalg.norm(np.asarray(position, dtype=float) - np.asarray(goal_position, dtype=float), axis=-1)
    return distance, angle_between(quaternion, goal_quaternion)

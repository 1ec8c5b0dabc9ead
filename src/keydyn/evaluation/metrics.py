"""Pose errors between the final and the goal object pose, as the paper reports them."""

from __future__ import annotations

import numpy as np

from keydyn.latents.gt3d import rotate_by_quaternions


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
    position: np.ndarray,
    quaternion: np.ndarray,
    goal_position: np.ndarray,
    goal_quaternion: np.ndarray,
    centre_offset: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(position error in metres, angle error in radians) between object poses, broadcast over (...).

    The position error is the 3D distance between the object's centre in the two poses: the point `centre_offset`
    (3,) or (..., 3) metres in the object's own frame (the environment's `info["object_centre_offset"]`; None: its
    frame's origin, which is the sugar box's centre). A mug's frame sits at the centre of its base, half its length
    (3.8-5.5 cm) from its middle, where each degree of yaw error would add about 0.08 cm.
    """
    position, goal_position = np.asarray(position, dtype=float), np.asarray(goal_position, dtype=float)
    if centre_offset is not None:
        offset = np.asarray(centre_offset, dtype=float)[..., None, :]  # (..., 1, 3): one point per pose
        position = position + rotate_by_quaternions(quaternion, offset)[..., 0, :]
        goal_position = goal_position + rotate_by_quaternions(goal_quaternion, offset)[..., 0, :]
    distance = np.linalg.norm(position - goal_position, axis=-1)
    return distance, angle_between(quaternion, goal_quaternion)

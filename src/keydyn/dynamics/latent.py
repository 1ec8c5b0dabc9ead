"""The latent state shared by every dynamics method, and its ground-truth 3D keypoint instance (GT 3D).

A latent state z is a flat float vector of size D = 3 K + 2:

    z = [x_1, y_1, z_1, ..., x_K, y_K, z_K, pusher_x, pusher_y]

the K object keypoints in the world frame (metres) followed by the world xy of the pusher axis (metres; the
pusher moves in the table plane, so its height is omitted). Every method (GT 3D, dense-descriptor keypoints,
autoencoder latents made to fit the layout) produces this layout, so augmentation, dynamics and planning
are shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from keydyn.data.store import EpisodeStore
from keydyn.runs import store_task
from keydyn.sim.config import SUGAR_BOX_SIZE, TaskConfig
from keydyn.sim.meshes import MugShape

PUSHER_DIM = 2  # the pusher's world xy, metres
ACTION_DIM = 2  # the pusher's commanded world xy velocity, m/s


@dataclass(frozen=True)
class LatentLayout:
    """Where things sit in a latent vector of `num_keypoints` object keypoints plus the pusher xy."""

    num_keypoints: int

    @property
    def dim(self) -> int:
        """D = 3 K + 2."""
        return 3 * self.num_keypoints + PUSHER_DIM

    @property
    def keypoint_dim(self) -> int:
        """3 K: the object-keypoint part of the latent."""
        return 3 * self.num_keypoints

    @staticmethod
    def from_dim(dim: int) -> LatentLayout:
        """The layout of a latent of size `dim` (must be 3 K + 2 with K >= 1)."""
        if dim < 5 or (dim - PUSHER_DIM) % 3:
            raise ValueError(f"a latent has 3 K + 2 entries (K object keypoints, pusher xy); got size {dim}")
        return LatentLayout((dim - PUSHER_DIM) // 3)

    def pack(self, keypoints: np.ndarray, pusher_xy: np.ndarray) -> np.ndarray:
        """(..., K, 3) keypoints and (..., 2) pusher xy, metres -> (..., D) latents."""
        keypoints = np.asarray(keypoints)
        flat = keypoints.reshape(*keypoints.shape[:-2], self.keypoint_dim)
        return np.concatenate([flat, np.asarray(pusher_xy, dtype=flat.dtype)], axis=-1)

    def keypoints(self, latents: np.ndarray) -> np.ndarray:
        """(..., D) latents -> (..., K, 3) object keypoints, metres."""
        return latents[..., : self.keypoint_dim].reshape(*latents.shape[:-1], self.num_keypoints, 3)

    def pusher(self, latents: np.ndarray) -> np.ndarray:
        """(..., D) latents -> (..., 2) pusher xy, metres."""
        return latents[..., self.keypoint_dim :]


def rotate_by_quaternions(quaternions: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Rotate body-frame points by unit quaternions (w, x, y, z).

    Args:
        quaternions: (..., 4) unit quaternions, w first.
        points: (..., K, 3) points (broadcast against the quaternions' leading shape).

    Returns:
        (..., K, 3) rotated points.
    """
    q = np.asarray(quaternions, dtype=np.float64)[..., None, :]
    w, u = q[..., :1], q[..., 1:]
    # v' = v + 2 w (u x v) + 2 u x (u x v)
    uv = np.cross(u, points)
    return points + 2.0 * w * uv + 2.0 * np.cross(u, uv)


def box_top_corners(size: tuple[float, float, float], up_axis: int, up_sign: float) -> np.ndarray:
    """The 4 body-frame corners (4, 3) of the box face whose outward normal is `up_sign` * body axis `up_axis`."""
    half = np.asarray(size, dtype=np.float64) / 2
    others = [a for a in range(3) if a != up_axis]
    corners = np.zeros((4, 3))
    for i, (s0, s1) in enumerate(((1, 1), (1, -1), (-1, -1), (-1, 1))):
        corners[i, up_axis] = up_sign * half[up_axis]
        corners[i, others[0]] = s0 * half[others[0]]
        corners[i, others[1]] = s1 * half[others[1]]
    return corners


def mug_body_points(shape: MugShape) -> np.ndarray:
    """4 body-frame points (4, 3) of a mug (base at z = 0, handle towards +x): 3 rim points and the handle tip."""
    r, h = shape.radius, shape.height
    return np.array(
        [
            [-r, 0.0, h],  # rim, opposite the handle
            [0.0, r, h],  # rim, left of the handle
            [0.0, -r, h],  # rim, right of the handle
            [r + shape.handle_radius, 0.0, shape.handle_height],  # outermost point of the handle
        ]
    )


@dataclass(frozen=True)
class GroundTruthKeypoints:
    """GT 3D latent: fixed body-frame points moved by the true object pose (the paper's GT_3D baseline).

    Attributes:
        body_points: (K, 3) points in the object body frame, metres.
    """

    body_points: np.ndarray

    @property
    def layout(self) -> LatentLayout:
        return LatentLayout(len(self.body_points))

    @staticmethod
    def for_task(task: TaskConfig, mug: MugShape | None = None) -> GroundTruthKeypoints:
        """The keypoints of a task's object: the 4 corners of the box face that is up, or 4 points of `mug`."""
        if task.object == "mug":
            if mug is None:
                raise ValueError("a mug task needs the episode's MugShape (keydyn.sim.env.mug_shape(instance))")
            return GroundTruthKeypoints(mug_body_points(mug))
        if task.resting_face == "on_side":
            # Resting on its side the box is turned +90 degrees about body y: body -x points up.
            return GroundTruthKeypoints(box_top_corners(SUGAR_BOX_SIZE, up_axis=0, up_sign=-1.0))
        return GroundTruthKeypoints(box_top_corners(SUGAR_BOX_SIZE, up_axis=2, up_sign=1.0))

    def world_keypoints(self, object_position: np.ndarray, object_quaternion: np.ndarray) -> np.ndarray:
        """(..., 3) positions (metres) and (..., 4) quaternions (w, x, y, z) -> (..., K, 3) world keypoints."""
        rotated = rotate_by_quaternions(object_quaternion, self.body_points)
        return rotated + np.asarray(object_position, dtype=np.float64)[..., None, :]

    def latents(self, object_position: np.ndarray, object_quaternion: np.ndarray, pusher_xy: np.ndarray) -> np.ndarray:
        """(..., 3) object positions, (..., 4) quaternions, (..., 2) pusher xy -> (..., D) float32 latents."""
        keypoints = self.world_keypoints(object_position, object_quaternion)
        return self.layout.pack(keypoints, pusher_xy).astype(np.float32)

    def latent_from_info(self, info: Mapping[str, Any], pusher_xy: np.ndarray) -> np.ndarray:
        """(D,) latent at control time from an env `info` dict and the observation's (2,) pusher_position."""
        return self.latents(info["object_position"], info["object_quaternion"], pusher_xy)


def ground_truth_latents(store: EpisodeStore) -> np.ndarray:
    """GT 3D latents of every frame of a dataset, (N, D) float32, metres.

    Mug datasets use each episode's mug instance (its shape fixes the body points).
    """
    task = store_task(store)
    position = np.asarray(store.frames("object_position"))
    quaternion = np.asarray(store.frames("object_quaternion"))
    pusher = np.asarray(store.frames("pusher_position"))
    if task.object != "mug":
        return GroundTruthKeypoints.for_task(task).latents(position, quaternion, pusher)
    from keydyn.sim.env import mug_shape  # the env module pulls in the renderer; only mugs need it

    instances = store.episode_meta("mug_instance")
    parts = []
    for episode in range(store.num_episodes):
        start, stop = store.episode_range(episode)
        keypoints = GroundTruthKeypoints.for_task(task, mug_shape(int(instances[episode])))
        parts.append(keypoints.latents(position[start:stop], quaternion[start:stop], pusher[start:stop]))
    return np.concatenate(parts) if parts else np.zeros((0, 14), dtype=np.float32)

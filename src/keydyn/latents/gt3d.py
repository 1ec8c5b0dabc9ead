"""GT 3D: the paper's privileged baseline, fixed body-frame points moved by the true object pose.

The latent is a `LatentLayout` keypoint latent of K = 4 points: the corners of the box face that is up, 3 rim
points and the handle tip of each episode's mug, or the top centre and 3 top-rim points of a cylinder. Training
reads the dataset's true poses; the encoder reads `info["object_position"]` and `info["object_quaternion"]` (no
images).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keydyn.data.store import EpisodeStore
from keydyn.latents.base import KeypointLatent, LatentLayout
from keydyn.latents.registry import register_latent
from keydyn.runs import store_task
from keydyn.sim.config import SUGAR_BOX_SIZE, TaskConfig
from keydyn.sim.meshes import MugShape
from keydyn.sim.observations import ObservationError, check_observation


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


def cylinder_body_points(radius: float, height: float) -> np.ndarray:
    """4 body-frame points (4, 3) of an upright cylinder centred at the origin: its top centre and 3 points of its
    top rim, 120 degrees apart (a cylinder that only slides has no yaw to show; these points fix its position)."""
    angles = np.radians([0.0, 120.0, 240.0])
    rim = np.stack([radius * np.cos(angles), radius * np.sin(angles), np.full(3, height / 2)], axis=1)
    return np.vstack([[0.0, 0.0, height / 2], rim])


@dataclass(frozen=True)
class GroundTruthKeypoints:
    """GT 3D keypoints of one object: fixed body-frame points moved by its pose.

    Attributes:
        body_points: (K, 3) points in the object body frame, metres.
    """

    body_points: np.ndarray

    @property
    def layout(self) -> LatentLayout:
        return LatentLayout(len(self.body_points))

    @staticmethod
    def for_task(task: TaskConfig, mug: MugShape | None = None) -> GroundTruthKeypoints:
        """The keypoints of a task's object: the 4 corners of the box face that is up, 4 points of `mug`, or 4 points
        on the top of the cylinder."""
        if task.object == "cylinder":
            return GroundTruthKeypoints(cylinder_body_points(*task.cylinder_size))
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


class GroundTruthEncoder:
    """GT 3D at control time: the body points moved by the true object pose from `info`."""

    needs_images = False

    def __init__(self, task: TaskConfig) -> None:
        self.task = task
        self._keypoints = None if task.object == "mug" else GroundTruthKeypoints.for_task(task)

    @property
    def layout(self) -> LatentLayout:
        return LatentLayout(4)

    def reset(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        if self.task.object == "mug":
            from keydyn.sim.env import mug_shape

            self._keypoints = GroundTruthKeypoints.for_task(self.task, mug_shape(int(info["mug_instance"])))

    def encode(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> np.ndarray:
        if self._keypoints is None:
            raise RuntimeError("call reset() with the episode's first observation before encode()")
        check_observation(observation)  # the pusher position; the object pose is ground truth from `info`
        missing = [key for key in ("object_position", "object_quaternion") if key not in info]
        if missing:
            raise ObservationError(
                f"GT 3D reads the true object pose from info, which has no {' or '.join(missing)}; give the "
                "simulator's info with each observation (a real robot has none: serve a latent located in images)"
            )
        return self._keypoints.latent_from_info(info, np.asarray(observation["pusher_position"]))


class GroundTruthLatent(KeypointLatent):
    """--latent gt3d: 4 ground-truth 3D object keypoints and the pusher xy (D = 14)."""

    name = "gt3d"
    label = "GT 3D"

    def dataset_latents(self, store: EpisodeStore, config: Any, out: Path) -> np.ndarray:
        return ground_truth_latents(store)

    def make_encoder(self, run_dir: Path, task: TaskConfig, which: str) -> GroundTruthEncoder:
        return GroundTruthEncoder(task)


register_latent(GroundTruthLatent())

"""Latent encoders: how a controller turns an environment observation into the latent state z.

Every latent method (GT 3D here; descriptor keypoints later) implements `LatentEncoder`, so the controller, the
evaluation and trajectory tracking are shared.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from keydyn.dynamics.latent import GroundTruthKeypoints, LatentLayout
from keydyn.sim.config import TaskConfig


class LatentEncoder(Protocol):
    """Maps an observation to a (D,) float32 latent (K object keypoints x 3, then pusher xy; metres).

    needs_images: whether `encode` reads camera images (the environment may skip rendering otherwise).
    """

    needs_images: bool

    @property
    def layout(self) -> LatentLayout: ...

    def reset(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Prepare for an episode whose first observation is given (e.g. pick the object's keypoints)."""

    def encode(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> np.ndarray:
        """(D,) float32 latent of the current observation."""


class GroundTruthEncoder:
    """GT 3D: fixed body points moved by the true object pose from `info` (the paper's privileged baseline)."""

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
        return self._keypoints.latent_from_info(info, np.asarray(observation["pusher_position"]))

"""A RealSense D415-like RGB-D camera: stereo depth noise, holes, a frame of latency, a calibration error.

The render gives perfect, registered colour and depth; this model degrades it as the D415 does (every effect can
be set to zero, for degradation studies):

- depth noise: Gaussian with the stereo standard deviation sigma_z = z^2 * sigma_d / (f_px * baseline), z in
  metres, with the D415's 0.055 m baseline, a subpixel disparity error sigma_d of about 0.08 px, and f_px the
  focal length in pixels of the camera's 640x480 stream (the sensor's noise does not depend on the size keydyn
  renders at): 2.2 mm at 1 m for a 40 deg vertical field of view;
- holes (depth 0): at depth discontinuities (the pixels on either side of a jump of more than `edge_jump`
  metres between neighbours, where stereo matching fails on occlusion boundaries) and a random `dropout`
  fraction of the other pixels;
- latency: the image returned at a control tick shows the scene `latency_frames` camera frames (1/fps s each)
  earlier (the environment renders the state it saved that long ago);
- extrinsics: the reported T_world_camera differs from the true pose by a fixed calibration error, a
  translation of `translation_error` metres and a rotation of `rotation_error_deg` about random directions drawn
  from `calibration_seed` (fixed for the rig, unlike the per-episode noise).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np

STREAM_HEIGHT = 480
"""Rows of the D415 stream the noise model describes."""


@dataclass(frozen=True)
class D415Model:
    """The degradations of a D415-like camera (see the module docstring). Units: metres, pixels, degrees."""

    baseline: float = 0.055
    subpixel: float = 0.08
    """Disparity error, pixels (sigma_d); 0: no depth noise."""
    edge_jump: float = 0.01
    """Depth jump between neighbouring pixels that makes holes on both sides, metres; 0: no edge holes."""
    dropout: float = 0.005
    """Fraction of pixels without depth, chosen at random each frame."""
    fps: float = 30.0
    latency_frames: int = 1
    translation_error: float = 0.004
    rotation_error_deg: float = 1.0
    calibration_seed: int = 0

    def __post_init__(self) -> None:
        if self.baseline <= 0 or self.fps <= 0:
            raise ValueError(f"the camera's baseline and fps must be positive, got {self.baseline}, {self.fps}")
        if min(self.subpixel, self.edge_jump, self.translation_error, self.rotation_error_deg) < 0:
            raise ValueError(f"camera noise, edge jump and calibration errors must be >= 0, got {self}")
        if not 0 <= self.dropout < 1 or self.latency_frames < 0:
            raise ValueError(
                f"dropout must be in [0, 1) and latency_frames >= 0, got {self.dropout} and {self.latency_frames}"
            )

    @property
    def latency(self) -> float:
        """How old the image is, seconds."""
        return self.latency_frames / self.fps

    def depth_sigma(self, depth: np.ndarray, fovy_deg: float) -> np.ndarray:
        """Standard deviation (metres) of the depth noise at z-depth `depth` (metres), any shape."""
        focal = (STREAM_HEIGHT / 2) / math.tan(math.radians(fovy_deg) / 2)
        return np.square(depth) * self.subpixel / (focal * self.baseline)

    def degrade_depth(self, depth: np.ndarray, fovy_deg: float, rng: np.random.Generator) -> np.ndarray:
        """A rendered (H, W) float32 z-depth image in metres with noise and holes (0), from `rng`."""
        noisy = depth + self.depth_sigma(depth, fovy_deg) * rng.standard_normal(depth.shape)
        holes = rng.random(depth.shape) < self.dropout
        if self.edge_jump > 0:
            jump_x = np.abs(np.diff(depth, axis=1)) > self.edge_jump
            jump_y = np.abs(np.diff(depth, axis=0)) > self.edge_jump
            edges = np.zeros(depth.shape, dtype=bool)
            edges[:, 1:] |= jump_x
            edges[:, :-1] |= jump_x
            edges[1:] |= jump_y
            edges[:-1] |= jump_y
            holes |= edges
        return np.where(holes, 0.0, noisy).astype(np.float32)

    def calibration_error(self) -> np.ndarray:
        """(4, 4) T_true_reported: the fixed error of the reported camera pose, in the camera frame."""
        rng = np.random.default_rng(self.calibration_seed)
        translation, axis = rng.standard_normal(3), rng.standard_normal(3)
        error = np.eye(4)
        quaternion, rotation = np.empty(4), np.empty(9)
        mujoco.mju_axisAngle2Quat(quaternion, axis / np.linalg.norm(axis), math.radians(self.rotation_error_deg))
        mujoco.mju_quat2Mat(rotation, quaternion)
        error[:3, :3] = rotation.reshape(3, 3)
        error[:3, 3] = self.translation_error * translation / np.linalg.norm(translation)
        return error

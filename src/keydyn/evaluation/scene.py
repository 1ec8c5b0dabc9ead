"""What a closed loop records of each control step, and its drawing for videos (the paper's figure 1).

A `SceneFrame` holds the cameras' images and calibration with the world points of the target, the current latent
and the plan's prediction; `draw_frame` turns it into a video frame, `keydyn.evaluation.viewer` into the 3D view.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from keydyn.sim.environment import PushingEnvironment
from keydyn.sim.render import camera_intrinsics
from keydyn.video import draw_points, draw_polyline
from keydyn.vision.geometry import project

GOAL_COLOUR = (40, 220, 40)
CURRENT_COLOUR = (230, 40, 40)
PREDICTED_COLOUR = (250, 200, 30)
DISPLAY_HEIGHT = 480  # videos show every camera at least this many pixels high


@dataclass
class SceneFrame:
    """The scene at one control step.

    cameras: the camera names; images: (C, H, W, 3) uint8 RGB; intrinsics: (C, 3, 3) K in pixels; poses: (C, 4, 4)
    T_world_camera (OpenCV frame, metres); pusher: (2,) world xy, metres; target and current: (P, 3) world points
    (metres) of the target's and the observed latent (`LatentMethod.video_points`), None where not drawn;
    predicted: (H + 1, P, 3) the points predicted along the plan made from this frame, or None; action: the (2,)
    velocity (m/s) commanded after this frame, None for the last one.
    """

    cameras: tuple[str, ...]
    images: np.ndarray
    intrinsics: np.ndarray
    poses: np.ndarray
    pusher: np.ndarray
    target: np.ndarray | None = None
    current: np.ndarray | None = None
    predicted: np.ndarray | None = None
    action: np.ndarray | None = None


def capture_frame(
    env: PushingEnvironment,
    pusher: np.ndarray,
    target: np.ndarray | None,
    current: np.ndarray | None,
    predicted: np.ndarray | None = None,
    action: np.ndarray | None = None,
) -> SceneFrame:
    """The environment's scene now (every camera rendered, also for an environment made with images=False), with
    the observed (2,) pusher xy and the points to draw (see `SceneFrame`)."""
    task = env.task
    intrinsics = [camera_intrinsics(camera.fovy_deg, task.width, task.height) for camera in task.cameras]
    return SceneFrame(
        cameras=task.camera_names,
        images=np.stack(env.camera_images()),
        intrinsics=np.stack(intrinsics),
        poses=np.stack(env.camera_poses()),
        pusher=np.asarray(pusher, dtype=np.float64),
        target=target,
        current=current,
        predicted=predicted,
        action=action,
    )


def _to_display(frame: SceneFrame, index: int, points: np.ndarray, scale: int) -> np.ndarray:
    """(..., 3) world points (metres) -> (..., 2) pixels of camera `index`'s image scaled up `scale` times (NaN
    behind the camera)."""
    K, pose = torch.as_tensor(frame.intrinsics[index]), torch.as_tensor(frame.poses[index])
    flat = torch.as_tensor(np.asarray(points, dtype=np.float64).reshape(-1, 3))
    uv, depth = project(flat, K.double(), pose.double())
    uv = torch.where(depth[:, None] > 0, uv, torch.nan).numpy()
    return (uv * scale + (scale - 1) / 2).reshape(*np.shape(points)[:-1], 2)


def draw_frame(frame: SceneFrame) -> np.ndarray:
    """Every camera's RGB side by side, each scaled up by a whole factor to at least DISPLAY_HEIGHT pixels, with
    the target (green) and current (red) points drawn as outlines and dots, and the predicted ones (yellow: each
    point's path along the plan). Returns (h, w, 3) uint8."""
    height, width = frame.images.shape[1:3]
    scale = max(1, -(-DISPLAY_HEIGHT // height))
    radius = max(2, scale * width // 160)
    panels = []
    for index, image in enumerate(frame.images):
        image = np.repeat(np.repeat(image, scale, axis=0), scale, axis=1)
        if frame.predicted is not None:
            paths = _to_display(frame, index, frame.predicted, scale)  # (H + 1, P, 2)
            for point in range(paths.shape[1]):
                draw_polyline(image, paths[:, point], PREDICTED_COLOUR, closed=False)
            draw_points(image, paths[-1], PREDICTED_COLOUR, radius=max(1, radius // 2))
        for points, colour in ((frame.target, GOAL_COLOUR), (frame.current, CURRENT_COLOUR)):
            if points is not None:
                uv = _to_display(frame, index, points, scale)
                draw_polyline(image, uv, colour)
                draw_points(image, uv, colour, radius=radius)
        panels.append(image)
    return np.concatenate(panels, axis=1)

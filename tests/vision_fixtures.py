"""Helpers for the vision tests: an exact ray-cast scene of boxes (numpy, independent of keydyn.vision)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from keydyn.vision.views import RGBDView

OBJECT, OCCLUDER, TABLE = 1, 2, 0


def look_at(position, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """T_world_camera (4, 4) of an OpenCV camera (x right, y down, z forward) at `position` facing `target`."""
    position, target, up = (np.asarray(x, dtype=np.float64) for x in (position, target, up))
    forward = (target - position) / np.linalg.norm(target - position)
    right = np.cross(forward, up)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, forward], axis=1)
    pose[:3, 3] = position
    return pose


def yaw_pose(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    """A (4, 4) pose translated to (x, y, z) and turned by `yaw` radians about the world z axis."""
    c, s = np.cos(yaw), np.sin(yaw)
    pose = np.eye(4)
    pose[:2, :2] = [[c, -s], [s, c]]
    pose[:3, 3] = (x, y, z)
    return pose


@dataclass(frozen=True)
class Box:
    """An oriented box: pose (4, 4) of its centre, half extents (3,) metres, and a label."""

    pose: np.ndarray
    half: np.ndarray
    label: int


@dataclass(frozen=True)
class Camera:
    intrinsics: np.ndarray
    pose: np.ndarray
    width: int
    height: int

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) world points -> (N, 2) pixels and (N,) z-depths."""
        camera = (points - self.pose[:3, 3]) @ self.pose[:3, :3]
        pixels = camera @ self.intrinsics.T
        return pixels[:, :2] / pixels[:, 2:3], camera[:, 2]


def camera(position, target, width=64, height=48, fx=58.0, fy=54.0, up=(0.0, 0.0, 1.0)) -> Camera:
    """A pinhole camera with unequal focal lengths and an off-centre principal point (to catch axis mix-ups)."""
    intrinsics = np.array([[fx, 0.0, width / 2 - 0.3], [0.0, fy, height / 2 + 0.4], [0.0, 0.0, 1.0]])
    return Camera(intrinsics, look_at(position, target, up), width, height)


def cast(cam: Camera, boxes: list[Box], uv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rays through (N, 2) pixel positions: z-depth and label of the first box hit, and the hit world points.

    The ray direction has camera z component 1, so the ray parameter is the z-depth. Misses give inf, -1.
    """
    directions_camera = np.stack(
        [
            (uv[:, 0] - cam.intrinsics[0, 2]) / cam.intrinsics[0, 0],
            (uv[:, 1] - cam.intrinsics[1, 2]) / cam.intrinsics[1, 1],
            np.ones(len(uv)),
        ],
        axis=-1,
    )
    directions = directions_camera @ cam.pose[:3, :3].T
    depth = np.full(len(uv), np.inf)
    label = np.full(len(uv), -1)
    for box in boxes:
        # slab test in the box frame (rigid transform: the ray parameter is unchanged)
        origin = (cam.pose[:3, 3] - box.pose[:3, 3]) @ box.pose[:3, :3]
        direction = directions @ box.pose[:3, :3]
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-box.half - origin) / direction
            t2 = (box.half - origin) / direction
        near = np.nanmax(np.minimum(t1, t2), axis=-1)
        far = np.nanmin(np.maximum(t1, t2), axis=-1)
        hit = (near <= far) & (near > 0) & (near < depth)
        depth[hit], label[hit] = near[hit], box.label
    points = cam.pose[:3, 3] + directions * depth[:, None]
    return depth, label, points


def render(cam: Camera, boxes: list[Box], object_pose: np.ndarray | None = None) -> RGBDView:
    """An exact RGB-D view (depth at pixel centres, mask = OBJECT label) of the boxes."""
    v, u = np.mgrid[0 : cam.height, 0 : cam.width]
    uv = np.stack([u.ravel(), v.ravel()], axis=-1).astype(np.float64)
    depth, label, _ = cast(cam, boxes, uv)
    depth = np.where(np.isfinite(depth), depth, 0.0).reshape(cam.height, cam.width)
    label = label.reshape(cam.height, cam.width)
    rgb = np.zeros((cam.height, cam.width, 3), dtype=np.uint8)
    rgb[..., 0] = (label + 1) * 60
    return RGBDView(
        rgb=torch.from_numpy(rgb),
        depth=torch.from_numpy(depth.astype(np.float32)),
        mask=torch.from_numpy(label == OBJECT),
        intrinsics=torch.from_numpy(cam.intrinsics),
        T_world_camera=torch.from_numpy(cam.pose),
        T_world_object=None if object_pose is None else torch.from_numpy(object_pose),
    )


def table() -> Box:
    return Box(yaw_pose(0.0, 0.0, -0.05, 0.0), np.array([1.0, 1.0, 0.05]), TABLE)


def object_box(pose: np.ndarray) -> Box:
    return Box(pose, np.array([0.05, 0.08, 0.03]), OBJECT)


def on_box_surface(box: Box, points: np.ndarray, atol: float) -> np.ndarray:
    """(N,) whether world points lie on the surface of a box to within atol metres."""
    local = np.abs((points - box.pose[:3, 3]) @ box.pose[:3, :3])
    inside = np.all(local <= box.half + atol, axis=-1)
    return inside & np.any(np.abs(local - box.half) <= atol, axis=-1)


def face_of(box: Box, points: np.ndarray) -> np.ndarray:
    """(N,) index (0-5) of the face of `box` nearest to each world point: axis, then sign."""
    local = ((points - box.pose[:3, 3]) @ box.pose[:3, :3]) / box.half
    axis = np.argmax(np.abs(local), axis=-1)
    return 2 * axis + (np.take_along_axis(local, axis[:, None], axis=-1)[:, 0] > 0)


def visible(cam: Camera, boxes: list[Box], points: np.ndarray, atol: float = 1e-6) -> np.ndarray:
    """(N,) whether each world point is the first surface seen by `cam` along its ray, inside the image."""
    uv, z = cam.project(points)
    pixel = np.floor(uv + 0.5)
    inside = (z > 0) & np.all((pixel >= 0) & (pixel < [cam.width, cam.height]), axis=-1)
    depth, _, _ = cast(cam, boxes, uv)
    return inside & (np.abs(depth - z) <= atol)


def visibility_margin(
    cam: Camera, boxes: list[Box], target: Box, points: np.ndarray, radius: float = 1.0, depth_margin: float = 0.005
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each point of `target`'s surface is clearly visible or clearly hidden from `cam`.

    Clearly visible: the point is visible, and the rays `radius` pixels around it (8 directions) all hit the
    same face of `target`, inside the image. Clearly hidden: outside the image or behind a surface more than
    `depth_margin` metres in front of it, and none of those rays hits that face inside the image. Points
    near an occlusion or image boundary, or hidden by less than the margin, are neither.

    Returns:
        (N,) clearly_visible, (N,) clearly_hidden.
    """
    uv, z = cam.project(points)
    face = face_of(target, points)
    seen = []
    for du, dv in [(1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1)]:
        shifted = uv + radius * np.array([du, dv])
        pixel = np.floor(shifted + 0.5)
        inside = (z > 0) & np.all((pixel >= 0) & (pixel < [cam.width, cam.height]), axis=-1)
        _, label, hits = cast(cam, boxes, shifted)
        seen.append(inside & (label == target.label) & (face_of(target, hits) == face))
    seen = np.stack(seen)
    pixel = np.floor(uv + 0.5)
    inside = (z > 0) & np.all((pixel >= 0) & (pixel < [cam.width, cam.height]), axis=-1)
    depth, _, _ = cast(cam, boxes, uv)
    hidden = ~inside | (depth < z - depth_margin)
    return visible(cam, boxes, points) & seen.all(axis=0), hidden & ~seen.any(axis=0)


@contextlib.contextmanager
def one_thread():
    """Run torch on one thread: tiny networks are as fast, and not slowed by other work on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)

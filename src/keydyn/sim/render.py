"""Headless RGB-D and segmentation rendering of MuJoCo cameras, with pinhole intrinsics and poses.

Conventions: images are row-major, row 0 at the top. Pixel (u, v) is column u, row v, and its centre has
continuous coordinate (u, v). Camera frames follow OpenCV: x right, y down, z forward (into the scene).
Depth is z-depth in metres along the camera's z axis.
"""

from __future__ import annotations

import contextlib
import math
import os

import mujoco
import numpy as np

MOVABLE_GROUP = 1  # geom group of everything that moves (object, pusher); static scenery is in group 2


def camera_intrinsics(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole intrinsics K (3, 3) in pixels for a camera with square pixels and a vertical field of view."""
    focal = (height / 2.0) / math.tan(math.radians(fovy_deg) / 2.0)
    return np.array([[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]])


def camera_pose(model: mujoco.MjModel, data: mujoco.MjData, camera_id: int) -> np.ndarray:
    """T_world_camera (4, 4), metres, for the OpenCV camera frame of a MuJoCo camera."""
    pose = np.eye(4)
    # MuJoCo cameras look along -z with y up: flip y and z to get OpenCV's frame.
    pose[:3, :3] = data.cam_xmat[camera_id].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    pose[:3, 3] = data.cam_xpos[camera_id]
    return pose


def _headless_context(width: int, height: int):
    """An offscreen GL context of the backend named by MUJOCO_GL (egl by default, or osmesa).

    The backend is imported explicitly, so that it does not matter whether mujoco was imported before
    keydyn set its default.
    """
    backend = os.environ.get("MUJOCO_GL", "egl").lower()
    if backend == "egl":
        from mujoco.egl import GLContext
    elif backend == "osmesa":
        from mujoco.osmesa import GLContext
    else:
        from mujoco.glfw import GLContext
    return GLContext(width, height)


class RgbdRenderer:
    """Renders RGB, metric depth and per-pixel geom ids offscreen, for any number of models of one size.

    One OpenGL context is shared by all models; a model's GPU resources are uploaded on its first render.
    """

    def __init__(self, width: int, height: int, shadows: bool = False) -> None:
        self.width, self.height, self.shadows = width, height, shadows
        try:
            self._gl = _headless_context(width, height)
            self._gl.make_current()
        except Exception as error:  # the backend's own errors are cryptic
            backend = os.environ.get("MUJOCO_GL", "")
            raise RuntimeError(
                f"could not create a headless OpenGL context with MUJOCO_GL={backend!r} ({error}). Install the "
                "EGL libraries (apt-get install libegl1 libgl1 libgles2 libegl-mesa0) or use OSMesa "
                "(apt-get install libosmesa6; export MUJOCO_GL=osmesa PYOPENGL_PLATFORM=osmesa)."
            ) from error
        self._viewport = mujoco.MjrRect(0, 0, width, height)
        self._resources: dict[int, tuple[mujoco.MjModel, mujoco.MjrContext, mujoco.MjvScene]] = {}
        self._option = mujoco.MjvOption()
        # The segmentation pass draws only the movable geoms (group 1): the static scenery (group 2) cannot
        # occlude them, and leaving it out makes the pass several times cheaper on a software rasteriser.
        self._segment_option = mujoco.MjvOption()
        self._segment_option.geomgroup[:] = 0
        self._segment_option.geomgroup[MOVABLE_GROUP] = 1
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._rgb = np.empty((height, width, 3), dtype=np.uint8)
        self._ids = np.empty((height, width, 3), dtype=np.uint8)
        self._depth = np.empty((height, width), dtype=np.float32)

    def _context(self, model: mujoco.MjModel) -> tuple[mujoco.MjrContext, mujoco.MjvScene]:
        key = id(model)
        if key not in self._resources:
            if model.vis.global_.offwidth < self.width or model.vis.global_.offheight < self.height:
                raise ValueError(
                    f"model offscreen buffer {model.vis.global_.offwidth}x{model.vis.global_.offheight} is "
                    f"smaller than the render size {self.width}x{self.height}; set <visual><global offwidth "
                    "offheight> at least as large"
                )
            self._gl.make_current()
            context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150)
            mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, context)
            scene = mujoco.MjvScene(model, maxgeom=200)
            self._resources[key] = (model, context, scene)  # keep the model alive while the key is in use
        _, context, scene = self._resources[key]
        return context, scene

    def render(
        self, model: mujoco.MjModel, data: mujoco.MjData, camera_id: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render one camera.

        Returns:
            rgb: (H, W, 3) uint8.
            depth: (H, W) float32, z-depth in metres.
            geom_ids: (H, W) int32, id of the movable geom (group 1) seen at each pixel, -1 for none.
        """
        context, scene = self._context(model)
        self._gl.make_current()
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, context)
        self._camera.fixedcamid = camera_id
        mujoco.mjv_updateScene(model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL.value, scene)
        flags = scene.flags
        flags[mujoco.mjtRndFlag.mjRND_SHADOW] = self.shadows
        flags[mujoco.mjtRndFlag.mjRND_SKYBOX] = False
        mujoco.mjr_render(self._viewport, scene, context)
        mujoco.mjr_readPixels(self._rgb, self._depth, self._viewport, context)
        rgb = np.flipud(self._rgb).copy()
        near = model.vis.map.znear * model.stat.extent
        far = model.vis.map.zfar * model.stat.extent
        depth = (near / (1.0 - np.flipud(self._depth) * (1.0 - near / far))).astype(np.float32)

        mujoco.mjv_updateScene(
            model, data, self._segment_option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL.value, scene
        )
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = True
        flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = True
        mujoco.mjr_render(self._viewport, scene, context)
        mujoco.mjr_readPixels(self._ids, None, self._viewport, context)
        flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = False
        flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = False
        ids = np.flipud(self._ids).astype(np.int32)
        segment = ids[..., 0] + (ids[..., 1] << 8) + (ids[..., 2] << 16) - 1  # index into scene.geoms
        lookup = np.full(scene.ngeom + 1, -1, dtype=np.int32)
        for k in range(scene.ngeom):
            geom = scene.geoms[k]
            if geom.objtype == mujoco.mjtObj.mjOBJ_GEOM:
                lookup[k] = geom.objid
        geom_ids = lookup[np.clip(segment, -1, scene.ngeom - 1)]  # -1 (background) hits the last entry, -1
        return rgb, depth, geom_ids

    def close(self) -> None:
        """Release the GL context and all uploaded models (required before exit under OSMesa)."""
        for _, context, _ in self._resources.values():
            context.free()
        self._resources.clear()
        if self._gl is not None:
            self._gl.free()
            self._gl = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown may have torn down the GL library
            self.close()

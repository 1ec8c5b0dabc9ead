"""The pushing environment: a gymnasium Env over a MuJoCo scene with two RGB-D cameras."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces

from keydyn.sim.config import SUGAR_BOX_SIZE, TaskConfig, task_config
from keydyn.sim.environment import (
    applied_action,
    camera_entries,
    observation_space,
    read_state,
    register_environment,
    task_intrinsics,
    write_state,
)
from keydyn.sim.meshes import MugShape, sample_mug_shape
from keydyn.sim.render import RgbdRenderer, camera_pose
from keydyn.sim.scene import SceneHandles, build_scene

_MUG_SHAPE_SEED = 20200607  # the mug set is fixed: instance k is always the same mug


def mug_instances(task: TaskConfig) -> tuple[int, ...]:
    """Instance ids of the task's mug split: training instances first, then the held-out ones."""
    if task.mug_split == "train":
        return tuple(range(task.mug_train_instances))
    return tuple(range(task.mug_train_instances, task.mug_train_instances + task.mug_test_instances))


def mug_shape(instance: int) -> MugShape:
    """The fixed procedural shape of mug `instance`."""
    return sample_mug_shape(np.random.default_rng([_MUG_SHAPE_SEED, instance]))


def yaw_quaternion(yaw: float) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a rotation by `yaw` radians about world z."""
    return np.array([math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)])


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b of (w, x, y, z) quaternions."""
    out = np.empty(4)
    mujoco.mju_mulQuat(out, np.asarray(a, dtype=float), np.asarray(b, dtype=float))
    return out


def object_yaw(quaternion: np.ndarray, axis: int = 1) -> float:
    """Yaw of the object about world z, radians in [-pi, pi): the heading of body axis `axis` minus 90 degrees.

    `axis` is a body axis that stays horizontal while the object rests (`yaw_axis`): body y for the box, flat or on
    its side, and for a standing mug; the mug's own axis, body z, for a mug on its side (it may roll about it). The
    yaw is 0 when the object was placed with yaw 0.
    """
    rotation = np.empty(9)
    mujoco.mju_quat2Mat(rotation, np.asarray(quaternion, dtype=float))
    heading = math.atan2(rotation[3 + axis], rotation[axis])  # the axis = column `axis` of the rotation matrix
    return (heading - math.pi / 2 + math.pi) % (2 * math.pi) - math.pi


def yaw_axis(task: TaskConfig) -> int:
    """The body axis whose heading is the object's yaw (see `object_yaw`)."""
    return 2 if task.object == "mug" and task.resting_face == "on_side" else 1


def resting_pose(task: TaskConfig, mug: MugShape | None) -> tuple[np.ndarray, float]:
    """The object's orientation (w, x, y, z) at yaw 0 on its resting face and its body origin's height, metres.

    Box: flat, or on its side turned +90 degrees about body y (8.7 cm tall, 3.9 x 17 cm footprint). Mug (origin at
    the centre of its base): standing; or on its side, its axis along world +y, rolled about that axis until the
    handle's outer bar touches the table beside the body (the pose it settles in), the handle towards +x.
    """
    if task.object == "mug":
        if mug is None:
            raise ValueError("a mug task needs the episode's MugShape")
        if task.resting_face == "flat":
            return np.array([1.0, 0.0, 0.0, 0.0]), 0.0
        # Rolled by `roll` from handle-down, a point (x, y) of the body's cross-section is r - x cos(roll) - y sin(roll)
        # above the table; the handle bar's outer edge (x = reach, y = thickness) touches it where that is 0.
        edge = math.hypot(mug.handle_reach, mug.handle_thickness)
        roll = math.atan2(mug.handle_thickness, mug.handle_reach) + math.acos(mug.radius / edge)
        axis_along_y = np.array([math.cos(-math.pi / 4), math.sin(-math.pi / 4), 0.0, 0.0])  # -90 deg about x
        tilt = math.pi / 2 - roll  # about world y: the handle (body x) from horizontal down to `roll` off vertical
        handle_down = np.array([math.cos(tilt / 2), 0.0, math.sin(tilt / 2), 0.0])
        return quaternion_multiply(handle_down, axis_along_y), mug.radius
    if task.resting_face == "on_side":
        return np.array([math.cos(math.pi / 4), 0.0, math.sin(math.pi / 4), 0.0]), SUGAR_BOX_SIZE[0] / 2
    return np.array([1.0, 0.0, 0.0, 0.0]), SUGAR_BOX_SIZE[2] / 2


class PushingEnv(gym.Env):
    """Push an object on a table with a cylindrical pusher, observed by RGB-D cameras.

    Action: (2,) float32 pusher velocity (vx, vy) in m/s in the world frame, clipped to +-max_speed and held
    for one control step (`control_dt`, 0.1 s by default).

    Observation (dict):
        pusher_position: (2,) float32, metres, world xy of the pusher axis.
        pusher_velocity: (2,) float32, m/s.
        For each camera NAME:
        NAME/rgb: (H, W, 3) uint8.
        NAME/depth: (H, W) float32, z-depth in metres.
        NAME/mask: (H, W) uint8, 1 where the object is visible.
        NAME/intrinsics: (3, 3) float32 pinhole K in pixels.
        NAME/pose: (4, 4) float32 T_world_camera (OpenCV camera frame), metres.

    Info (ground truth, for evaluation and baselines only): object_position (3,) metres, object_quaternion
    (4,) (w, x, y, z), object_yaw (radians), object_centre_offset (3,) metres (the object's centre in its frame,
    where evaluation measures position errors), sim_state (float64 vector of mjSTATE_INTEGRATION), mug_instance,
    mug_material, mug_rgba, and on termination `termination` ("out_of_bounds" or "tipped_over").

    With `images=False` the observation holds only the pusher fields and nothing is rendered (ground-truth
    latents and goal generation need no pixels; `render()` still works).

    The episode terminates when the object or the pusher comes within `boundary_margin` of the table edge,
    or the object tips over (more than 30 degrees from its resting face).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        task: TaskConfig | str = "top_down",
        render_mode: str | None = "rgb_array",
        images: bool = True,
        **overrides,
    ):
        self.task = task_config(task, **overrides) if isinstance(task, str) else task
        self.images = images
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode {render_mode!r} is not supported; use 'rgb_array' or None")
        self.render_mode = render_mode
        self._scenes: dict[int, tuple[mujoco.MjModel, mujoco.MjData, SceneHandles]] = {}
        if self.task.object == "mug":
            self._instances = mug_instances(self.task)
        else:
            self._instances = (-1,)
        self._instance = self._instances[0]
        self._model, self._data, self._handles = self._scene(self._instance)
        self._renderer: RgbdRenderer | None = None
        self._mug_material = -1
        self._mug_rgba = np.ones(4)
        self._yaw_axis = yaw_axis(self.task)
        self._resting_quaternion, self._rest_height = resting_pose(self.task, self._mug_shape())
        self._intrinsics = task_intrinsics(self.task)
        max_speed = np.float32(self.task.max_speed)
        self.action_space = spaces.Box(-max_speed, max_speed, shape=(2,), dtype=np.float32)
        self.observation_space = observation_space(self.task, images)

    # -- scene management -------------------------------------------------------------------------------
    def _scene(self, instance: int) -> tuple[mujoco.MjModel, mujoco.MjData, SceneHandles]:
        if instance not in self._scenes:
            model, handles = self._build_scene(mug_shape(instance) if instance >= 0 else None)
            self._scenes[instance] = (model, mujoco.MjData(model), handles)
        return self._scenes[instance]

    def _mug_shape(self) -> MugShape | None:
        return mug_shape(self._instance) if self._instance >= 0 else None

    def _object_centre_offset(self) -> np.ndarray:
        """(3,) the object's centre in its own frame, metres: the box's origin; the middle of a mug's axis (its
        frame stands on the centre of its base)."""
        mug = self._mug_shape()
        return np.zeros(3) if mug is None else np.array([0.0, 0.0, mug.height / 2])

    def _build_scene(self, mug: MugShape | None) -> tuple[mujoco.MjModel, SceneHandles]:
        """The compiled scene of the task (with `mug`); a subclass may put the pusher on a robot."""
        return build_scene(self.task, mug)

    @property
    def model(self) -> mujoco.MjModel:
        return self._model

    @property
    def data(self) -> mujoco.MjData:
        return self._data

    @property
    def handles(self) -> SceneHandles:
        return self._handles

    # -- gymnasium API ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode.

        Options:
            start: dict with object_xy (2,), object_yaw (rad), pusher_xy (2,) to place the scene exactly;
                otherwise a start is drawn from `task.start` with the env's random generator.
            mug_instance: which mug to use (mug task); otherwise drawn from the split.
            sim_state: a saved `sim_state` vector (from `info`) to restore instead of placing anything.
        """
        super().reset(seed=seed)
        options = dict(options or {})
        rng = self.np_random
        if self.task.object == "mug":
            instance = int(options.get("mug_instance", rng.choice(self._instances)))
            if instance not in self._instances:
                raise ValueError(
                    f"mug_instance {instance} is not in the {self.task.mug_split!r} split {self._instances}"
                )
            self._instance = instance
            self._model, self._data, self._handles = self._scene(instance)
            self._resting_quaternion, self._rest_height = resting_pose(self.task, self._mug_shape())
            self._mug_material = int(options.get("mug_material", rng.integers(len(self._handles.mug_materials))))
            self._mug_rgba = np.asarray(
                options.get("mug_rgba", np.append(rng.uniform(0.15, 1.0, size=3), 1.0)), dtype=float
            )
            self._model.geom_matid[self._handles.object_visual_geom] = self._handles.mug_materials[self._mug_material]
            self._model.mat_rgba[self._handles.mug_materials[self._mug_material]] = self._mug_rgba
        mujoco.mj_resetData(self._model, self._data)
        if "sim_state" in options:
            self.set_sim_state(np.asarray(options["sim_state"]))
        else:
            start = options.get("start") or self.task.start.sample(rng)
            self._place(start)
            settle_steps = round(self.task.settle_time / self.task.physics_dt)
            self._actuate(np.zeros(2))
            self._simulate(max(settle_steps, 1))
            self._data.time = 0.0
        return self._observation(), self._info()

    def _place(self, start: dict[str, Any]) -> None:
        h = self._handles
        qpos = self._data.qpos
        object_xy = np.asarray(start["object_xy"], dtype=float)
        qpos[h.object_qpos : h.object_qpos + 2] = object_xy
        qpos[h.object_qpos + 2] = self._rest_height + 1e-4
        qpos[h.object_qpos + 3 : h.object_qpos + 7] = quaternion_multiply(
            yaw_quaternion(float(start["object_yaw"])), self._resting_quaternion
        )
        self._data.qvel[:] = 0.0
        self._place_pusher(np.asarray(start["pusher_xy"], dtype=float))
        mujoco.mj_forward(self._model, self._data)

    def _place_pusher(self, pusher_xy: np.ndarray) -> None:
        """Put the pusher at world xy `pusher_xy` (2,) metres, at rest (qpos only; the caller runs mj_forward)."""
        qpos = self._handles.pusher_qpos
        self._data.qpos[qpos : qpos + 2] = pusher_xy

    def _actuate(self, velocity: np.ndarray) -> None:
        """Command the pusher velocity (2,) world xy m/s until the next command."""
        self._data.ctrl[:] = velocity

    def _simulate(self, nstep: int) -> None:
        """Advance the physics `nstep` steps of `task.physics_dt` under the last command."""
        mujoco.mj_step(self._model, self._data, nstep=nstep)

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be a finite (2,) pusher velocity in m/s, got {action!r}")
        self._actuate(applied_action(action, self.task))
        self._simulate(self.task.substeps)
        info = self._info()
        termination = self._termination()
        if termination:
            info["termination"] = termination
        return self._observation(), 0.0, bool(termination), False, info

    def render(self):
        """RGB image of the first camera, (H, W, 3) uint8."""
        if self.render_mode != "rgb_array":
            return None
        rgb, _, _ = self._ensure_renderer().render(self._model, self._data, self._handles.camera_ids[0])
        return rgb

    def camera_images(self) -> list[np.ndarray]:
        """RGB images of every camera, in `task.cameras` order, each (H, W, 3) uint8 (rendered even when the
        environment was made with images=False: for videos)."""
        renderer = self._ensure_renderer()
        return [renderer.render(self._model, self._data, camera_id)[0] for camera_id in self._handles.camera_ids]

    def camera_poses(self) -> list[np.ndarray]:
        """(4, 4) float64 T_world_camera of every camera, in `task.cameras` order, metres."""
        return [camera_pose(self._model, self._data, camera_id) for camera_id in self._handles.camera_ids]

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- state ------------------------------------------------------------------------------------------
    def sim_state(self) -> np.ndarray:
        """The full simulator state (float64 vector) that `set_sim_state` restores bit-exactly."""
        return read_state(self._model, self._data)

    def set_sim_state(self, state: np.ndarray) -> None:
        write_state(self._model, self._data, state, "this task")

    def object_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """True object position (3,) in metres and orientation quaternion (4,) (w, x, y, z)."""
        q = self._data.qpos[self._handles.object_qpos : self._handles.object_qpos + 7]
        return q[:3].copy(), q[3:].copy()

    def pusher_position(self) -> np.ndarray:
        """World xy (2,) of the pusher axis, metres."""
        return self._data.qpos[self._handles.pusher_qpos : self._handles.pusher_qpos + 2].copy()

    def pusher_velocity(self) -> np.ndarray:
        """World xy velocity (2,) of the pusher, m/s."""
        return self._data.qvel[self._handles.pusher_qvel : self._handles.pusher_qvel + 2].copy()

    def _termination(self) -> str:
        limit = self.task.table_size / 2 - self.task.boundary_margin
        position, quaternion = self.object_pose()
        if np.any(np.abs(position[:2]) > limit) or np.any(np.abs(self.pusher_position()) > limit):
            return "out_of_bounds"
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, quaternion)
        if self._yaw_axis == 2:  # a mug on its side rolls about its axis freely; the axis must stay near level
            tipped = abs(rotation[8]) > math.sin(math.radians(30))  # world z of body z
        else:
            rest = np.empty(9)
            mujoco.mju_quat2Mat(rest, self._resting_quaternion)
            up_in_body = rest.reshape(3, 3).T @ np.array([0.0, 0.0, 1.0])  # body axis that points up at rest
            tipped = (rotation.reshape(3, 3) @ up_in_body)[2] < math.cos(math.radians(30))
        return "tipped_over" if tipped else ""

    def _ensure_renderer(self) -> RgbdRenderer:
        if self._renderer is None:
            self._renderer = RgbdRenderer(self.task.width, self.task.height, self.task.shadows)
        return self._renderer

    def _observation(self) -> dict[str, np.ndarray]:
        h = self._handles
        obs: dict[str, np.ndarray] = {
            "pusher_position": self.pusher_position().astype(np.float32),
            "pusher_velocity": self.pusher_velocity().astype(np.float32),
        }
        if not self.images:
            return obs
        object_geom = np.zeros(self._model.ngeom + 1, dtype=np.uint8)
        object_geom[h.object_geoms] = 1
        poses = self.camera_poses()
        for camera, camera_id, pose in zip(self.task.cameras, h.camera_ids, poses, strict=True):
            rendered = self._render_camera(camera_id)
            obs.update(camera_entries(camera.name, rendered, object_geom, self._intrinsics[camera.name], pose))
        return obs

    def _render_camera(self, camera_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rgb, depth, geom_ids) of a camera for the observation (`RgbdRenderer.render`)."""
        return self._ensure_renderer().render(self._model, self._data, camera_id)

    def _info(self) -> dict[str, Any]:
        position, quaternion = self.object_pose()
        return {
            "object_position": position,
            "object_quaternion": quaternion,
            "object_yaw": object_yaw(quaternion, self._yaw_axis),
            "object_centre_offset": self._object_centre_offset(),
            "sim_state": self.sim_state(),
            "mug_instance": self._instance,
            "mug_material": self._mug_material,
            "mug_rgba": self._mug_rgba.copy(),
        }


register_environment("keydyn", lambda task, images: PushingEnv(task, images=images))

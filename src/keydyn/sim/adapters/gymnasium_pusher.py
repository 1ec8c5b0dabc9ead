"""gymnasium's MuJoCo `Pusher-v5` (a 7-DoF arm pushing a cylinder) as a keydyn `PushingEnvironment`.

Environment "gymnasium_pusher", task "gymnasium_pusher". The adapter wraps the real gymnasium environment
(`gym.make("Pusher-v5", xml_file=..., frame_skip=1).unwrapped`): every physics step is its `step(torques)`, every
reset starts with its `reset(seed=)`; the arm, the cylinder, their masses, joint limits, damping, contacts, torque
limits (ctrlrange +-2 N m), zero gravity and Euler integration at 0.01 s are Pusher-v5's. What the adapter changes,
and why:

- The model file: gymnasium's pusher_v5.xml loaded with `mujoco.MjSpec`, plus the task's cameras (keydyn's
  cameras, placed as in `keydyn.sim.scene`), an offscreen buffer as large as the images, and geom groups for
  keydyn's renderer: the arm and cylinder in group 1 (the object mask is read from group 1), the table in group 2,
  Pusher's goal marker in group 3, which is not drawn (keydyn's goals are images and states, not Pusher's fixed
  goal). Group numbers change nothing in the physics.
- The cylinder's mass: `OBJECT_MASS` (0.1 kg) in place of Pusher-v5's 7.9e-6 kg (density 0.01). MuJoCo sizes a
  contact's softness by the bodies' masses (not the slide joints' armature), and with mujoco 4.0 the fork passes
  through so light a cylinder, moving it at ~1 cm/s while the tip moves at 20 cm/s; with 0.1 kg it is pushed.
- The action: keydyn's (2,) world xy velocity of the arm's tip ("tips_arm", the centre of the fork's base bar),
  m/s, clipped per axis to `task.max_speed`. A velocity controller turns it into Pusher's 7 joint torques at
  every physics step (100 Hz): the joint-velocity target is the damped least-squares solution for the tip's
  linear velocity (x, y from the command, z holding `TIP_HEIGHT` above the table) and the fork's tilt rate
  (holding it level), plus a null-space pull towards `NOMINAL_POSTURE`; the torque is M(q) kv (qdot* - qdot)
  plus the bias and passive (damping) forces, clipped to the actuators' ctrlrange.
- The time limit: gymnasium's TimeLimit wrapper (100 steps) is dropped; keydyn ends episodes.
- Coordinates: keydyn's world frame is Pusher's translated by `-ORIGIN` (the table top under the middle of the
  region the arm reaches with its fork level), so the task's table square, starts and goals sit around (0, 0).
- The start: `reset` moves the cylinder (its two slide joints) and the arm (inverse kinematics on qpos, from
  `NOMINAL_POSTURE`) to the start, then settles with zero velocity for `task.settle_time`. Where the fork would
  overlap the cylinder with the tip at `pusher_xy`, the tip is put further back along the line from the cylinder
  through `pusher_xy`, 1 cm at a time, until it does not (the fork is 24 cm wide, keydyn's pusher 2 cm).

The cylinder only slides (Pusher gives it x and y slide joints): its quaternion is the identity and its yaw 0.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import mujoco
import numpy as np
from gymnasium import spaces
from gymnasium.envs.mujoco import pusher_v5

from keydyn.sim.config import CameraSpec, StartDistribution, TaskConfig, register_task
from keydyn.sim.environment import (
    UnreachableStartError,
    applied_action,
    camera_entries,
    observation_space,
    read_state,
    register_environment,
    task_intrinsics,
    write_state,
)
from keydyn.sim.render import MOVABLE_GROUP, RgbdRenderer, camera_pose
from keydyn.sim.scene import camera_xyaxes

PUSHER_XML = Path(pusher_v5.__file__).parent / "assets" / "pusher_v5.xml"
TIP_BODY = "tips_arm"
OBJECT_BODY = "object"
GOAL_BODY = "goal"
HIDDEN_GROUP = 3  # keydyn's renderer draws groups 0-2
STATIC_GROUP = 2
ORIGIN = np.array([0.45, -0.2, -0.325])
"""Pusher-world position of keydyn's origin, metres: the table top (Pusher's plane is at z = -0.325)."""
TIP_HEIGHT = 0.06
"""Height of the tip above the table, metres: the fork (capsules of radius 2 cm) meets the 10 cm cylinder."""
NOMINAL_POSTURE = np.array([1.25, 0.683, 1.373, -1.274, -0.834, -0.039, -0.031])
"""Arm joint angles (rad) the inverse kinematics starts from and the controller's null space pulls towards."""
OBJECT_MASS = 0.1
"""kg, the cylinder's mass in place of Pusher-v5's 7.9e-6 kg (module docstring: contacts with so light a body are
too soft to push it)."""
VELOCITY_GAIN = 30.0  # 1/s, joint-velocity servo (times the joint-space inertia M(q))
HEIGHT_GAIN = 10.0  # 1/s, tip height and fork tilt correction
POSTURE_GAIN = 1.0  # 1/s, null-space pull towards NOMINAL_POSTURE
START_ATTEMPTS = 100  # starts drawn before a reset without one gives up
PLACEMENT_TOLERANCE = 0.005  # m, how far from the requested start the inverse kinematics may leave the tip
DAMPING = 0.05  # damped least squares, in the units of the Jacobian (m, rad)


def pusher_model_xml(task: TaskConfig) -> str:
    """Pusher-v5's model with the task's cameras and keydyn's render groups (module docstring), as MJCF."""
    spec = mujoco.MjSpec.from_file(str(PUSHER_XML))
    movable = {body.name for body in spec.bodies if body.name not in ("world", GOAL_BODY)}
    for geom in spec.geoms:
        body = geom.parent.name
        geom.group = HIDDEN_GROUP if body == GOAL_BODY else MOVABLE_GROUP if body in movable else STATIC_GROUP
    for geom in spec.body(OBJECT_BODY).geoms:
        geom.mass = OBJECT_MASS
    for camera in task.cameras:
        added = spec.worldbody.add_camera(name=camera.name, pos=np.asarray(camera.position) + ORIGIN)
        added.alt.type = mujoco.mjtOrientation.mjORIENTATION_XYAXES
        added.alt.xyaxes = camera_xyaxes(camera).ravel()
        added.fovy = camera.fovy_deg
    spec.visual.global_.offwidth = max(spec.visual.global_.offwidth, task.width)
    spec.visual.global_.offheight = max(spec.visual.global_.offheight, task.height)
    spec.compile()
    return spec.to_xml()


def cylinder_size() -> tuple[float, float]:
    """(radius, height) of Pusher-v5's cylinder, metres, read from its model."""
    model = mujoco.MjModel.from_xml_path(str(PUSHER_XML))
    geom = model.geom_bodyid == model.body(OBJECT_BODY).id
    radius, half_height = model.geom_size[geom][0, :2]
    return float(radius), float(2 * half_height)


class GymnasiumPusherEnv(gym.Env):
    """Pusher-v5 behind keydyn's observation, info and reset contract (`keydyn.sim.environment`).

    Action: (2,) float32 tip velocity (vx, vy), m/s, keydyn world frame, held for `task.control_dt`.
    Observation: pusher_position / pusher_velocity = the tip's xy and xy velocity; per camera rgb, depth, mask
    (the cylinder's pixels), intrinsics and pose. Info: object_position (3,) (the cylinder's centre), identity
    object_quaternion, object_yaw 0, object_centre_offset zeros(3), sim_state, and mug_instance -1, mug_material
    -1, mug_rgba ones(4).
    Terminates ("out_of_bounds") when the cylinder or the tip leaves the table square (`task.table_size` less
    `task.boundary_margin`), which is where the arm reaches with its fork level.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, task: TaskConfig | str = "gymnasium_pusher", images: bool = True, **overrides) -> None:
        from keydyn.sim.config import task_config

        self.task = task_config(task, **overrides) if isinstance(task, str) else task
        self.images = images
        self.render_mode = "rgb_array"
        with tempfile.TemporaryDirectory() as folder:  # Pusher-v5 reads its model from a file
            path = Path(folder) / "pusher_keydyn.xml"
            path.write_text(pusher_model_xml(self.task))
            self._pusher = gym.make("Pusher-v5", xml_file=str(path), frame_skip=1).unwrapped
        self._model, self._data = self._pusher.model, self._pusher.data
        if not math.isclose(self._model.opt.timestep, self.task.physics_dt):
            raise ValueError(
                f"task {self.task.name!r} has physics_dt={self.task.physics_dt} but Pusher-v5 steps "
                f"{self._model.opt.timestep} s; set physics_dt={self._model.opt.timestep}"
            )
        self._tip = self._model.body(TIP_BODY).id
        self._object = self._model.body(OBJECT_BODY).id
        self._object_geoms = np.flatnonzero(self._model.geom_bodyid == self._object)
        self._fork_geoms = np.flatnonzero(
            (self._model.geom_bodyid == self._model.body("r_wrist_roll_link").id) & (self._model.geom_contype > 0)
        )
        self._arm = np.arange(self._model.nu)  # the actuated joints are the arm's first qpos / dof entries
        self._object_x = self._model.joint("obj_slidex").qposadr[0]
        self._object_y = self._model.joint("obj_slidey").qposadr[0]
        self._camera_ids = tuple(self._model.camera(c.name).id for c in self.task.cameras)
        self._renderer: RgbdRenderer | None = None
        self._intrinsics = task_intrinsics(self.task)
        max_speed = np.float32(self.task.max_speed)
        self.action_space = spaces.Box(-max_speed, max_speed, shape=(2,), dtype=np.float32)
        self.observation_space = observation_space(self.task, images)

    # -- gymnasium API ----------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode (options: `start` or `sim_state`, as `keydyn.sim.environment` describes)."""
        super().reset(seed=seed)
        options = dict(options or {})
        self._pusher.reset(seed=int(self.np_random.integers(2**31)))  # Pusher's own reset, then keydyn's start
        if "sim_state" in options:
            self.set_sim_state(np.asarray(options["sim_state"]))
        else:
            self._place_start(options.get("start"))
            for _ in range(max(round(self.task.settle_time / self.task.physics_dt), 1)):
                self._physics_step(np.zeros(2))
            self._data.time = 0.0
            mujoco.mj_forward(self._model, self._data)
        return self._observation(), self._info()

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (2,) or not np.all(np.isfinite(action)):
            raise ValueError(f"action must be a finite (2,) tip velocity in m/s, got {action!r}")
        velocity = applied_action(action, self.task)
        for _ in range(self.task.substeps):
            self._physics_step(velocity)
        mujoco.mj_forward(self._model, self._data)  # positions of the new state, for observations and info
        info = self._info()
        termination = self._termination()
        if termination:
            info["termination"] = termination
        return self._observation(), 0.0, bool(termination), False, info

    def render(self):
        """RGB image of the first camera, (H, W, 3) uint8."""
        return self.camera_images()[0]

    def camera_images(self) -> list[np.ndarray]:
        """(H, W, 3) uint8 RGB of every camera, in `task.cameras` order (also with images=False)."""
        renderer = self._ensure_renderer()
        return [renderer.render(self._model, self._data, camera_id)[0] for camera_id in self._camera_ids]

    def camera_poses(self) -> list[np.ndarray]:
        """(4, 4) float64 T_world_camera of every camera in keydyn's frame, `task.cameras` order, metres."""
        poses = [camera_pose(self._model, self._data, camera_id) for camera_id in self._camera_ids]
        for pose in poses:
            pose[:3, 3] -= ORIGIN
        return poses

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._pusher.close()

    # -- state ------------------------------------------------------------------------------------------
    def sim_state(self) -> np.ndarray:
        """Pusher's full MuJoCo state (mjSTATE_INTEGRATION, float64); the controller keeps no state of its own."""
        return read_state(self._model, self._data)

    def set_sim_state(self, state: np.ndarray) -> None:
        write_state(self._model, self._data, state, "Pusher-v5")

    def tip_position(self) -> np.ndarray:
        """(3,) tip position in keydyn's frame, metres (valid after mj_forward or a step)."""
        return self._data.xpos[self._tip] - ORIGIN

    def object_position(self) -> np.ndarray:
        """(3,) cylinder centre in keydyn's frame, metres."""
        return self._data.xpos[self._object] - ORIGIN

    # -- the tip controller -----------------------------------------------------------------------------
    def _joint_velocity_target(self, tip_velocity: np.ndarray, gain: float, posture_gain: float) -> np.ndarray:
        """(7,) rad/s for a (2,) tip xy velocity (m/s): damped least squares on the Jacobian of the tip's linear
        velocity and the fork's x/y angular velocity, whose targets are the command, `gain` times the height
        error and `gain` times the fork's tilt (rad); plus `posture_gain` times the way to NOMINAL_POSTURE,
        projected into the null space."""
        linear, angular = np.zeros((3, self._model.nv)), np.zeros((3, self._model.nv))
        mujoco.mj_jacBody(self._model, self._data, linear, angular, self._tip)
        jacobian = np.vstack([linear, angular[:2]])[:, self._arm]
        fork_normal = self._data.xmat[self._tip].reshape(3, 3)[:, 2]
        level = np.cross(fork_normal, (0.0, 0.0, 1.0))[:2]  # rotation vector (x, y) that levels the fork
        target = np.concatenate([tip_velocity, [gain * (TIP_HEIGHT - self.tip_position()[2])], gain * level])
        inverse = jacobian.T @ np.linalg.inv(jacobian @ jacobian.T + DAMPING**2 * np.eye(len(target)))
        q = self._data.qpos[self._arm]
        null = np.eye(len(q)) - inverse @ jacobian
        return inverse @ target + null @ (posture_gain * (NOMINAL_POSTURE - q))

    def _physics_step(self, tip_velocity: np.ndarray) -> None:
        """One Pusher-v5 step (one physics step, frame_skip=1) with the torques that track `tip_velocity`."""
        mujoco.mj_forward(self._model, self._data)
        qdot_target = self._joint_velocity_target(np.asarray(tip_velocity, dtype=float), HEIGHT_GAIN, POSTURE_GAIN)
        inertia = np.zeros((self._model.nv, self._model.nv))
        mujoco.mj_fullM(self._model, self._data, inertia)
        arm = np.ix_(self._arm, self._arm)
        qdot = self._data.qvel[self._arm]
        torque = (
            inertia[arm] @ (VELOCITY_GAIN * (qdot_target - qdot))
            + self._data.qfrc_bias[self._arm]
            - self._data.qfrc_passive[self._arm]
        )
        low, high = self._model.actuator_ctrlrange.T
        self._pusher.step(np.clip(torque, low, high).astype(np.float32))

    def _inverse_kinematics(self, tip_xy: np.ndarray, iterations: int = 200) -> None:
        """Set the arm's qpos so the tip is at `tip_xy` (keydyn frame), TIP_HEIGHT up, fork level (from
        NOMINAL_POSTURE; the closest reachable pose where it cannot)."""
        low, high = self._model.jnt_range[self._arm].T
        self._data.qpos[self._arm] = NOMINAL_POSTURE
        for _ in range(iterations):
            mujoco.mj_kinematics(self._model, self._data)
            mujoco.mj_comPos(self._model, self._data)
            step = self._joint_velocity_target(np.asarray(tip_xy, dtype=float) - self.tip_position()[:2], 1.0, 0.1)
            self._data.qpos[self._arm] = np.clip(self._data.qpos[self._arm] + step, low, high)
        mujoco.mj_forward(self._model, self._data)

    def _fork_touches_object(self) -> bool:
        for contact in self._data.contact[: self._data.ncon]:
            geoms = {int(contact.geom1), int(contact.geom2)}
            if geoms & set(self._object_geoms) and geoms & set(self._fork_geoms) and contact.dist < 0:
                return True
        return False

    def _place_start(self, start: dict[str, Any] | None) -> None:
        """Place `start`, or without one the first drawn start (task.start) that the arm can take."""
        if start is not None:
            self._place(start)
            return
        for _ in range(START_ATTEMPTS):
            try:
                self._place(self.task.start.sample(self.np_random))
                return
            except UnreachableStartError:
                continue
        raise UnreachableStartError(
            f"none of {START_ATTEMPTS} starts drawn from the task's start distribution could be taken; narrow it"
        )

    def _place(self, start: dict[str, Any]) -> None:
        """Cylinder at start["object_xy"]; tip at start["pusher_xy"], or further back (module docstring)."""
        object_xy = np.asarray(start["object_xy"], dtype=float)
        body_xy = self._model.body_pos[self._object][:2]  # the slide joints move the body from its model position
        self._data.qpos[self._object_x] = object_xy[0] + ORIGIN[0] - body_xy[0]
        self._data.qpos[self._object_y] = object_xy[1] + ORIGIN[1] - body_xy[1]
        self._data.qvel[:] = 0.0
        pusher_xy = np.asarray(start["pusher_xy"], dtype=float)
        away = pusher_xy - object_xy
        away /= max(np.linalg.norm(away), 1e-9)
        for retreat in np.arange(0.0, 0.3, 0.01):
            target = pusher_xy + retreat * away
            self._inverse_kinematics(target)
            if not self._fork_touches_object():
                break
        else:
            raise UnreachableStartError(
                f"the fork overlaps the cylinder at {np.round(object_xy, 3).tolist()} even 29 cm behind pusher_xy "
                f"{np.round(pusher_xy, 3).tolist()}; start the pusher further from the object"
            )
        missed = float(np.linalg.norm(self.tip_position()[:2] - target))
        if missed > PLACEMENT_TOLERANCE:
            raise UnreachableStartError(
                f"the arm's tip cannot reach {np.round(target, 3).tolist()} (closest {missed * 100:.1f} cm away) with "
                "the fork level; start within the task's table"
            )

    def _termination(self) -> str:
        limit = self.task.table_size / 2 - self.task.boundary_margin
        if np.any(np.abs(self.object_position()[:2]) > limit) or np.any(np.abs(self.tip_position()[:2]) > limit):
            return "out_of_bounds"
        return ""

    # -- observations -----------------------------------------------------------------------------------
    def _ensure_renderer(self) -> RgbdRenderer:
        if self._renderer is None:
            self._renderer = RgbdRenderer(self.task.width, self.task.height, self.task.shadows)
        return self._renderer

    def _observation(self) -> dict[str, np.ndarray]:
        linear = np.zeros(6)
        mujoco.mj_objectVelocity(self._model, self._data, mujoco.mjtObj.mjOBJ_XBODY, self._tip, linear, 0)
        obs: dict[str, np.ndarray] = {
            "pusher_position": self.tip_position()[:2].astype(np.float32),
            "pusher_velocity": linear[3:5].astype(np.float32),
        }
        if not self.images:
            return obs
        renderer = self._ensure_renderer()
        object_geom = np.zeros(self._model.ngeom + 1, dtype=np.uint8)
        object_geom[self._object_geoms] = 1
        for camera, camera_id, pose in zip(self.task.cameras, self._camera_ids, self.camera_poses(), strict=True):
            rendered = renderer.render(self._model, self._data, camera_id)
            obs.update(camera_entries(camera.name, rendered, object_geom, self._intrinsics[camera.name], pose))
        return obs

    def _info(self) -> dict[str, Any]:
        return {
            "object_position": self.object_position().copy(),
            "object_quaternion": np.array([1.0, 0.0, 0.0, 0.0]),
            "object_yaw": 0.0,
            "object_centre_offset": np.zeros(3),  # object_position is the cylinder's centre
            "sim_state": self.sim_state(),
            "mug_instance": -1,
            "mug_material": -1,
            "mug_rgba": np.ones(4),
        }


_CAMERAS = (
    CameraSpec("top_down", position=(0.0, 0.0, 0.8), up=(0.0, 1.0, 0.0)),
    # From the side away from the arm's shoulder, pitched down at the table centre.
    CameraSpec("angled", position=(0.55, 0.3, 0.55), up=(0.0, 0.0, 1.0)),
)

register_environment("gymnasium_pusher", lambda task, images: GymnasiumPusherEnv(task, images=images))
register_task(
    TaskConfig(
        name="gymnasium_pusher",
        environment="gymnasium_pusher",
        object="cylinder",
        cylinder_size=cylinder_size(),
        cameras=_CAMERAS,
        physics_dt=0.01,  # Pusher-v5's timestep
        max_speed=0.2,
        table_size=0.3,
        boundary_margin=0.0,
        start=StartDistribution(object_xy_range=0.04, pusher_behind=(0.09, 0.1), pusher_lateral=0.02),
    )
)

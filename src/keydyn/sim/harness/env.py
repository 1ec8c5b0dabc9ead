"""The simulated-hardware harness: keydyn's table and box pushed by an iiwa arm, seen by a D415-like camera.

It stands in for a robot: the pusher is carried by a 7-DoF arm whose joint position servos follow a 200 Hz
differential IK (`keydyn.sim.harness.control`) tracking the 5 Hz velocity commands, and the camera's images are
noisy, holed, one frame late and reported with a slightly wrong pose (`keydyn.sim.harness.camera`). Registered as
environment "harness", with task "harness".
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import mujoco
import numpy as np

from keydyn.sim.config import CameraSpec, StartDistribution, TaskConfig, register_task, task_config
from keydyn.sim.env import PushingEnv
from keydyn.sim.environment import read_state, register_environment, write_state
from keydyn.sim.harness.camera import D415Model
from keydyn.sim.harness.control import DifferentialIK, IKConfig
from keydyn.sim.harness.iiwa import PUSH_HEIGHT, iiwa_mount, planar_pose
from keydyn.sim.meshes import MugShape
from keydyn.sim.render import camera_pose
from keydyn.sim.scene import SceneHandles, build_scene


def _whole_steps(duration: float, physics_dt: float, what: str) -> int:
    """`duration` seconds as a whole number of physics steps (ValueError naming `what` when it is not one)."""
    steps = round(duration / physics_dt)
    if abs(steps * physics_dt - duration) > 1e-9 or steps < 1:
        raise ValueError(f"{what} ({duration} s) must be a whole multiple of physics_dt ({physics_dt} s)")
    return steps


class HarnessEnv(PushingEnv):
    """keydyn's pushing task with the pusher on an iiwa arm and a D415-like camera (see the module docstring).

    The interface is `PushingEnv`'s (`keydyn.sim.environment`), with these differences: the pusher position and
    velocity are the pusher tip's (world xy, metres and m/s); a start places the tip at `pusher_xy` at the
    pushing height by inverse kinematics (the arm is put there at rest: no motion from a hover pose is
    simulated); the images are degraded by `camera` and show the scene `camera.latency` seconds (in whole
    physics steps) before the observation (after a reset from a `sim_state`, which holds no history: the current
    scene); and NAME/pose and `camera_poses()` give the pose the rig reports, with its calibration error.

    Args:
        task: a task (or its registered name) whose `physics_dt` divides the IK period and the camera latency.
        ik: the differential IK's settings.
        camera: the camera's degradations (all cameras of the task share them).
    """

    def __init__(
        self,
        task: TaskConfig | str = "harness",
        render_mode: str | None = "rgb_array",
        images: bool = True,
        ik: IKConfig | None = None,
        camera: D415Model | None = None,
        **overrides,
    ):
        super().__init__(task, render_mode, images, **overrides)
        self.ik = ik or IKConfig()
        self.camera = camera or D415Model()
        dt = self.task.physics_dt
        self._tick_steps = _whole_steps(1.0 / self.ik.rate_hz, dt, "the IK period")
        self._latency_steps = round(self.camera.latency / dt)  # 1/30 s is 33 steps of 1 ms
        if self.task.substeps % self._tick_steps:
            raise ValueError(f"control_dt ({self.task.control_dt} s) must be a whole number of IK periods")
        if self._latency_steps > self.task.substeps:
            raise ValueError(f"the camera latency ({self.camera.latency} s) exceeds control_dt; lower latency_frames")
        self._controller = DifferentialIK(self._model, self.ik, PUSH_HEIGHT)
        self._view = mujoco.MjData(self._model)  # the scene as the camera saw it
        self._lagged = False  # whether _view holds the lagged scene
        self._calibration = self.camera.calibration_error()
        self._noise: np.random.Generator | None = None  # the episode's depth noise, drawn from its start state
        self._fovy = dict(zip(self._handles.camera_ids, (c.fovy_deg for c in self.task.cameras), strict=True))

    def _build_scene(self, mug: MugShape | None) -> tuple[mujoco.MjModel, SceneHandles]:
        return build_scene(self.task, mug, iiwa_mount(self.task))

    def _ik(self) -> DifferentialIK:
        if self._controller.model is not self._model:  # another mug's scene: same arm, another model
            self._controller = DifferentialIK(self._model, self.ik, PUSH_HEIGHT)
            self._view = mujoco.MjData(self._model)
        return self._controller

    @property
    def base(self) -> np.ndarray:
        """World position (3,) of the arm's base, metres."""
        return self._model.body("iiwa_base").pos.copy()  # a child of the world body: its pos is in the world

    # -- the arm ----------------------------------------------------------------------------------------
    def _place_pusher(self, pusher_xy: np.ndarray) -> None:
        controller = self._ik()
        tip = np.array([pusher_xy[0], pusher_xy[1], PUSH_HEIGHT])
        mujoco.mj_kinematics(self._model, self._data)
        q = controller.solve(tip, planar_pose(tip, self.base))
        self._data.qpos[controller.qpos] = q
        self._data.ctrl[controller.actuators] = q

    def _actuate(self, velocity: np.ndarray) -> None:
        self._ik().command = np.asarray(velocity, dtype=float).copy()

    def _simulate(self, nstep: int) -> None:
        """`nstep` physics steps with an IK tick every IK period, saving the scene `camera.latency` before the end
        for the images."""
        controller = self._ik()
        snapshot = nstep - self._latency_steps if self.images else -1
        self._lagged = False
        done = 0
        while done < nstep:
            if done == snapshot and self._latency_steps:
                self._save_view()
            if done % self._tick_steps == 0:
                controller.tick(self._data)
            n = min(self._tick_steps - done % self._tick_steps, nstep - done)
            if done < snapshot < done + n:
                n = snapshot - done
            mujoco.mj_step(self._model, self._data, nstep=n)
            done += n
        mujoco.mj_forward(self._model, self._data)  # positions and velocities of the new state, for the observation

    def _save_view(self) -> None:
        write_state(self._model, self._view, read_state(self._model, self._data), "the harness")
        self._lagged = True

    def set_sim_state(self, state: np.ndarray) -> None:
        super().set_sim_state(state)
        self._lagged = False

    def pusher_position(self) -> np.ndarray:
        """World xy (2,) of the pusher tip, metres."""
        return self._data.site_xpos[self._ik().site, :2].copy()

    def pusher_velocity(self) -> np.ndarray:
        """World xy velocity (2,) of the pusher tip, m/s."""
        velocity = np.empty(6)
        mujoco.mj_objectVelocity(self._model, self._data, mujoco.mjtObj.mjOBJ_SITE, self._ik().site, velocity, 0)
        return velocity[3:5].copy()

    def joint_positions(self) -> np.ndarray:
        """The arm's joint angles (7,), radians."""
        return self._data.qpos[self._ik().qpos].copy()

    # -- the camera -------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._noise = None
        return super().reset(seed=seed, options=options)

    def _noise_generator(self) -> np.random.Generator:
        """The episode's depth noise and holes: seeded by its start state (the state at its first image), so an
        episode's images depend only on where it started, whichever process and whatever ran before it."""
        if self._noise is None:
            digest = hashlib.sha256(self.sim_state().tobytes()).digest()
            self._noise = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
        return self._noise

    def _render_camera(self, camera_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        data = self._view if self._lagged else self._data
        rgb, depth, geom_ids = self._ensure_renderer().render(self._model, data, camera_id)
        return rgb, self.camera.degrade_depth(depth, self._fovy[camera_id], self._noise_generator()), geom_ids

    def camera_poses(self) -> list[np.ndarray]:
        """(4, 4) T_world_camera the rig reports for every camera (true pose times the calibration error)."""
        return [pose @ self._calibration for pose in self.true_camera_poses()]

    def true_camera_poses(self) -> list[np.ndarray]:
        """(4, 4) true T_world_camera of every camera, metres."""
        return [camera_pose(self._model, self._data, camera_id) for camera_id in self._handles.camera_ids]


def harness_task() -> TaskConfig:
    """The harness task: the sugar box on a 0.40 m table that the arm reaches everywhere, one D415-like camera
    about 1 m above it, tilted 15 deg towards +y like a real mount, 640x480, 5 Hz control, 1 ms physics.

    The workspace (0.34 m square inside the boundary margin) is a third of keydyn's: at the collection policy's
    default 0.15-0.25 m/s a 0.2 s step moves the pusher 3-5 cm and pushes leave it within 10 steps, so collect
    with slower pushes (`keydyn collect --task harness --steps 20 --policy.min-speed 0.05 --policy.max-speed 0.1`
    kept 4 episodes of 16-19 frames in 4 attempts).
    """
    top_down = task_config("top_down")
    return replace(
        top_down,
        name="harness",
        environment="harness",
        cameras=(CameraSpec("d415", position=(0.0, -0.25, 0.95), target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)),),
        width=640,
        height=480,
        control_dt=0.2,
        physics_dt=0.001,
        # The arm's reach (keydyn.sim.harness.iiwa) bounds the table: 0.40 m, its base 0.38 m from the edge.
        table_size=0.40,
        start=StartDistribution(object_xy_range=0.05, pusher_behind=(0.11, 0.12), pusher_lateral=0.03),
    )


register_environment("harness", lambda task, images: HarnessEnv(task, images=images))
register_task(harness_task())

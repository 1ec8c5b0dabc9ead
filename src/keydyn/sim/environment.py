"""The environment or robot interface that collection, training, control and evaluation read, and its registry.

A task names its environment (`TaskConfig.environment`); `make_environment(task)` builds it through the factory
registered under that name. keydyn's own MuJoCo scene is "keydyn" (`PushingEnv`); an adapter for another simulator
or a real robot is one module that implements `PushingEnvironment` and calls `register_environment`.

What an environment gives (docs/extending.md, "A new robot or environment"):

- `reset(seed=, options=)` -> (observation, info); options: `start` = {object_xy (2,), object_yaw (rad),
  pusher_xy (2,)} to place the scene, or `sim_state` to restore a state from an earlier `info`.
- `step(action)` with a (2,) world xy pusher velocity in m/s, applied clipped per axis to +-task.max_speed
  (`applied_action`, what datasets store) -> (observation, reward, terminated, truncated, info); on termination
  `info["termination"]` names why ("out_of_bounds", "tipped_over").
- observation: `pusher_position` (2,) metres and `pusher_velocity` (2,) m/s; per camera NAME of `task.cameras`:
  NAME/rgb (H, W, 3) uint8, NAME/depth (H, W) float32 metres (0 or NaN: no reading), NAME/mask (H, W) uint8 object
  pixels (for descriptor training), NAME/intrinsics (3, 3) K in pixels, NAME/pose (4, 4) T_world_camera (OpenCV
  camera frame, metres). With `images=False` only the pusher entries.
- info (ground truth, where it exists: for datasets, GT 3D and evaluation): object_position (3,) metres,
  object_quaternion (4,) (w, x, y, z), object_yaw (rad), object_centre_offset (3,) metres (optional: the object's
  centre in its own frame, where evaluation measures the position error; without it, the frame's origin),
  sim_state (float64 vector), mug_instance, mug_material, mug_rgba (-1, -1 and ones(4) for objects that are not
  mugs).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import mujoco
import numpy as np
from gymnasium import spaces

from keydyn.sim.config import TaskConfig
from keydyn.sim.render import camera_intrinsics

ACTION_DIM = 2
"""An action is a (2,) world xy pusher velocity, m/s."""


def applied_action(action: np.ndarray, task: TaskConfig) -> np.ndarray:
    """The (2,) float64 world xy pusher velocity (m/s) an environment applies for the command `action`: clipped per
    axis to +-task.max_speed. Collection stores this as the step's action, not the command, so that a policy
    faster than the task's pusher never gives a dataset actions that did not happen."""
    return np.clip(np.asarray(action, dtype=np.float64), -task.max_speed, task.max_speed)


@runtime_checkable
class PushingEnvironment(Protocol):
    """A pushing environment or robot, as keydyn reads it (the module docstring gives the entries)."""

    task: TaskConfig
    images: bool

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]: ...

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]: ...

    def camera_images(self) -> list[np.ndarray]:
        """(H, W, 3) uint8 RGB of every camera in `task.cameras` order, also with images=False (for videos)."""
        ...

    def camera_poses(self) -> list[np.ndarray]:
        """(4, 4) float64 T_world_camera of every camera in `task.cameras` order, metres."""
        ...

    def sim_state(self) -> np.ndarray:
        """The state vector that `reset(options={"sim_state": ...})` restores."""
        ...

    def close(self) -> None: ...


STATE_SPEC = mujoco.mjtState.mjSTATE_INTEGRATION
"""The MuJoCo state a `sim_state` holds: everything needed to replay a frame bit-exactly."""


def observation_space(task: TaskConfig, images: bool) -> spaces.Dict:
    """The observation space of the entries above for `task` (the pusher entries alone without `images`)."""
    h, w = task.height, task.width
    fields: dict[str, spaces.Space] = {  # unbounded: a start may put the pusher off the table
        "pusher_position": spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32),
        "pusher_velocity": spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32),
    }
    for camera in task.cameras if images else ():
        fields[f"{camera.name}/rgb"] = spaces.Box(0, 255, shape=(h, w, 3), dtype=np.uint8)
        fields[f"{camera.name}/depth"] = spaces.Box(0, np.inf, shape=(h, w), dtype=np.float32)
        fields[f"{camera.name}/mask"] = spaces.Box(0, 1, shape=(h, w), dtype=np.uint8)
        fields[f"{camera.name}/intrinsics"] = spaces.Box(-np.inf, np.inf, shape=(3, 3), dtype=np.float32)
        fields[f"{camera.name}/pose"] = spaces.Box(-np.inf, np.inf, shape=(4, 4), dtype=np.float32)
    return spaces.Dict(fields)


def task_intrinsics(task: TaskConfig) -> dict[str, np.ndarray]:
    """(3, 3) float32 K of every camera of `task`, pixels, by name (fixed: computed once, not every step)."""
    return {c.name: camera_intrinsics(c.fovy_deg, task.width, task.height).astype(np.float32) for c in task.cameras}


def camera_entries(
    name: str,
    rendered: tuple[np.ndarray, np.ndarray, np.ndarray],
    object_geoms: np.ndarray,
    intrinsics: np.ndarray,
    pose: np.ndarray,
) -> dict[str, np.ndarray]:
    """Camera `name`'s observation entries from its `RgbdRenderer.render` output (rgb, depth, geom ids), a
    (ngeom + 1,) uint8 lookup that is 1 at the object's geoms (its last entry, for id -1, 0), its (3, 3) K and its
    (4, 4) T_world_camera."""
    rgb, depth, geom_ids = rendered
    return {
        f"{name}/rgb": rgb,
        f"{name}/depth": depth,
        f"{name}/mask": object_geoms[geom_ids],  # index -1 hits the trailing zero
        f"{name}/intrinsics": intrinsics.copy(),
        f"{name}/pose": pose.astype(np.float32),
    }


def read_state(model: mujoco.MjModel, data: mujoco.MjData) -> np.ndarray:
    """The full simulator state (float64 vector of `STATE_SPEC`) that `write_state` restores bit-exactly."""
    state = np.empty(mujoco.mj_stateSize(model, STATE_SPEC))
    mujoco.mj_getState(model, data, state, STATE_SPEC)
    return state


def write_state(model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, owner: str) -> None:
    """Restore a `read_state` vector and recompute positions; a vector of another size is a ValueError naming
    `owner` (whose state it is not)."""
    expected = mujoco.mj_stateSize(model, STATE_SPEC)
    if state.shape != (expected,):
        raise ValueError(f"sim_state has shape {state.shape}, {owner}'s state has ({expected},)")
    mujoco.mj_setState(model, data, np.asarray(state, dtype=np.float64), STATE_SPEC)
    mujoco.mj_forward(model, data)


class UnreachableStartError(ValueError):
    """`reset(options={"start": ...})` asked for a start the robot cannot take (its pusher out of reach, or
    overlapping the object); goal-pair generation draws another start instead."""


EnvironmentFactory = Callable[[TaskConfig, bool], PushingEnvironment]
"""Builds an environment for a task: factory(task, images)."""

_ENVIRONMENTS: dict[str, EnvironmentFactory] = {}


def register_environment(name: str, factory: EnvironmentFactory) -> None:
    """Make `name` usable as `TaskConfig.environment`; registering a name again replaces its factory."""
    _ENVIRONMENTS[name] = factory


def environment_names() -> tuple[str, ...]:
    return tuple(sorted(_ENVIRONMENTS))


def _imported_factory(reference: str) -> EnvironmentFactory:
    """The factory `reference` ("package.module:name") names, imported, and registered under that reference."""
    module_name, _, attribute = reference.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as error:
        raise ValueError(
            f"environment {reference!r}: cannot import {attribute!r} from module {module_name!r} ({error}); name an "
            "importable 'package.module:factory'"
        ) from error
    register_environment(reference, factory)
    return factory


def make_environment(task: TaskConfig, images: bool = True) -> PushingEnvironment:
    """The environment `task.environment` names, built for `task` (rendering images only when `images`): a
    registered name, or "package.module:factory", imported on first use (so that worker processes and Ray actors,
    which have not imported the module that registers it, find it too).

    Raises:
        ValueError: no environment is registered under that name.
    """
    factory = _ENVIRONMENTS.get(task.environment)
    if factory is None and ":" in task.environment:
        factory = _imported_factory(task.environment)
    if factory is None:
        raise ValueError(
            f"task {task.name!r} runs in environment {task.environment!r}, which is not registered (known: "
            f"{', '.join(environment_names())}); import the module that calls keydyn.sim.register_environment"
        )
    return factory(task, images)

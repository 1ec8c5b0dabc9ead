"""The environment or robot interface that collection, training, control and evaluation read, and its registry.

A task names its environment (`TaskConfig.environment`); `make_environment(task)` builds it through the factory
registered under that name. keydyn's own MuJoCo scene is "keydyn" (`PushingEnv`); an adapter for another simulator
or a real robot is one module that implements `PushingEnvironment` and calls `register_environment`.

What an environment gives (docs/extending.md, "A new robot or environment"):

- `reset(seed=, options=)` -> (observation, info); options: `start` = {object_xy (2,), object_yaw (rad),
  pusher_xy (2,)} to place the scene, or `sim_state` to restore a state from an earlier `info`.
- `step(action)` with a (2,) world xy pusher velocity in m/s -> (observation, reward, terminated, truncated,
  info); on termination `info["termination"]` names why ("out_of_bounds", "tipped_over").
- observation: `pusher_position` (2,) metres and `pusher_velocity` (2,) m/s; per camera NAME of `task.cameras`:
  NAME/rgb (H, W, 3) uint8, NAME/depth (H, W) float32 metres (0 or NaN: no reading), NAME/mask (H, W) uint8 object
  pixels (for descriptor training), NAME/intrinsics (3, 3) K in pixels, NAME/pose (4, 4) T_world_camera (OpenCV
  camera frame, metres). With `images=False` only the pusher entries.
- info (ground truth, where it exists: for datasets, GT 3D and evaluation): object_position (3,) metres,
  object_quaternion (4,) (w, x, y, z), object_yaw (rad), sim_state (float64 vector), mug_instance, mug_material,
  mug_rgba (-1, -1 and ones(4) for objects that are not mugs).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np

from keydyn.sim.config import TaskConfig

ACTION_DIM = 2
"""An action is a (2,) world xy pusher velocity, m/s."""


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

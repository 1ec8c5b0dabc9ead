"""Simulated pushing tasks (MuJoCo) with the gymnasium API.

Each task of the paper is registered as a gymnasium environment: ``gymnasium.make("keydyn/top_down-v0")``,
and likewise ``angled``, ``occlusions`` and ``mugs``; keyword arguments override task options
(``width=640, height=480``). Built in beside them: task "gymnasium_pusher" (gymnasium's Pusher-v5 arm, through the
adapter `keydyn.sim.adapters.gymnasium_pusher`) and task "harness" (``keydyn/harness-v0``), run in `HarnessEnv`
(an iiwa arm and a D415-like camera, `keydyn.sim.harness`).
"""

import gymnasium as gym

from keydyn.sim.adapters import gymnasium_pusher  # noqa: F401  (registers environment and task "gymnasium_pusher")
from keydyn.sim.config import TASK_NAMES, CameraSpec, TaskConfig, register_task, task_config, task_names
from keydyn.sim.env import PushingEnv
from keydyn.sim.environment import (
    PushingEnvironment,
    UnreachableStartError,
    environment_names,
    make_environment,
    register_environment,
)
from keydyn.sim.harness import HarnessEnv
from keydyn.sim.policy import RandomPushConfig, RandomPushPolicy

for _name in TASK_NAMES:
    _id = f"keydyn/{_name}-v0"
    if _id not in gym.registry:
        gym.register(id=_id, entry_point="keydyn.sim.env:PushingEnv", kwargs={"task": _name})
if "keydyn/harness-v0" not in gym.registry:
    gym.register(id="keydyn/harness-v0", entry_point="keydyn.sim.harness.env:HarnessEnv")

__all__ = [
    "TASK_NAMES",
    "CameraSpec",
    "HarnessEnv",
    "PushingEnv",
    "PushingEnvironment",
    "RandomPushConfig",
    "RandomPushPolicy",
    "TaskConfig",
    "UnreachableStartError",
    "environment_names",
    "make_environment",
    "register_environment",
    "register_task",
    "task_config",
    "task_names",
]

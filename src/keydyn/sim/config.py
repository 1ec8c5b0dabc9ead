"""Task configuration: frozen dataclasses for cameras, objects and the four pushing tasks of the paper."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

SUGAR_BOX_SIZE = (0.0867, 0.1703, 0.0391)  # metres, YCB 004 sugar box collision box (x, y, z)
SUGAR_BOX_MASS = 0.514  # kg

TASK_NAMES = ("top_down", "angled", "occlusions", "mugs")  # the paper's tasks; task_names() lists every task


@dataclass(frozen=True)
class CameraSpec:
    """A pinhole camera looking from `position` at `target` (world frame, metres).

    `up` is the world direction that appears upwards in the image; rotating it turns the camera about its
    optical axis. `fovy_deg` is the vertical field of view (the RealSense D415 colour camera's is ~40.4 deg).
    """

    name: str
    position: tuple[float, float, float]
    target: tuple[float, float, float] = (0.0, 0.0, 0.0)
    up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    fovy_deg: float = 40.4


@dataclass(frozen=True)
class StartDistribution:
    """Random start states, as in the original code (metres, radians).

    The object is placed at a uniform position within +-object_xy_range and uniform yaw; the pusher is put
    `pusher_behind` behind it along a uniform random push heading, with a lateral offset in +-pusher_lateral.
    """

    object_xy_range: float = 0.25
    pusher_behind: tuple[float, float] = (0.15, 0.16)
    pusher_lateral: float = 0.08

    def sample(self, rng: np.random.Generator) -> dict[str, Any]:
        """Draw a start: object_xy (2,) and object_yaw (rad), pusher_xy (2,) behind the object along a random
        push heading (the `start` option of an environment's reset)."""
        object_xy = rng.uniform(-self.object_xy_range, self.object_xy_range, size=2)
        yaw = float(rng.uniform(0.0, 2 * math.pi))
        heading = float(rng.uniform(0.0, 2 * math.pi))
        behind = rng.uniform(*self.pusher_behind)
        lateral = rng.uniform(-self.pusher_lateral, self.pusher_lateral)
        forward = np.array([math.cos(heading), math.sin(heading)])
        left = np.array([-forward[1], forward[0]])
        pusher_xy = object_xy - behind * forward + lateral * left
        return {"object_xy": object_xy, "object_yaw": yaw, "pusher_xy": pusher_xy}


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Raise ValueError naming `flag` when `seed` is negative (numpy's and gymnasium's seeds are >= 0)."""
    if seed < 0:
        raise ValueError(f"{flag} must be >= 0, got {seed}")


MAX_IMAGE_SIDE = 2048
"""Largest image width or height, in pixels, a task renders (memory per episode grows with the pixels)."""


@dataclass(frozen=True)
class TaskConfig:
    """Everything that defines a pushing task. Units: metres, seconds, kilograms, pixels.

    `width` x `height` defaults to 320x240: a quarter of the paper's 640x480 pixels, which renders ~3x faster
    on a CPU (measured in benchmarks/collect.py) and keeps the box ~45 px long in the top-down view, enough for
    dense descriptors; 640x480 works unchanged.
    """

    name: str
    environment: str = "keydyn"  # the registered environment that runs the task (keydyn.sim.environment)
    object: Literal["sugar_box", "mug", "cylinder"] = "sugar_box"  # a cylinder is gymnasium_pusher's (no yaw)
    cylinder_size: tuple[float, float] = (0.05, 0.1)  # radius, height of object "cylinder", metres
    resting_face: Literal["flat", "on_side"] = "flat"  # a mug "flat" stands upright
    cameras: tuple[CameraSpec, ...] = ()
    width: int = 320
    height: int = 240
    control_dt: float = 0.1
    physics_dt: float = 0.002
    max_speed: float = 0.3  # m/s, per axis clip of the pusher velocity command
    pusher_radius: float = 0.01
    pusher_mass: float = 10.0
    pusher_gain: float = 2000.0  # N s/m, velocity servo gain
    table_size: float = 0.8  # square table, metres
    boundary_margin: float = 0.03  # episode ends when the object or pusher is this close to the table edge
    object_friction: float = 0.9
    pusher_friction: float = 0.9
    mug_mass: float = 0.35
    mug_split: Literal["train", "test"] = "train"
    mug_train_instances: int = 10
    mug_test_instances: int = 5
    mug_textures: int = 8
    shadows: bool = False  # shadows halve the CPU rendering rate (shared/reference/measurements.md)
    settle_time: float = 0.3  # seconds simulated with zero action after placing the object
    start: StartDistribution = field(default_factory=StartDistribution)

    def __post_init__(self) -> None:
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size {self.width}x{self.height} is too small; use at least 16x16 pixels")
        if max(self.width, self.height) > MAX_IMAGE_SIDE:
            episode_gb = 41 * self.width * self.height * 8 * len(self.cameras) / 1e9  # RGB + depth + mask bytes
            raise ValueError(
                f"image size {self.width}x{self.height} is too large: at most {MAX_IMAGE_SIDE} pixels on a side (a "
                f"41-frame episode would hold {episode_gb:.1f} GB per worker); the paper used 640x480"
            )
        if not self.cameras:
            raise ValueError(f"task {self.name!r} has no cameras; give at least one CameraSpec")
        steps = self.control_dt / self.physics_dt
        if abs(steps - round(steps)) > 1e-6 or steps < 1:
            raise ValueError(f"control_dt={self.control_dt} must be a whole multiple of physics_dt={self.physics_dt}")

    @property
    def substeps(self) -> int:
        return round(self.control_dt / self.physics_dt)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(data: dict[str, Any]) -> TaskConfig:
        data = dict(data)
        data["cameras"] = tuple(
            CameraSpec(**{**c, "position": tuple(c["position"]), "target": tuple(c["target"]), "up": tuple(c["up"])})
            for c in data["cameras"]
        )
        start = dict(data.get("start", {}))
        if "pusher_behind" in start:
            start["pusher_behind"] = tuple(start["pusher_behind"])
        data["start"] = StartDistribution(**start)
        if "cylinder_size" in data:
            data["cylinder_size"] = tuple(data["cylinder_size"])
        return TaskConfig(**data)


_TOP_DOWN_CAMERAS = (
    CameraSpec("top_down", position=(0.0, 0.0, 1.2), up=(0.0, 1.0, 0.0)),
    # Same place, turned 90 degrees about the optical axis, slightly offset for parallax.
    CameraSpec("top_down_rotated", position=(0.04, 0.0, 1.2), target=(0.04, 0.0, 0.0), up=(-1.0, 0.0, 0.0)),
)
_ANGLED_CAMERAS = (
    # Two adjacent sides of the table, pitched 45 degrees down at the table centre, 1.2 m away.
    CameraSpec("angled", position=(0.0, -0.8485, 0.8485), up=(0.0, 0.0, 1.0)),
    CameraSpec("angled_side", position=(0.8485, 0.0, 0.8485), up=(0.0, 0.0, 1.0)),
)


_TASKS: dict[str, TaskConfig] = {}


def register_task(config: TaskConfig) -> None:
    """Make `config` the preset of task `config.name`, for `task_config` and every --task option (an adapter to
    another environment registers its task beside its environment; registering a name again replaces it)."""
    _TASKS[config.name] = config


def task_names() -> tuple[str, ...]:
    """Every registered task: the paper's four (`TASK_NAMES`) first."""
    return TASK_NAMES + tuple(sorted(set(_TASKS) - set(TASK_NAMES)))


def task_config(name: str, **overrides: Any) -> TaskConfig:
    """The preset of a registered task, with field overrides (e.g. width=640, height=480).

    Raises:
        ValueError: unknown task name or field.
    """
    if name not in _TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(task_names())}")
    known = {f.name for f in dataclasses.fields(TaskConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown task option(s) {sorted(unknown)}; valid options: {sorted(known)}")
    return dataclasses.replace(_TASKS[name], **overrides)


def held_out_task(name: str) -> str | None:
    """The registered task that is task `name` with its held-out object instances (a mug task whose `mug_split` is
    "test" and that is otherwise the same): where a method trained on `name` is also evaluated, beyond the
    instances it trained on (`mugs` -> `mugs_unseen`). None when `name` has no held-out instances registered."""
    config = task_config(name)
    if config.object != "mug" or config.mug_split != "train":
        return None
    held_out = dataclasses.replace(config, mug_split="test")
    for other in _TASKS.values():
        if dataclasses.replace(other, name=name) == held_out:
            return other.name
    return None


for _paper_task in (
    TaskConfig(name="top_down", cameras=_TOP_DOWN_CAMERAS),
    TaskConfig(name="angled", cameras=_ANGLED_CAMERAS),
    # On its side the box is 8.7 cm tall on a 3.9 cm footprint: with the table friction of the flat task a push
    # tips it over, so the friction is that of cardboard on a smooth table.
    TaskConfig(name="occlusions", resting_face="on_side", cameras=_ANGLED_CAMERAS, object_friction=0.35),
    # As the paper's mugs: on its side (resting against its handle), a random training instance and colour per
    # episode; `resting_face="flat"` stands it upright.
    TaskConfig(name="mugs", object="mug", resting_face="on_side", cameras=_TOP_DOWN_CAMERAS, object_friction=0.4),
):
    register_task(_paper_task)
# Beyond the paper, which evaluated on its training mugs: the 5 held-out instances, for evaluation only.
register_task(dataclasses.replace(_TASKS["mugs"], name="mugs_unseen", mug_split="test"))

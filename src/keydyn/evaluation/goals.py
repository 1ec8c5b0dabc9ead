"""Fixed, seeded start/goal pairs for goal-reaching evaluation (paper section 9.2, the original code).

A pair starts with the object at a random position and yaw and the pusher behind it; the goal is where a
constant push (speed 0.15-0.25 m/s along the push direction) held for `push_steps` control steps leaves the
object. Pairs whose object moved less than 5 cm and turned less than 15 degrees, or left the table, are
re-drawn. Pair k depends only on (seed, k), so the same 200 pairs come out on every machine.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keydyn.evaluation.metrics import pose_errors
from keydyn.sim.config import check_seed
from keydyn.sim.environment import PushingEnvironment, UnreachableStartError


@dataclass(frozen=True)
class GoalPairConfig:
    """How start/goal pairs are drawn. Units: metres, degrees, m/s, control steps."""

    push_steps: tuple[int, ...] = (10, 15)  # pair k pushes for push_steps[k % len(push_steps)] steps
    object_xy_range: float = 0.2
    push_speed: tuple[float, float] = (0.15, 0.25)
    min_translation: float = 0.05
    min_rotation_deg: float = 15.0
    max_attempts: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.push_steps or min(self.push_steps) < 1:
            raise ValueError(f"need push_steps >= 1, got {self.push_steps}")
        if self.max_attempts < 1:
            raise ValueError(f"--goals.max-attempts must be at least 1 (draws per pair), got {self.max_attempts}")
        check_seed(self.seed, "--goals.seed")


@dataclass(frozen=True)
class GoalPair:
    """One start/goal pair; states are MuJoCo mjSTATE_INTEGRATION vectors (restore with set_sim_state)."""

    index: int
    seed: int
    push_steps: int
    start_state: np.ndarray
    goal_state: np.ndarray
    start_position: np.ndarray  # (3,) metres
    start_quaternion: np.ndarray  # (4,) w, x, y, z
    goal_position: np.ndarray
    goal_quaternion: np.ndarray
    push_velocity: np.ndarray  # (2,) m/s, held for push_steps steps from the start to reach the goal
    mug_instance: int = -1
    mug_material: int = -1
    mug_rgba: np.ndarray | None = None
    centre_offset: np.ndarray | None = None  # (3,) the object's centre in its own frame, metres (`pose_errors`)

    def reset_options(self, state: np.ndarray) -> dict:
        """`env.reset` options that restore `state` (start_state or goal_state) with this pair's mug and colours."""
        options: dict = {"sim_state": state}
        if self.mug_instance >= 0:
            options.update(mug_instance=self.mug_instance, mug_material=self.mug_material, mug_rgba=self.mug_rgba)
        return options

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the pair's start and goal states and its mug (instance, material, colours): the same
        wherever and whenever the pair is drawn, and other when keydyn, MuJoCo or the task draws another pair."""
        digest = hashlib.sha256()
        mug = [self.mug_instance, self.mug_material, *(() if self.mug_rgba is None else self.mug_rgba)]
        for part in (self.start_state, self.goal_state, mug):
            digest.update(np.ascontiguousarray(part, dtype="<f8").tobytes())
        return digest.hexdigest()

    @property
    def initial_errors(self) -> tuple[float, float]:
        """(metres, radians) between start and goal: the paper's 'Avg. trajectory' row."""
        distance, angle = pose_errors(
            self.start_position, self.start_quaternion, self.goal_position, self.goal_quaternion, self.centre_offset
        )
        return float(distance), float(angle)


def _draw_pair(env: PushingEnvironment, config: GoalPairConfig, index: int, seed: int) -> GoalPair | None:
    """Pair `index` drawn from `seed`, or None when its start cannot be taken or its push leaves the task or moves
    the object too little. Starts lie within the task's own start range when that is smaller (a robot's
    workspace)."""
    rng = np.random.default_rng(seed)
    heading = float(rng.uniform(0.0, 2 * math.pi))
    half = min(config.object_xy_range, env.task.start.object_xy_range)
    object_xy = rng.uniform(-half, half, size=2)
    forward = np.array([math.cos(heading), math.sin(heading)])
    behind = rng.uniform(*env.task.start.pusher_behind)
    lateral = rng.uniform(-env.task.start.pusher_lateral, env.task.start.pusher_lateral)
    start = {
        "object_xy": object_xy,
        "object_yaw": float(rng.uniform(0.0, 2 * math.pi)),
        "pusher_xy": object_xy - behind * forward + lateral * np.array([-forward[1], forward[0]]),
    }
    try:
        # the environment's own draws (a mug's instance, texture and colour) from a stream apart from the pose's:
        # seeded alike, its colour would follow the start position and its texture the push's heading
        _, info = env.reset(seed=int(np.random.SeedSequence([seed, 1]).generate_state(1)[0]), options={"start": start})
    except UnreachableStartError:
        return None
    start_state, start_info = info["sim_state"], info
    velocity = rng.uniform(*config.push_speed) * forward
    steps = config.push_steps[index % len(config.push_steps)]
    for _ in range(steps):
        _, _, terminated, _, info = env.step(velocity)
        if terminated:
            return None
    distance, angle = pose_errors(
        start_info["object_position"],
        start_info["object_quaternion"],
        info["object_position"],
        info["object_quaternion"],
        info.get("object_centre_offset"),
    )
    if distance < config.min_translation and angle < math.radians(config.min_rotation_deg):
        return None
    return GoalPair(
        index=index,
        seed=seed,
        push_steps=steps,
        start_state=start_state,
        goal_state=info["sim_state"],
        start_position=start_info["object_position"],
        start_quaternion=start_info["object_quaternion"],
        goal_position=info["object_position"],
        goal_quaternion=info["object_quaternion"],
        push_velocity=velocity,
        mug_instance=int(info["mug_instance"]),
        mug_material=int(info["mug_material"]),
        mug_rgba=np.asarray(info["mug_rgba"]),
        centre_offset=info.get("object_centre_offset"),
    )


def goal_pair(env: PushingEnvironment, config: GoalPairConfig, index: int) -> GoalPair:
    """Pair `index` of the set `config` describes; it depends only on (config, index), not on other pairs."""
    for attempt in range(config.max_attempts):
        seed = int(np.random.SeedSequence([config.seed, index, attempt]).generate_state(1)[0])
        pair = _draw_pair(env, config, index, seed)
        if pair is not None:
            return pair
    raise RuntimeError(
        f"pair {index}: none of {config.max_attempts} attempts moved the object enough without leaving "
        "the table; lower min_translation/min_rotation_deg or object_xy_range"
    )


def make_goal_pairs(env: PushingEnvironment, config: GoalPairConfig, count: int) -> list[GoalPair]:
    """Pairs 0 to `count` - 1 of the set `config` describes, in `env` (deterministic in config.seed)."""
    return [goal_pair(env, config, index) for index in range(count)]


def pair_identity(rows: Sequence[Mapping[str, Any]]) -> list[tuple[int, str | None]]:
    """(index, `pair_sha256`) of an evaluation's episode rows, in index order; the digest is None in rows of a
    keydyn before 2026-11-30, which did not record it."""
    return sorted((int(row["index"]), row.get("pair_sha256")) for row in rows)


def same_pairs(a: Sequence[tuple[int, str | None]], b: Sequence[tuple[int, str | None]]) -> bool:
    """Whether two evaluations (`pair_identity`) ran the same start/goal pairs: the same indices, and the same
    pair digests wherever both recorded one."""
    if [index for index, _ in a] != [index for index, _ in b]:
        return False
    return all(x is None or y is None or x == y for (_, x), (_, y) in zip(a, b, strict=True))

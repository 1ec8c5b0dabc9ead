"""Trajectory tracking (one-shot imitation, paper section 4.4 / 10.2) and its region of attraction (figure 7).

A demonstration is one recorded episode: its observed latents z*_0..z*_T. The controller tracks it with the
cost sum_t ||z_part(t) - z*_part(t)||^2 (the entries the latent method compares: object keypoints) over a fixed
MPC window (padded with the demonstration's last latent), for as many steps as the demonstration has. The
region-of-attraction study starts the object from the demonstration's start pose offset in x, y and yaw and
scores each run's final pose against the demonstration's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keydyn.control.mpc import MPCController
from keydyn.evaluation.episodes import EpisodeResult, FrameSink, VideoPoints, run_closed_loop
from keydyn.evaluation.goals import GoalPair
from keydyn.latents.base import PUSHER_DIM, LatentEncoder
from keydyn.latents.gt3d import rotate_by_quaternions
from keydyn.sim.environment import PushingEnvironment


@dataclass
class Demonstration:
    """A recorded episode to imitate.

    reset_options: `env.reset` options that restore its start.
    actions: (T, 2) pusher velocities, m/s. latents: (T + 1, D) observed latents.
    positions: (T + 1, 3) true object positions (its frame's origin), metres; quaternions: (T + 1, 4) (w, x, y, z);
    yaws: (T + 1,) the environment's object yaw, radians; centre_offset: (3,) the object's centre in its own frame,
    metres (the environment's `object_centre_offset`; zeros: the frame's origin).
    """

    reset_options: dict[str, Any]
    actions: np.ndarray
    latents: np.ndarray
    positions: np.ndarray
    quaternions: np.ndarray
    yaws: np.ndarray
    centre_offset: np.ndarray

    @classmethod
    def from_replay(
        cls, reset_options: dict[str, Any], actions: np.ndarray, latents: np.ndarray, infos: Sequence[Mapping]
    ) -> Demonstration:
        """The demonstration of (T, 2) `actions` replayed from `reset_options`, given its (T + 1, D) observed
        `latents` and the T + 1 environment infos of the replay (`replay`), which hold the true poses."""
        return cls(
            reset_options,
            np.asarray(actions),
            np.asarray(latents),
            np.stack([info["object_position"] for info in infos]),
            np.stack([info["object_quaternion"] for info in infos]),
            np.array([info["object_yaw"] for info in infos]),
            np.asarray(infos[0].get("object_centre_offset", np.zeros(3)), dtype=np.float64),
        )

    @property
    def steps(self) -> int:
        return len(self.actions)


def reference_window(latents: np.ndarray, t: int, horizon: int) -> np.ndarray:
    """(H, D) latents z*_{t+1..t+H} of the (T + 1, D) reference `latents` z*_0..z*_T, repeating z*_T past the end:
    the reference of the plan made at step t."""
    indices = np.minimum(np.arange(t + 1, t + 1 + horizon), len(latents) - 1)
    return latents[indices]


def replay(
    env: PushingEnvironment, reset_options: dict[str, Any], actions: np.ndarray, seed: int | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Reset with `reset_options` (and `seed`, which seeds the environment's sensor noise; None: not reseeded)
    and execute the (T, 2) `actions`: the T + 1 observations and infos.

    Raises:
        ValueError: the episode ended before the last action (out of bounds, tipped over).
    """
    observation, info = env.reset(seed=seed, options=reset_options)
    observations, infos = [observation], [info]
    for action in actions:
        observation, _, terminated, _, info = env.step(action)
        observations.append(observation)
        infos.append(info)
        if terminated:
            raise ValueError(f"the demonstration left the task ({info.get('termination')}); choose another one")
    return observations, infos


def record_demonstration(
    env: PushingEnvironment, encoder: LatentEncoder, reset_options: dict[str, Any], actions: np.ndarray
) -> Demonstration:
    """Replay (T, 2) `actions` from the start `reset_options` restores, recording latents and true poses."""
    observations, infos = replay(env, reset_options, actions)
    encoder.reset(observations[0], infos[0])
    latents = [encoder.encode(observation, info) for observation, info in zip(observations, infos, strict=True)]
    return Demonstration.from_replay(reset_options, actions, np.stack(latents), infos)


def pair_push(pair: GoalPair) -> tuple[dict[str, Any], np.ndarray]:
    """The constant push that made a start/goal pair (the original code's N-step push): the reset options of its
    start and the (T, 2) pusher velocities, m/s."""
    return pair.reset_options(pair.start_state), np.repeat(np.asarray(pair.push_velocity)[None], pair.push_steps, 0)


def perturbed_start(demo: Demonstration, dx: float, dy: float, dyaw: float) -> dict[str, Any]:
    """Reset options placing the object at the demonstration's start with its centre moved by (dx, dy) metres and
    turned by dyaw radians about the vertical through its centre (where errors are measured: a mug's frame sits at
    its base, which a turn about the frame's origin would move the centre around), the pusher where it started (the
    scene then settles)."""
    origin = demo.positions[0]
    centre = origin + rotate_by_quaternions(demo.quaternions[0], demo.centre_offset[None])[0]
    cos, sin = np.cos(dyaw), np.sin(dyaw)
    arm = origin[:2] - centre[:2]  # the frame's origin seen from the centre, xy
    turned = np.array([cos * arm[0] - sin * arm[1], sin * arm[0] + cos * arm[1]])
    options = {k: v for k, v in demo.reset_options.items() if k != "sim_state"}
    pusher_xy = demo.latents[0, -PUSHER_DIM:].astype(np.float64)
    object_xy = centre[:2] + turned + np.array([dx, dy])
    options["start"] = {"object_xy": object_xy, "object_yaw": demo.yaws[0] + dyaw, "pusher_xy": pusher_xy}
    return options


def track(
    env: PushingEnvironment,
    encoder: LatentEncoder,
    controller: MPCController,
    demo: Demonstration,
    seed: int,
    reset_options: dict[str, Any] | None = None,
    video_points: VideoPoints | None = None,
    on_frame: FrameSink | None = None,
) -> EpisodeResult:
    """Track `demo` from its start (or from `reset_options`) for demo.steps steps with a fixed MPC window.

    Errors are against the demonstration's final pose: `initial_*` of the start, `final_*` of the end. Frames
    (the demonstration's latent drawn as the target) are recorded when `video_points` is given, and passed to
    `on_frame` as they are made.
    """

    def make_cost(t: int, horizon: int):
        return controller.tracking_cost(reference_window(demo.latents, t, horizon))

    run = run_closed_loop(
        env,
        encoder,
        controller,
        demo.reset_options if reset_options is None else reset_options,
        make_cost,
        demo.steps,
        seed,
        lambda t: demo.latents[min(t, demo.steps)],
        video_points,
        shrinking=False,
        on_frame=on_frame,
    )
    return run.result(0, demo.positions[-1], demo.quaternions[-1])

"""The timed closed loop shared by benchmarks/planning.py and benchmarks/vision.py (imported as a sibling)."""

from __future__ import annotations

import time

import torch

from keydyn.control import MPCController, terminal_cost
from keydyn.latents import LatentEncoder
from keydyn.sim.env import PushingEnv


def time_control_loop(
    env: PushingEnv, encoder: LatentEncoder, controller: MPCController, steps: int
) -> tuple[list[float], list[float]]:
    """Seconds per control step (plan and act, physics step, encode the new observation) and per encode, over
    `steps` steps toward a goal 5 cm from the start's keypoints; the episode restarts when it terminates.

    The first two steps are not timed: the first plan also evaluates the constant-velocity grid.
    """
    observation, info = env.reset(seed=0)
    encoder.reset(observation, info)
    latent = encoder.encode(observation, info)
    controller.reset(latent, seed=0)
    goal = torch.as_tensor(latent[controller.latent_part] + 0.05)
    cost = terminal_cost(goal, controller.state_part)
    step_times, encode_times = [], []
    for step in range(steps + 2):
        start = time.perf_counter()
        action = controller.act(latent, lambda horizon: cost)
        observation, _, terminated, _, info = env.step(action)
        encoding = time.perf_counter()
        latent = encoder.encode(observation, info)
        if step >= 2:
            step_times.append(time.perf_counter() - start)
            encode_times.append(time.perf_counter() - encoding)
        if terminated:
            observation, info = env.reset(seed=step)
            latent = encoder.encode(observation, info)
    return step_times, encode_times

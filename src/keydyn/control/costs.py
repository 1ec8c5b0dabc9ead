"""Planning costs on predicted latent trajectories: the part of the latent a method compares (the pusher is free).

The planner's states are the dynamics model's Markov states (N, H+1, S); `part` is the slice of a state holding
the entries of the most recent latent that the run's latent method compares (`LatentMethod.cost_part`; keypoint
latents: the 3 K object keypoints, metres; `MPCController.state_part`). Costs are L2 distances times `scale`:
100 per metre gives centimetres for keypoint latents, so that MPPI's reward weight gamma = 20 discriminates
between samples a few millimetres apart; the original code used metres, where gamma = 20 weights all samples
almost equally.

Batched environments: a goal or reference with a leading B dimension is matched to the planner's B * N rows
(environment-major, as `keydyn.planning.rollout` orders them); `per_environment` joins B costs of one
environment each into one such cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from keydyn.planning.base import Cost


def nonfinite_entries(values: Tensor | np.ndarray) -> str:
    """The non-finite entries of `values` with their values ("3 (nan), 13 (inf)"; indices as tuples for arrays of
    more than one dimension, at most 8 listed), "" when every entry is finite."""
    values = torch.as_tensor(values).detach().cpu()
    bad = torch.nonzero(~torch.isfinite(values)).tolist()
    names = [f"{index[0] if len(index) == 1 else tuple(index)} ({float(values[tuple(index)])})" for index in bad[:8]]
    return ", ".join(names) + (f" and {len(bad) - 8} more" if len(bad) > 8 else "")


def _check_finite(values: Tensor, name: str, fix: str) -> None:
    bad = nonfinite_entries(values)
    if bad:
        raise ValueError(f"{name} entries {bad} of {tuple(values.shape)} are not finite; {fix}")


def _per_environment(states: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """states (B*N, ...) -> (B, N, ...); targets (B, ...) -> (B, 1, ...)."""
    B = targets.shape[0]
    return states.reshape(B, -1, *states.shape[1:]), targets.unsqueeze(1)


def terminal_cost(goal: Tensor, part: slice, scale: float = 100.0) -> Cost:
    """Cost = scale * || z_part(T) - z_part_goal ||_2 of the final predicted state (the original code's reward,
    negated and times `scale`: the original's was in metres, scale 1).

    goal: (P,) or (B, P) the goal latent's compared entries (`latent[MPCController.latent_part]`); must be finite.
    """
    _check_finite(goal, "terminal_cost (keydyn/control/costs.py): the goal", "observe the goal again")
    goal = goal.reshape(-1, goal.shape[-1])

    def cost(states: Tensor, actions: Tensor) -> Tensor:
        final, target = _per_environment(states[:, -1, part], goal.to(states))
        return (scale * (final - target).norm(dim=-1)).reshape(-1)

    return cost


def tracking_cost(reference: Tensor, part: slice, scale: float = 100.0) -> Cost:
    """Cost = sum_t || scale * (z_part(t) - z*_part(t)) ||^2 over the predicted steps t = 1..H (section 10.2).

    reference: (H, P) or (B, H, P) target entries for the H predicted steps (keypoint latents: object keypoints,
        metres; pad a short demonstration with its last entry); must be finite.
    """
    _check_finite(reference, "tracking_cost (keydyn/control/costs.py): the reference", "record the demonstration again")
    reference = reference.reshape(-1, *reference.shape[-2:])

    def cost(states: Tensor, actions: Tensor) -> Tensor:
        predicted, target = _per_environment(states[:, 1:, part], reference.to(states))
        if predicted.shape[-2] != target.shape[-2]:
            raise ValueError(f"reference has {target.shape[-2]} steps, the plan {predicted.shape[-2]}")
        return (scale * (predicted - target)).square().sum(dim=(-1, -2)).reshape(-1)

    return cost


def per_environment(costs: Sequence[Cost]) -> Cost:
    """One cost of B environments' B * N rows (environment-major) from B costs of one environment each: cost b is
    called on rows b * N to (b + 1) * N, so each gives what it gives when that environment is planned alone."""
    if len(costs) == 1:
        return costs[0]

    def cost(states: Tensor, actions: Tensor) -> Tensor:
        n = states.shape[0] // len(costs)
        return torch.cat(
            [part(states[b * n : (b + 1) * n], actions[b * n : (b + 1) * n]) for b, part in enumerate(costs)]
        )

    return cost

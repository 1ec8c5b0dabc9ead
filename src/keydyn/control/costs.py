"""Planning costs on predicted latent trajectories (object keypoints only; the pusher is free).

The planner's states are the dynamics model's Markov states (N, H+1, S); `keypoints` is the slice of a state
holding the most recent latent's object keypoints (3 K entries, metres). Costs are returned in centimetres
(`scale` = 100 per metre) so that MPPI's reward weight gamma = 20 discriminates between samples a few
millimetres apart; the original code used metres, where gamma = 20 weights all samples almost equally.

Batched environments: a goal or reference with a leading B dimension is matched to the planner's B * N rows
(environment-major, as `keydyn.planning.rollout` orders them).
"""

from __future__ import annotations

from torch import Tensor

from keydyn.planning.base import Cost


def _per_environment(states: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """states (B*N, ...) -> (B, N, ...); targets (B, ...) -> (B, 1, ...)."""
    B = targets.shape[0]
    return states.reshape(B, -1, *states.shape[1:]), targets.unsqueeze(1)


def terminal_keypoint_cost(goal: Tensor, keypoints: slice, scale: float = 100.0) -> Cost:
    """Cost = scale * || z_obj(T) - z_obj_goal ||_2 of the final predicted state (the original code's reward).

    goal: (3K,) or (B, 3K) goal object keypoints, metres.
    """
    goal = goal.reshape(-1, goal.shape[-1])

    def cost(states: Tensor, actions: Tensor) -> Tensor:
        final, target = _per_environment(states[:, -1, keypoints], goal.to(states))
        return (scale * (final - target).norm(dim=-1)).reshape(-1)

    return cost


def tracking_cost(reference: Tensor, keypoints: slice, scale: float = 100.0) -> Cost:
    """Cost = sum_t || scale * (z_obj(t) - z*_obj(t)) ||^2 over the predicted steps t = 1..H (section 10.2).

    reference: (H, 3K) or (B, H, 3K) target object keypoints for the H predicted steps, metres (pad a short
        demonstration with its last entry).
    """
    reference = reference.reshape(-1, *reference.shape[-2:])

    def cost(states: Tensor, actions: Tensor) -> Tensor:
        predicted, target = _per_environment(states[:, 1:, keypoints], reference.to(states))
        if predicted.shape[-2] != target.shape[-2]:
            raise ValueError(f"reference has {target.shape[-2]} steps, the plan {predicted.shape[-2]}")
        return (scale * (predicted - target)).square().sum(dim=(-1, -2)).reshape(-1)

    return cost

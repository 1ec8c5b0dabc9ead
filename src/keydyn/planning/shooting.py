"""Shooting planners: random shooting and gradient-based shooting through differentiable dynamics."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from keydyn.planning.base import Planner, PlannerConfig, PlanResult, keep_better, rollout, select_best


@dataclass(frozen=True)
class RandomShootingConfig(PlannerConfig):
    """Random shooting: the best of N uniformly sampled action sequences."""

    num_samples: int = 1000
    """N candidate sequences per environment (a warm start, if given, replaces the first one)."""
    sampling: Literal["constant", "iid"] = "constant"
    """"constant" draws one velocity within the bounds per sequence and holds it for all H steps; "iid" draws every
    step independently and uniformly within the bounds."""


class RandomShooting(Planner):
    """Evaluate N uniformly sampled action sequences per environment and return the best one."""

    config: RandomShootingConfig

    def _plan(self, state: Tensor, warm_start: Tensor | None, horizon: int) -> PlanResult:
        actions = self._candidates(state.shape[0], self.config.num_samples, horizon, warm_start)
        return select_best(actions, *rollout(self.dynamics, self.cost, state, actions))

    def _candidates(self, B: int, N: int, horizon: int, warm_start: Tensor | None) -> Tensor:
        """(B, N, H, A) candidate sequences in m/s; the warm start (B, H, A), if any, is candidate 0."""
        A = self.low.shape[0]
        if self.config.sampling == "constant":
            actions = self._uniform((B, N, 1, A)).expand(B, N, horizon, A)
        elif self.config.sampling == "iid":
            actions = self._uniform((B, N, horizon, A))
        else:
            raise ValueError(f"unknown sampling {self.config.sampling!r}")
        if warm_start is None:
            return actions
        return torch.cat([warm_start.unsqueeze(1), actions[:, 1:]], dim=1)


@dataclass(frozen=True)
class GradientShootingConfig(PlannerConfig):
    """Gradient shooting: Adam on K action sequences through the differentiable dynamics."""

    num_sequences: int = 16
    """K sequences per environment optimised in parallel, initialised uniformly within the bounds (a warm start,
    if given, replaces the first one)."""
    steps: int = 50
    """Adam steps per call."""
    lr: float = 0.02
    """Adam learning rate, m/s (roughly the largest change of an action per step)."""


class GradientShooting(Planner):
    """Optimise K action sequences with Adam through the differentiable dynamics, projecting onto the bounds after
    every step; return the lowest-cost sequence seen. Works when called under torch.inference_mode."""

    config: GradientShootingConfig

    def _plan(self, state: Tensor, warm_start: Tensor | None, horizon: int) -> PlanResult:
        cfg = self.config
        B, A = state.shape[0], self.low.shape[0]
        init = self._uniform((B, cfg.num_sequences, horizon, A))
        if warm_start is not None:
            init = torch.cat([warm_start.unsqueeze(1), init[:, 1:]], dim=1)
        with torch.inference_mode(False), torch.enable_grad():
            state = state.clone()
            actions = init.clone().requires_grad_(True)
            optimiser = torch.optim.Adam([actions], lr=cfg.lr)
            best = None
            for step in range(cfg.steps + 1):
                states, costs = rollout(self.dynamics, self.cost, state, actions)
                best = keep_better(best, select_best(actions.detach(), states.detach(), costs.detach()))
                if step == cfg.steps:
                    break
                optimiser.zero_grad(set_to_none=True)
                costs.sum().backward()
                optimiser.step()
                with torch.no_grad():
                    actions.copy_(torch.clamp(actions, self.low, self.high))
        return best

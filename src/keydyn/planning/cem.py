"""Cross-entropy method: refit a diagonal Gaussian over action sequences to the elite samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from keydyn.planning.base import Planner, PlannerConfig, PlanResult, keep_better, rollout, select_best


@dataclass(frozen=True)
class CEMConfig(PlannerConfig):
    """Cross-entropy method: refit a diagonal Gaussian over action sequences to the elite samples."""

    num_samples: int = 500
    """N sampled action sequences per environment and iteration."""
    num_elites: int = 50
    """Lowest-cost samples the Gaussian is refit to."""
    iterations: int = 5
    """Refits per call."""
    init_std: float = 0.15
    """Initial standard deviation per action dimension and step, m/s."""
    alpha: float = 0.1
    """Smoothing, new = alpha * old + (1 - alpha) * elite statistic (for both mean and std)."""


class CEM(Planner):
    """Cross-entropy method planner; returns the lowest-cost sequence sampled in any iteration."""

    config: CEMConfig

    def _plan(self, state: Tensor, warm_start: Tensor | None, horizon: int) -> PlanResult:
        cfg = self.config
        B, A = state.shape[0], self.low.shape[0]
        mean = self._initial_mean(B, warm_start, horizon)
        std = torch.full_like(mean, cfg.init_std)
        best = None
        for _ in range(cfg.iterations):
            noise = self._normal((B, cfg.num_samples, horizon, A))
            actions = torch.clamp(mean.unsqueeze(1) + std.unsqueeze(1) * noise, self.low, self.high)
            states, costs = rollout(self.dynamics, self.cost, state, actions)
            elite_idx = costs.topk(cfg.num_elites, dim=1, largest=False).indices
            elites = torch.gather(actions, 1, elite_idx[:, :, None, None].expand(-1, -1, horizon, A))
            mean = cfg.alpha * mean + (1 - cfg.alpha) * elites.mean(dim=1)
            std = cfg.alpha * std + (1 - cfg.alpha) * elites.std(dim=1, correction=0)
            best = keep_better(best, select_best(actions, states, costs))
        if best is None:
            raise ValueError("CEM needs at least one iteration")
        return best

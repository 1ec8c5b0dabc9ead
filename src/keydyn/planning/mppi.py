"""MPPI with time-correlated noise, as in the paper's appendix 8 (Manuelli et al., CoRL 2020)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from keydyn.planning.base import Planner, PlannerConfig, PlanResult, keep_better, rollout, select_best


@dataclass(frozen=True)
class MPPIConfig(PlannerConfig):
    """MPPI with time-correlated noise (defaults from the paper)."""

    num_samples: int = 1000
    """N sampled action sequences per environment and iteration."""
    iterations: int = 3
    """M refinement iterations per call."""
    noise_std: float = 0.05
    """Standard deviation of the white noise u_t per action dimension, m/s."""
    beta: float = 0.7
    """Noise filter coefficient, n_t = beta * u_t + (1 - beta) * n_{t-1} with n_{-1} = 0; 1 gives white noise."""
    gamma: float = 20.0
    """Reward weight (1/temperature); sample weights are softmax(gamma * R) with R = -cost."""
    return_best: bool = True
    """Return the lowest-cost sequence sampled in any iteration instead of the final weighted mean."""


@functools.lru_cache(maxsize=64)
def correlation_filter(horizon: int, beta: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(H, H) lower-triangular matrix F with n = F @ u for n_t = beta * u_t + (1 - beta) * n_{t-1}, n_{-1} = 0.
    Cached per arguments (one planning call uses it M times; on a GPU its six kernels cost more than the product):
    read it, never write it. A plain tensor even when first made under torch.inference_mode."""
    with torch.inference_mode(False):
        t = torch.arange(horizon, device=device)
        lag = t[:, None] - t[None, :]
        decay = (1.0 - beta) ** lag.clamp(min=0).to(dtype)
        return torch.where(lag >= 0, beta * decay, torch.zeros((), dtype=dtype, device=device))


def correlated_noise(white: Tensor, beta: float) -> Tensor:
    """Filter white noise (..., H, A) along time into n_t = beta * u_t + (1 - beta) * n_{t-1}; same shape."""
    F = correlation_filter(white.shape[-2], beta, white.dtype, white.device)
    return F @ white


class MPPI(Planner):
    """Model-predictive path integral planner over B environments with N samples each, B*N rollouts per batch."""

    config: MPPIConfig

    def _plan(self, state: Tensor, warm_start: Tensor | None, horizon: int) -> PlanResult:
        cfg = self.config
        B, A = state.shape[0], self.low.shape[0]
        mean = self._initial_mean(B, warm_start, horizon)
        best = None
        for _ in range(cfg.iterations):
            white = cfg.noise_std * self._normal((B, cfg.num_samples, horizon, A))
            actions = torch.clamp(mean.unsqueeze(1) + correlated_noise(white, cfg.beta), self.low, self.high)
            states, costs = rollout(self.dynamics, self.cost, state, actions)
            weights = torch.softmax(-cfg.gamma * costs, dim=1)  # softmax subtracts the max of gamma * R itself
            # per environment: a batched einsum rounds differently for some horizons, which a closed loop amplifies;
            # this way each environment's plan is bit-identical to the one it gets planned alone
            mean = torch.cat([torch.einsum("bn,bnha->bha", weights[b : b + 1], actions[b : b + 1]) for b in range(B)])
            best = keep_better(best, select_best(actions, states, costs))
        if cfg.return_best and best is not None:
            return best
        states, costs = rollout(self.dynamics, self.cost, state, mean.unsqueeze(1))
        return PlanResult(mean, costs[:, 0], states[:, 0])

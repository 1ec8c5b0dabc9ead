"""Shared planner interface: configs, results, rollouts and warm-start shifting.

Shapes use B environments, N sampled action sequences per environment, horizon H, state size S and action size A.
Actions are end-effector velocities in m/s; states are whatever the dynamics model uses (metres for the tests'
point mass, latent units for learned models). Costs are dimensionless, lower is better.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

Dynamics = Callable[[Tensor, Tensor], Tensor]
"""Markov step `(state (N, S), action (N, A)) -> next state (N, S)`; history, if any, is packed into the state."""

Cost = Callable[[Tensor, Tensor], Tensor]
"""`(states (N, H+1, S) including the initial state, actions (N, H, A)) -> cost (N,)`, lower is better."""

WarmStart = Literal["shift_zero", "shift_repeat"]


@runtime_checkable
class Simulator(Protocol):
    """`Dynamics` that also rolls out H steps in one call (`rollout` uses it), e.g.
    `keydyn.planning.graphs.GraphedDynamics`."""

    def __call__(self, state: Tensor, action: Tensor) -> Tensor:
        """One Markov step, as `Dynamics`."""

    def simulate(self, state: Tensor, actions: Tensor) -> Tensor:
        """(M, H + 1, S) states from (M, S) `state` under (M, H, A) `actions`, as `simulate(self, ...)` gives."""


@dataclass(frozen=True)
class PlannerConfig:
    """Options every planner shares (the horizon and the random source belong to whoever runs the planner: see
    `Planner`)."""

    warm_start: WarmStart = "shift_zero"
    """How `Planner.shift` turns the executed plan into the next call's warm start: drop the first action and
    append zeros ("shift_zero") or a copy of the last action ("shift_repeat")."""


@dataclass(frozen=True)
class PlanResult:
    """Output of `Planner.plan`.

    actions: (B, H, A) planned action sequence in m/s, or (H, A) for an unbatched state.
    cost: (B,) cost of that sequence under the model, or () for an unbatched state.
    states: (B, H+1, S) predicted states of that sequence including the initial one, or (H+1, S) unbatched.
    """

    actions: Tensor
    cost: Tensor
    states: Tensor


def shift_plan(actions: Tensor, mode: WarmStart = "shift_zero") -> Tensor:
    """Drop the first action of `actions` (..., H, A) and append zeros or a copy of the last action; same shape."""
    if mode == "shift_zero":
        tail = torch.zeros_like(actions[..., -1:, :])
    elif mode == "shift_repeat":
        tail = actions[..., -1:, :]
    else:
        raise ValueError(f"unknown warm start mode {mode!r}")
    return torch.cat([actions[..., 1:, :], tail], dim=-2)


def simulate(dynamics: Dynamics, state: Tensor, actions: Tensor) -> Tensor:
    """(M, H + 1, S) states from (M, S) `state` stepped by (M, H, A) `actions`, the first row `state` itself."""
    states = [state]
    for t in range(actions.shape[1]):
        states.append(dynamics(states[-1], actions[:, t]))
    return torch.stack(states, dim=1)


def rollout(dynamics: Dynamics, cost: Cost, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
    """Roll out every sequence in one batch (in one `simulate` call of a `Simulator`, else step by step).

    state: (B, S) initial states; actions: (B, N, H, A).
    Returns states (B, N, H+1, S) including the initial state, and costs (B, N).
    """
    B, N, H, A = actions.shape
    flat = actions.reshape(B * N, H, A)
    x = state.unsqueeze(1).expand(B, N, state.shape[-1]).reshape(B * N, -1)
    traj = dynamics.simulate(x, flat) if isinstance(dynamics, Simulator) else simulate(dynamics, x, flat)
    return traj.reshape(B, N, H + 1, -1), cost(traj, flat).reshape(B, N)


def select_best(actions: Tensor, states: Tensor, costs: Tensor) -> PlanResult:
    """Lowest-cost sequence per environment from actions (B, N, H, A), states (B, N, H+1, S), costs (B, N)."""
    idx = costs.argmin(dim=1)
    rows = torch.arange(costs.shape[0], device=costs.device)
    return PlanResult(actions[rows, idx], costs[rows, idx], states[rows, idx])


def keep_better(best: PlanResult | None, new: PlanResult) -> PlanResult:
    """Per environment, the lower-cost of two batched results (`new` when `best` is None)."""
    if best is None:
        return new
    better = new.cost < best.cost
    return PlanResult(
        torch.where(better[:, None, None], new.actions, best.actions),
        torch.where(better, new.cost, best.cost),
        torch.where(better[:, None, None], new.states, best.states),
    )


class Planner:
    """Base class: handles batching, horizon and warm starts; subclasses implement `_plan`.

    dynamics, cost: see `Dynamics` and `Cost`.
    low, high: (A,) action bounds in m/s; they fix the device and dtype of all planned actions.
    generator: random source of every draw; by default a new torch.Generator on the bounds' device seeded with
        `seed`. A list of B generators, one per environment of a (B, S) call, draws each environment's samples
        from its own, exactly as a call with that environment alone and its generator would (the MPC controller
        sets one per episode, seeded per episode, so that batched episodes equal unbatched ones).
    horizon: planning horizon H, in control steps, of a call that gives neither a horizon nor a warm start.
    """

    def __init__(
        self,
        dynamics: Dynamics,
        cost: Cost,
        config: PlannerConfig,
        low: Tensor,
        high: Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
        *,
        seed: int = 0,
        horizon: int = 10,
    ) -> None:
        if low.shape != high.shape or low.dim() != 1 or bool((low > high).any()):
            raise ValueError("low and high must be (A,) tensors with low <= high")
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {horizon}")
        self.dynamics = dynamics
        self.cost = cost
        self.config = config
        self.low = low
        self.high = high
        self.horizon = horizon
        if generator is None:
            generator = torch.Generator(device=low.device)
            generator.manual_seed(seed)
        self.generator: torch.Generator | list[torch.Generator] = generator

    def shift(self, actions: Tensor) -> Tensor:
        """Warm start for the next control step from the plan just executed (..., H, A), per `config.warm_start`."""
        return shift_plan(actions, self.config.warm_start)

    def plan(self, state: Tensor, warm_start: Tensor | None = None, horizon: int | None = None) -> PlanResult:
        """Plan action sequences from `state` (S,) or (B, S).

        warm_start: (H', A) or (B, H', A) initial guess in m/s (e.g. `self.shift(previous.actions)`); truncated to
            the horizon when longer.
        horizon: H for this call; defaults to the warm start's length, else the planner's `horizon`. A shrinking
            horizon is just a smaller value per call.
        """
        unbatched = state.dim() == 1
        state = state.to(self.low.dtype).reshape(-1, state.shape[-1])
        B, A = state.shape[0], self.low.shape[0]
        if horizon is None:
            horizon = self.horizon if warm_start is None else warm_start.shape[-2]
        if warm_start is not None:
            if warm_start.shape[-2] < horizon:
                raise ValueError(f"warm start has {warm_start.shape[-2]} steps, fewer than horizon {horizon}")
            warm_start = warm_start[..., :horizon, :].to(self.low).expand(B, horizon, A)
            warm_start = torch.clamp(warm_start, self.low, self.high)
        result = self._plan(state, warm_start, horizon)
        if unbatched:
            return PlanResult(result.actions[0], result.cost[0], result.states[0])
        return result

    def _plan(self, state: Tensor, warm_start: Tensor | None, horizon: int) -> PlanResult:
        """state (B, S); warm_start (B, H, A) within bounds or None; returns a batched PlanResult."""
        raise NotImplementedError

    def _uniform(self, shape: tuple[int, ...]) -> Tensor:
        """Uniform actions of `shape` (B, ..., A) within the bounds, drawn from the planner's generator(s)."""
        return self.low + (self.high - self.low) * self._draw(torch.rand, shape)

    def _initial_mean(self, batch: int, warm_start: Tensor | None, horizon: int) -> Tensor:
        """The sampling mean to start from: the warm start, or zero actions (batch, horizon, A)."""
        if warm_start is not None:
            return warm_start
        return torch.zeros(batch, horizon, self.low.shape[0], dtype=self.low.dtype, device=self.low.device)

    def _normal(self, shape: tuple[int, ...]) -> Tensor:
        """Standard normal samples of `shape` (B, ...) drawn from the planner's generator(s)."""
        return self._draw(torch.randn, shape)

    def _draw(self, sample: Callable[..., Tensor], shape: tuple[int, ...]) -> Tensor:
        """`sample` (torch.rand or torch.randn) of `shape` (B, ...): all from the one generator, or with a list of B
        generators environment b's (...) from generator b."""
        options = {"device": self.low.device, "dtype": self.low.dtype}
        if isinstance(self.generator, torch.Generator):
            return sample(shape, generator=self.generator, **options)
        if len(self.generator) != shape[0]:
            raise ValueError(
                f"Planner (keydyn/planning/base.py): {len(self.generator)} generators for {shape[0]} environments; "
                "give one generator per environment of the call's (B, S) state"
            )
        return torch.stack([sample(shape[1:], generator=generator, **options) for generator in self.generator])

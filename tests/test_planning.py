"""Planners drive a 2D single integrator x' = x + dt * a (metres, m/s) to a goal under closed-loop MPC."""

from __future__ import annotations

import pytest
import torch

from keydyn.planning import (
    CEM,
    MPPI,
    CEMConfig,
    GradientShooting,
    GradientShootingConfig,
    MPPIConfig,
    Planner,
    RandomShooting,
    RandomShootingConfig,
    correlated_noise,
    shift_plan,
)

DT = 0.1  # s
LOW, HIGH = torch.full((2,), -0.3), torch.full((2,), 0.3)  # m/s
GOAL = torch.tensor([0.06, -0.08])  # m, 10 cm from the origin


def step(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    return x + DT * a


def terminal_cost(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Squared terminal distance to the goal in cm²."""
    return 1e4 * (states[:, -1] - GOAL).square().sum(-1)


def running_cost(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Mean squared distance to the goal over the predicted states in cm²."""
    return 1e4 * (states[:, 1:] - GOAL).square().sum(-1).mean(-1)


def make(name: str, cost=terminal_cost, seed: int = 0, **overrides) -> Planner:
    configs = {
        "mppi": (MPPI, MPPIConfig),
        "mppi_mean": (MPPI, lambda **kw: MPPIConfig(return_best=False, **kw)),
        "cem": (CEM, CEMConfig),
        "random_constant": (RandomShooting, lambda **kw: RandomShootingConfig(sampling="constant", **kw)),
        "random_iid": (RandomShooting, lambda **kw: RandomShootingConfig(sampling="iid", **kw)),
        "gradient": (GradientShooting, GradientShootingConfig),
    }
    cls, config = configs[name]
    return cls(step, cost, config(**overrides), LOW, HIGH, seed=seed)  # default horizon 10


def closed_loop(planner: Planner, x: torch.Tensor, steps: int = 10, shrink: bool = False) -> torch.Tensor:
    """Replan every step from the true state, execute the first action, warm-start from the shifted plan.

    shrink: plan to the end of the episode (horizon steps - k at step k) instead of a receding horizon of 10.
    """
    warm = None
    for k in range(steps):
        result = planner.plan(x, warm_start=warm, horizon=steps - k if shrink else None)
        assert bool(((result.actions >= LOW) & (result.actions <= HIGH)).all())
        x = step(x, result.actions[..., 0, :])
        warm = planner.shift(result.actions)
    return x


PLANNERS = ["mppi", "mppi_mean", "cem", "random_constant", "random_iid", "gradient"]


@pytest.mark.parametrize("name", PLANNERS)
@pytest.mark.parametrize(
    ("cost", "steps", "shrink"),
    [(terminal_cost, 10, True), (running_cost, 15, False)],
    ids=["terminal-shrinking", "running-receding"],
)
def test_reaches_goal(name, cost, steps, shrink):
    x = closed_loop(make(name, cost), torch.zeros(2), steps=steps, shrink=shrink)
    assert torch.linalg.norm(x - GOAL) < 0.01


@pytest.mark.parametrize("name", PLANNERS)
def test_batched_matches_separate_quality(name):
    starts = torch.tensor([[0.0, 0.0], [0.1, 0.05], [-0.05, 0.02]])
    batched = make(name).plan(starts)
    assert batched.actions.shape == (3, 10, 2) and batched.cost.shape == (3,) and batched.states.shape == (3, 11, 2)
    separate = torch.stack([make(name).plan(s).cost for s in starts])
    # One open-loop plan from up to 15 cm away ends within about 3 cm of the goal either way.
    assert bool((batched.cost < 10.0).all()) and bool((separate < 10.0).all())  # cm²
    # The reported states and cost are those of the returned actions.
    assert torch.allclose(batched.states[:, 0], starts)
    replay = starts[:, None] + DT * torch.cumsum(batched.actions, dim=1)
    assert torch.allclose(batched.states[:, 1:], replay, atol=1e-6)
    assert torch.allclose(batched.cost, terminal_cost(batched.states, batched.actions), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("name", PLANNERS)
def test_bounds_respected_for_far_goal(name):
    """A goal 7 m away pushes every planner onto the bounds; an out-of-bounds warm start is clipped."""
    far = torch.tensor([5.0, -5.0])

    def far_cost(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return (states[:, -1] - far).square().sum(-1)

    planner = make(name)
    planner.cost = far_cost
    result = planner.plan(torch.zeros(2), warm_start=torch.tensor([1.0, -1.0]).expand(10, 2))
    assert bool(((result.actions >= LOW) & (result.actions <= HIGH)).all())
    assert torch.allclose(result.actions, torch.tensor([0.3, -0.3]).expand(10, 2), atol=0.1)


@pytest.mark.parametrize("name", PLANNERS)
def test_same_seed_same_plan(name):
    x = torch.tensor([0.01, 0.02])
    a, b = make(name, seed=3).plan(x), make(name, seed=3).plan(x)
    assert torch.equal(a.actions, b.actions) and torch.equal(a.cost, b.cost)
    assert not torch.equal(a.actions, make(name, seed=4).plan(x).actions)


def test_shrinking_horizon():
    planner = make("mppi")
    warm = torch.zeros(10, 2)
    assert planner.plan(torch.zeros(2)).actions.shape == (10, 2)  # the planner's default horizon
    assert MPPI(step, terminal_cost, MPPIConfig(), LOW, HIGH, horizon=4).plan(torch.zeros(2)).actions.shape == (4, 2)
    assert planner.plan(torch.zeros(2), warm_start=warm, horizon=4).actions.shape == (4, 2)
    assert planner.plan(torch.zeros(2), horizon=3).states.shape == (4, 2)
    assert planner.plan(torch.zeros(2), warm_start=warm[:6]).actions.shape == (6, 2)
    with pytest.raises(ValueError, match="fewer than horizon"):
        planner.plan(torch.zeros(2), warm_start=warm[:2], horizon=5)


@pytest.mark.parametrize("beta", [0.3, 0.7])
def test_correlated_noise_lag1(beta):
    white = torch.randn(20000, 40, 1, generator=torch.Generator().manual_seed(0))
    noise = correlated_noise(white, beta)[:, 20:, 0]  # past the transient
    corr = torch.corrcoef(torch.stack([noise[:, :-1].flatten(), noise[:, 1:].flatten()]))[0, 1]
    assert abs(corr - (1 - beta)) < 0.02
    assert torch.allclose(
        noise[:, 0], beta * white[:, 20, 0] + (1 - beta) * correlated_noise(white, beta)[:, 19, 0], atol=1e-6
    )
    assert torch.equal(correlated_noise(white, 1.0), white)


def test_shift_plan():
    actions = torch.arange(12.0).reshape(2, 3, 2)
    zero = shift_plan(actions, "shift_zero")
    repeat = shift_plan(actions, "shift_repeat")
    assert torch.equal(zero[:, :2], actions[:, 1:]) and torch.equal(zero[:, 2], torch.zeros(2, 2))
    assert torch.equal(repeat[:, :2], actions[:, 1:]) and torch.equal(repeat[:, 2], actions[:, 2])
    assert torch.equal(make("mppi", warm_start="shift_repeat").shift(actions[0]), repeat[0])
    with pytest.raises(ValueError):
        shift_plan(actions, "roll")


def test_gradient_shooting_under_inference_mode():
    with torch.inference_mode():
        result = make("gradient").plan(torch.zeros(2))
    assert result.cost < 0.01

"""Planners drive a 2D single integrator x' = x + dt * a (metres, m/s) to a goal under closed-loop MPC."""

from __future__ import annotations

import numpy as np
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
    PlanResult,
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


def make(name: str, cost=terminal_cost, seed: int = 0, low=LOW, high=HIGH, **overrides) -> Planner:
    configs = {
        "mppi": (MPPI, MPPIConfig),
        "mppi_mean": (MPPI, lambda **kw: MPPIConfig(return_best=False, **kw)),
        "cem": (CEM, CEMConfig),
        "random_constant": (RandomShooting, lambda **kw: RandomShootingConfig(sampling="constant", **kw)),
        "random_iid": (RandomShooting, lambda **kw: RandomShootingConfig(sampling="iid", **kw)),
        "gradient": (GradientShooting, GradientShootingConfig),
    }
    cls, config = configs[name]
    return cls(step, cost, config(**overrides), low, high, seed=seed)  # default horizon 10


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


# -- a linear-quadratic problem with a closed-form optimum ------------------------------------------------------
LQ_HORIZON = 5
LQ_STATE_WEIGHT = 1e4  # cost per m² of every predicted state's distance to the goal (cm²)
LQ_ACTION_WEIGHT = 1e3  # cost per (m/s)² of every action
LQ_STARTS = torch.tensor([[0.0, 0.0], [0.1, -0.05], [0.02, -0.02]], dtype=torch.float64)  # m, 5-10 cm from GOAL
LQ_PLANNERS = {  # planner, config and the relative excess over the optimum's cost it must stay within
    "mppi": (MPPI, MPPIConfig(return_best=False, iterations=10, gamma=0.2), 0.01),  # gamma matched to the costs
    "cem": (CEM, CEMConfig(iterations=10), 0.01),
    "gradient": (GradientShooting, GradientShootingConfig(steps=200, num_sequences=4), 1e-4),
}


def lq_cost(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """q sum_t |x_t - goal|² over the predicted states plus r sum_t |a_t|²."""
    state_cost = (states[:, 1:] - GOAL.to(states)).square().sum((-2, -1))
    return LQ_STATE_WEIGHT * state_cost + LQ_ACTION_WEIGHT * actions.square().sum((-2, -1))


def lq_optimum(start: torch.Tensor) -> tuple[np.ndarray, float]:
    """The optimal (H, 2) actions (m/s) from `start` and their cost, in closed form.

    Per axis, with e = x_0 - goal and L the (H, H) lower-triangular matrix of ones, the states are x - goal =
    e + dt L a, so the cost q |e 1 + dt L a|² + r |a|² is least at a = -(q dt² L^T L + r I)^-1 q dt L^T 1 e.
    """
    lower = np.tril(np.ones((LQ_HORIZON, LQ_HORIZON)))
    hessian = LQ_STATE_WEIGHT * DT**2 * lower.T @ lower + LQ_ACTION_WEIGHT * np.eye(LQ_HORIZON)
    error = start.numpy() - GOAL.numpy().astype(float)
    gradient = LQ_STATE_WEIGHT * DT * lower.T @ np.ones(LQ_HORIZON)
    actions = -np.linalg.solve(hessian, gradient)[:, None] * error[None]  # (H, 2)
    states = error + DT * np.cumsum(actions, axis=0)
    return actions, float(LQ_STATE_WEIGHT * np.sum(states**2) + LQ_ACTION_WEIGHT * np.sum(actions**2))


def lq_planner(name: str, seed: int = 0) -> Planner:
    cls, config, _ = LQ_PLANNERS[name]
    low, high = LOW.double(), HIGH.double()
    return cls(step, lq_cost, config, low, high, seed=seed, horizon=LQ_HORIZON)


@pytest.mark.parametrize("name", LQ_PLANNERS)
def test_plans_reach_the_closed_form_optimum_batched_as_separately(name):
    """From 3 starts at once and from each alone, every plan costs within the planner's tolerance of the optimum;
    the reported states and cost are those of the returned actions."""
    tolerance = LQ_PLANNERS[name][2]
    batched = lq_planner(name).plan(LQ_STARTS)
    assert batched.actions.shape == (3, LQ_HORIZON, 2) and batched.states.shape == (3, LQ_HORIZON + 1, 2)
    replay = LQ_STARTS[:, None] + DT * torch.cumsum(batched.actions, dim=1)
    torch.testing.assert_close(batched.states, torch.cat([LQ_STARTS[:, None], replay], dim=1))
    torch.testing.assert_close(batched.cost, lq_cost(batched.states, batched.actions))
    for index, start in enumerate(LQ_STARTS):
        optimal_actions, optimal_cost = lq_optimum(start)
        assert np.abs(optimal_actions).max() < 0.3  # the optimum lies within the bounds
        alone = lq_planner(name, seed=index + 1).plan(start)
        for plan in (alone, PlanResult(batched.actions[index], batched.cost[index], batched.states[index])):
            excess = (float(plan.cost) - optimal_cost) / optimal_cost
            assert -1e-9 < excess < tolerance, f"{name}: {excess:.2e} above the optimum"
            if name == "gradient":
                np.testing.assert_allclose(plan.actions.numpy(), optimal_actions, atol=1e-3)


FAR_GOAL_SETTINGS = {"mppi": {"noise_std": 0.001}, "mppi_mean": {"noise_std": 0.001}, "cem": {"iterations": 25}}
"""Sampling planners come only as close to a bound as their samples: MPPI's noise and CEM's final spread below 1e-3."""


@pytest.mark.parametrize("name", PLANNERS)
def test_plans_meet_the_bounds_for_a_far_goal(name):
    """A goal 7 m away: the best plan holds every action on the (asymmetric) bounds, at (0.2, -0.1) m/s. From a warm
    start beyond the bounds (clipped), every plan lies within them and on that corner to 1e-3."""
    far = torch.tensor([5.0, -5.0])
    low, high = torch.tensor([-0.3, -0.1]), torch.tensor([0.2, 0.3])

    def far_cost(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return (states[:, -1] - far).square().sum(-1)

    planner = make(name, far_cost, low=low, high=high, **FAR_GOAL_SETTINGS.get(name, {}))
    result = planner.plan(torch.zeros(2), warm_start=torch.tensor([1.0, -1.0]).expand(10, 2))
    assert bool(((result.actions >= low) & (result.actions <= high)).all())
    corner = torch.tensor([0.2, -0.1]).expand(10, 2)
    assert float((result.actions - corner).abs().max()) < 1e-3


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

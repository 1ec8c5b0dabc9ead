"""The MPC controller and planning costs, with real dynamics models and the real simulator."""

from __future__ import annotations

import dataclasses
import math

import mujoco
import numpy as np
import pytest
import torch

from keydyn.control import MPCConfig, MPCController, constant_velocity_grid, terminal_cost, tracking_cost
from keydyn.control.mpc import PlanError, model_dynamics
from keydyn.control.run import load_run, run_controller
from keydyn.dynamics.model import PAPER_HIDDEN, DynamicsMLP
from keydyn.dynamics.train import load_dynamics
from keydyn.evaluation.goals import GoalPairConfig, goal_pair
from keydyn.latents.gt3d import GroundTruthEncoder
from keydyn.models import shipped_run
from keydyn.planning import MPPIConfig, RandomShootingConfig
from keydyn.sim.config import task_config
from keydyn.sim.env import PushingEnv, mug_shape


def small_mpc(**overrides) -> MPCConfig:
    values = {"planner": MPPIConfig(num_samples=64, iterations=2), "grid_headings": 36, **overrides}
    return MPCConfig(**values)


def test_terminal_cost_is_the_scaled_keypoint_distance_per_environment():
    keypoints = slice(0, 3)
    goals = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    cost = terminal_cost(goals, keypoints, scale=100.0)
    # B = 2 environments x N = 2 samples, H = 1; state = 3 keypoint entries + 2 extra (ignored).
    states = torch.zeros(4, 2, 5)
    states[:, -1, :3] = torch.tensor([[0.03, 0.04, 0.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    states[:, -1, 3:] = 9.0  # not part of the object keypoints
    np.testing.assert_allclose(cost(states, torch.zeros(4, 1, 2)).numpy(), [5.0, 0.0, 0.0, 100.0], atol=1e-4)


def test_tracking_cost_sums_squared_errors_over_the_horizon():
    reference = torch.tensor([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0]])  # H = 2, K = 1
    cost = tracking_cost(reference, slice(0, 3), scale=100.0)
    states = torch.zeros(1, 3, 3)
    states[0, 1] = torch.tensor([0.0, 0.02, 0.0])  # 2 cm off at t = 1
    states[0, 2] = torch.tensor([0.01, 0.0, 0.0])  # on the reference at t = 2
    assert float(cost(states, torch.zeros(1, 2, 2))) == pytest.approx(4.0, abs=1e-4)
    with pytest.raises(ValueError, match="reference has 2 steps"):
        cost(torch.zeros(1, 4, 3), torch.zeros(1, 3, 2))


def test_constant_velocity_grid_covers_every_heading_and_speed():
    grid = constant_velocity_grid(8, (0.1, 0.2))
    assert grid.shape == (17, 2)
    speeds = np.linalg.norm(grid, axis=1)
    np.testing.assert_allclose(np.sort(speeds)[1:], [0.1] * 8 + [0.2] * 8, atol=1e-6)
    assert speeds.min() == 0.0
    headings = np.degrees(np.arctan2(grid[:8, 1], grid[:8, 0])) % 360
    np.testing.assert_allclose(np.sort(headings), np.arange(0, 360, 45), atol=1e-4)


def test_bf16_dynamics_of_the_paper_network_differ_from_fp32_by_little():
    """The shipped GT 3D model (the paper's 500 x 500 MLP) pushes the box 10 steps from 16 pair starts at their push
    velocity: bf16 ends off fp32 (it really ran in bf16) by under 3% of each push's keypoint displacement."""
    model = load_dynamics(shipped_run("top_down", "gt3d"))
    assert model.hidden == PAPER_HIDDEN
    env = PushingEnv("top_down", images=False)
    encoder = GroundTruthEncoder(env.task)
    latents, velocities = [], []
    for index in range(16):
        pair = goal_pair(env, GoalPairConfig(push_steps=(10,)), index)
        observation, info = env.reset(options=pair.reset_options(pair.start_state))
        encoder.reset(observation, info)
        latents.append(encoder.encode(observation, info))
        velocities.append(pair.push_velocity)
    env.close()
    start = torch.as_tensor(np.stack(latents))
    actions = torch.as_tensor(np.stack(velocities), dtype=torch.float32)
    state = model.pack_state(start[:, None].repeat(1, model.history, 1), torch.zeros(16, model.history - 1, 2))
    final = {}
    for precision in ("fp32", "bf16"):
        step, x = model_dynamics(model, precision), state
        with torch.no_grad():
            for _ in range(10):
                x = step(x, actions)
        assert x.dtype == torch.float32
        final[precision] = model.current_latent(x)[:, :12].reshape(16, 4, 3)  # the box's keypoints, metres
    displacement = (final["fp32"] - start[:, :12].reshape(16, 4, 3)).norm(dim=-1).mean(dim=-1)  # (16,)
    assert bool((displacement > 0.01).all())  # every push moved the box
    difference = (final["bf16"] - final["fp32"]).norm(dim=-1).amax(dim=-1)  # (16,) metres
    assert float(difference.max()) > 1e-5  # bf16 arithmetic really ran
    assert bool((difference < 0.03 * displacement).all()), (difference / displacement).max()


def test_controller_keeps_history_and_shrinks_its_horizon():
    torch.manual_seed(0)
    model = DynamicsMLP(latent_dim=14, history=2, hidden=(32,))
    controller = MPCController(model, small_mpc(horizon=10))
    assert [controller.horizon(s) for s in (15, 10, 3, 1)] == [10, 10, 3, 1]
    latent0 = np.arange(14, dtype=np.float32) / 100
    controller.reset(latent0, seed=0)
    goal = torch.zeros(12)
    horizons = []

    def make_cost(horizon):
        horizons.append(horizon)
        return terminal_cost(goal, controller.state_part)

    action = controller.act(latent0, make_cost, steps_left=3)
    assert action.shape == (2,) and np.all(np.abs(action) <= 0.3 + 1e-6)
    latent1 = latent0 + 0.01
    controller.act(latent1, make_cost, steps_left=2)
    assert horizons == [3, 2]
    latents, past = model.unpack_state(controller.state()[None])
    np.testing.assert_allclose(latents[0, 0].numpy(), latent0)
    np.testing.assert_allclose(latents[0, 1].numpy(), latent1)
    np.testing.assert_allclose(past[0, 0].numpy(), action)  # the action executed between the two latents


def test_a_goal_of_another_latent_or_a_model_predicting_nan_is_refused():
    torch.manual_seed(0)
    model = DynamicsMLP(latent_dim=14, history=2, hidden=(32,))
    controller = MPCController(model, small_mpc(horizon=4))
    latent = np.zeros(14, dtype=np.float32)
    with pytest.raises(ValueError, match=r"goal latent has shape \(20,\), the model's latents \(14,\)"):
        controller.goal_cost(np.zeros(20))  # a latent of another method (a DS goal for an SDS run, say)
    with pytest.raises(ValueError, match=r"reference latents have shape \(4, 12\)"):
        controller.tracking_cost(np.zeros((4, 12)))
    with torch.no_grad():
        model.net[0].weight[0, 0] = float("nan")  # a model that predicts NaN
    controller = MPCController(model, small_mpc(horizon=4))
    controller.reset(latent, seed=0)
    state, random_state = controller.state(), controller._episode(0).generator.get_state()
    with pytest.raises(PlanError, match=r"episodes \[0\]: .* rollouts end in NaN or inf") as refused:
        controller.act(latent + 0.01, lambda horizon: controller.goal_cost(latent), steps_left=4)
    assert refused.value.episodes == [0]
    assert torch.equal(controller.state(), state)  # the refused step left the episode as it was
    assert torch.equal(controller._episode(0).generator.get_state(), random_state)


DT = 0.1  # s, the step of `pushed_point_model`


def pushed_point_model() -> DynamicsMLP:
    """An exact DynamicsMLP of one keypoint and the pusher both moved by DT * a (z unchanged): latent (5,) metres,
    history 1. Its ReLU layer passes each action component through as the pair relu(a) - relu(-a)."""
    model = DynamicsMLP(latent_dim=5, history=1, hidden=(4,))
    first, second = model.net[0], model.net[2]
    with torch.no_grad():
        for parameter in model.net.parameters():
            parameter.zero_()
        for unit, (feature, sign) in enumerate([(5, 1.0), (5, -1.0), (6, 1.0), (6, -1.0)]):  # features: z (5), a (2)
            first.weight[unit, feature] = sign
        for output in (0, 3):  # keypoint x, pusher x
            second.weight[output, :2] = torch.tensor([DT, -DT])
        for output in (1, 4):  # keypoint y, pusher y
            second.weight[output, 2:] = torch.tensor([DT, -DT])
    return model


def test_grid_seed_is_the_constant_velocity_that_ends_nearest_the_goal():
    """Held for H steps, velocity v moves the keypoint by H DT v: the grid velocity nearest (goal - start) / (H DT)
    (found here by brute force over the headings and speeds) is the first plan (a one-sample random shooting
    planner returns its warm start)."""
    model = pushed_point_model()
    start = np.array([0.05, -0.02, 0.03, 0.0, -0.1], dtype=np.float32)
    wanted = 0.183 * np.array([math.cos(math.radians(37.3)), math.sin(math.radians(37.3))])  # m/s, off the grid
    horizon = 5
    goal = torch.as_tensor(start[:3] + np.append(horizon * DT * wanted, 0.0))
    planner = RandomShootingConfig(num_samples=1)
    mpc = MPCConfig(planner=planner, horizon=horizon, shrinking_horizon=False, precision="fp32")  # 1-degree grid
    controller = MPCController(model, mpc)
    controller.reset(start, seed=0)
    plan = controller.plan(start, terminal_cost(goal, controller.state_part), horizon)
    headings = np.radians(np.arange(mpc.grid_headings) * 360 / mpc.grid_headings)
    grid = [(speed * math.cos(h), speed * math.sin(h)) for speed in mpc.grid_speeds for h in headings] + [(0, 0)]
    best = min(grid, key=lambda v: np.linalg.norm(np.asarray(v) - wanted))
    assert np.degrees(math.atan2(best[1], best[0])) == pytest.approx(37.0) and math.hypot(*best) == pytest.approx(0.18)
    np.testing.assert_allclose(plan.actions.numpy(), np.tile(best, (horizon, 1)), atol=1e-6)


@pytest.mark.parametrize("warm_start", ["shift_zero", "shift_repeat"])
def test_each_plan_starts_from_the_previous_plan_shifted(warm_start):
    """A one-sample random shooting planner returns its warm start: after a random first plan (no grid seed), each
    plan is the previous one shifted (cut to a shrinking horizon, padded with zeros when the horizon grows)."""
    model = pushed_point_model()
    planner = RandomShootingConfig(num_samples=1, sampling="iid", warm_start=warm_start)
    controller = MPCController(model, small_mpc(planner=planner, horizon=6, grid_seed=False, precision="fp32"))
    latent = np.array([0.05, -0.02, 0.03, 0.0, -0.1], dtype=np.float32)
    controller.reset(latent, seed=0)

    def planned(steps_left: int | None) -> np.ndarray:
        """Act, and read the (H, 2) plan back from the pusher positions predicted along it, m/s."""
        controller.act(latent, lambda horizon: terminal_cost(torch.zeros(3), controller.state_part), steps_left)
        return np.diff(controller.predicted_latents()[:, 3:], axis=0) / DT

    def shifted(plan: np.ndarray) -> np.ndarray:
        return np.vstack([plan[1:], np.zeros(2) if warm_start == "shift_zero" else plan[-1]])

    first = planned(None)
    assert first.shape == (6, 2) and np.abs(first).min() > 1e-3  # random actions, none zero
    second = planned(None)
    np.testing.assert_allclose(second, shifted(first), atol=1e-5)
    third = planned(3)  # the horizon shrinks to 3: the shifted plan is cut
    np.testing.assert_allclose(third, shifted(second)[:3], atol=1e-5)
    fourth = planned(None)  # and grows back to 6: the shifted plan is padded with zeros
    np.testing.assert_allclose(fourth, np.vstack([shifted(third), np.zeros((3, 2))]), atol=1e-5)


@pytest.mark.parametrize("gain", [1.0, 0.25])
def test_observation_gain_blends_located_keypoints_with_the_models_prediction(gain):
    torch.manual_seed(0)
    model = DynamicsMLP(latent_dim=14, history=2, hidden=(32,))
    controller = MPCController(model, small_mpc(observation_gain=gain))
    latent0 = np.linspace(-0.1, 0.1, 14).astype(np.float32)
    latent1 = latent0 + 0.02

    def make_cost(horizon):
        return terminal_cost(torch.zeros(12), controller.state_part)

    controller.reset(latent0, seed=0)
    action = controller.act(latent0, make_cost, steps_left=3)
    before = controller.state()
    predicted = model_dynamics(model, "bf16")(before[None], torch.as_tensor(action)[None])[0, controller.state_part]
    controller.act(latent1, make_cost, steps_left=2)
    recorded = model.unpack_state(controller.state()[None])[0][0, 1].numpy()
    expected = latent1.copy()
    expected[:12] = gain * latent1[:12] + (1 - gain) * predicted.numpy()  # the pusher (last 2) is as observed
    np.testing.assert_allclose(recorded, expected, atol=1e-6)
    assert np.abs(predicted.numpy() - latent1[:12]).max() > 1e-3  # the two sources differ: the blend is seen
    with pytest.raises(ValueError, match=r"observation_gain.*\(0, 1\]"):
        small_mpc(observation_gain=0.0)


def test_controller_is_reproducible_from_its_seed():
    torch.manual_seed(0)
    model = DynamicsMLP(latent_dim=14, history=1, hidden=(32,))
    latent = np.linspace(-0.1, 0.1, 14).astype(np.float32)

    def first_action(seed: int) -> np.ndarray:
        mppi = MPPIConfig(num_samples=64, iterations=2, return_best=False)  # the weighted mean: seed-dependent
        controller = MPCController(model, small_mpc(grid_seed=False, planner=mppi))
        controller.reset(latent, seed)
        return controller.act(latent, lambda h: terminal_cost(torch.zeros(12), controller.state_part))

    np.testing.assert_array_equal(first_action(3), first_action(3))
    assert not np.array_equal(first_action(3), first_action(4))


def test_ground_truth_encoder_reads_the_true_pose_and_each_mugs_shape():
    env = PushingEnv("mugs", width=32, height=24, images=False)
    encoder = GroundTruthEncoder(env.task)
    for instance in (0, 3):
        observation, info = env.reset(seed=1, options={"mug_instance": instance})
        assert "top_down/rgb" not in observation  # images=False renders nothing
        encoder.reset(observation, info)
        latent = encoder.encode(observation, info)
        shape = mug_shape(instance)
        rim = latent[:3]
        # The first keypoint is on the rim: the mug's height along its axis from the base, one radius off the axis.
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, info["object_quaternion"])
        axis = rotation.reshape(3, 3)[:, 2]
        offset = rim - info["object_position"]
        assert offset @ axis == pytest.approx(shape.height, abs=2e-3)
        assert np.linalg.norm(offset - (offset @ axis) * axis) == pytest.approx(shape.radius, abs=4e-3)
        np.testing.assert_allclose(latent[-2:], observation["pusher_position"])
    env.close()
    with pytest.raises(RuntimeError, match="reset"):
        GroundTruthEncoder(task_config("mugs")).encode({}, {})


def test_a_run_is_planned_within_its_tasks_speed_limit():
    """The controller of a run plans within min(--mpc.action-limit, the task's max_speed): a task whose pusher
    clips at 0.2 m/s (gymnasium_pusher's) is never planned 0.3 m/s, whatever the grid's speeds."""
    trained = load_run(shipped_run("top_down", "gt3d"))
    slow = dataclasses.replace(trained, task=dataclasses.replace(trained.task, max_speed=0.2))
    assert run_controller(trained, MPCConfig()).config.action_limit == pytest.approx(0.3)
    controller = run_controller(slow, MPCConfig(grid_headings=36))
    assert controller.config.action_limit == pytest.approx(0.2)
    env = PushingEnv("top_down", images=False)
    observation, info = env.reset(seed=0)
    latent = trained.encoder.encode(observation, info)
    controller.reset(latent, seed=0)
    action = controller.act(latent, lambda horizon: controller.goal_cost(latent + 0.5), None)
    env.close()
    assert np.abs(action).max() <= 0.2 + 1e-6 and np.abs(controller.planned_actions()).max() <= 0.2 + 1e-6

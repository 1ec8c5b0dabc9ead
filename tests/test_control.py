"""The MPC controller and planning costs, with real dynamics models and the real simulator."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keydyn.control import MPCConfig, MPCController, constant_velocity_grid, terminal_cost, tracking_cost
from keydyn.control.mpc import model_dynamics
from keydyn.dynamics.model import DynamicsMLP
from keydyn.dynamics.train import load_dynamics
from keydyn.latents.gt3d import GroundTruthEncoder
from keydyn.planning import MPPIConfig
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


def test_bf16_dynamics_stay_within_a_millimetre_of_fp32(small_run):
    model = load_dynamics(small_run)
    generator = torch.Generator().manual_seed(0)
    state = model.latent_mean.repeat(model.history)[None].repeat(256, 1)
    state = torch.cat([state, torch.zeros(256, model.state_dim - state.shape[1])], dim=1)
    actions = 0.2 * torch.randn(256, 10, 2, generator=generator)
    trajectories = {}
    for precision in ("fp32", "bf16"):
        step, x = model_dynamics(model, precision), state
        with torch.no_grad():
            for t in range(10):
                x = step(x, actions[:, t])
        assert x.dtype == torch.float32
        trajectories[precision] = model.current_latent(x)
    assert float((trajectories["bf16"] - trajectories["fp32"]).abs().max()) < 1e-3  # metres, after 10 steps


def test_controller_keeps_history_and_warm_start_and_shrinks_its_horizon():
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
        # The first keypoint is on the rim: at the mug's height, one radius from its axis.
        assert rim[2] == pytest.approx(info["object_position"][2] + shape.height, abs=2e-3)
        assert math.dist(rim[:2], info["object_position"][:2]) == pytest.approx(shape.radius, abs=4e-3)
        np.testing.assert_allclose(latent[-2:], observation["pusher_position"])
    env.close()
    with pytest.raises(RuntimeError, match="reset"):
        GroundTruthEncoder(task_config("mugs")).encode({}, {})

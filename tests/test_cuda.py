"""What runs on a CUDA device: rollouts replayed as CUDA graphs (`keydyn.planning.graphs`) give the step-by-step
rollouts' numbers, and the descriptor encoder's network on the GPU locates the CPU's keypoints. These tests run
where a GPU is (benchmarks/gpu.sh runs them on one); on the CPU the graphs' eager fallback is checked.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from keydyn.control import MPCConfig, MPCController
from keydyn.control.mpc import model_dynamics
from keydyn.control.run import control_setup
from keydyn.dynamics.model import PAPER_HIDDEN, DynamicsMLP
from keydyn.evaluation.goals import GoalPairConfig, goal_pair
from keydyn.latents.gt3d import GroundTruthEncoder
from keydyn.models import shipped_run
from keydyn.planning import MPPIConfig
from keydyn.planning.base import Simulator, simulate
from keydyn.planning.graphs import GraphedDynamics
from keydyn.sim.env import PushingEnv

from .test_evaluate_batched import start_scenes

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def dynamics_model() -> DynamicsMLP:
    """The paper's dynamics network (2 x 500) on a 14-d latent with history 2, seeded."""
    torch.manual_seed(0)
    return DynamicsMLP(latent_dim=14, history=2, hidden=PAPER_HIDDEN)


def paper_dynamics(device: str, precision: str) -> GraphedDynamics:
    model = dynamics_model().to(device).eval().requires_grad_(False)
    return GraphedDynamics(model_dynamics(model, precision), horizon=10)


def inputs(device: str, samples: int, horizon: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = 0.1 * torch.randn(samples, 30, generator=generator)  # history 2 x latent 14, and one action
    actions = 0.3 * (2 * torch.rand(samples, horizon, 2, generator=generator) - 1)
    return state.to(device), actions.to(device)


def test_graphed_dynamics_steps_eagerly_on_the_cpu_and_is_a_simulator():
    """On CPU tensors `simulate` is the step-by-step rollout, and `rollout` takes the one-call path."""
    dynamics = paper_dynamics("cpu", "fp32")
    state, actions = inputs("cpu", 64, 5, seed=0)
    assert isinstance(dynamics, Simulator)
    with torch.no_grad():
        torch.testing.assert_close(dynamics.simulate(state, actions), simulate(dynamics.step, state, actions))
    assert not dynamics._graphs
    assert not isinstance(MPCController(dynamics_model(), MPCConfig()).dynamics, GraphedDynamics)


def recorded(dynamics: GraphedDynamics) -> list[tuple[int, int]]:
    """(M, H) of the recorded graphs, least recently used first."""
    return [(key[1][0], key[1][1]) for key in dynamics._graphs]


@cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_replayed_rollouts_equal_the_step_by_step_ones(precision):
    """Bit-identical states for new inputs of a recorded shape; a shorter horizon replays the full horizon's graph
    (padded), other row counts and longer horizons get their own; results that a later replay does not
    overwrite; graphs recorded under inference mode replay outside it; the least recently used graph is dropped
    first; an eager rollout whenever gradients are needed."""
    dynamics = paper_dynamics("cuda", precision)
    results = []
    with torch.inference_mode():
        for seed, samples, horizon in ((0, 1000, 10), (1, 1000, 10), (2, 1000, 4), (3, 500, 10), (4, 1000, 12)):
            state, actions = inputs("cuda", samples, horizon, seed)
            got = dynamics.simulate(state, actions)
            assert got.shape == (samples, horizon + 1, 30)
            torch.testing.assert_close(got, simulate(dynamics.step, state, actions), rtol=0, atol=0)
            results.append((got, got.clone()))
    assert recorded(dynamics) == [(1000, 10), (500, 10), (1000, 12)]
    for got, copy in results:
        assert torch.equal(got, copy)
    with torch.no_grad():
        state, actions = inputs("cuda", 1000, 7, seed=5)
        torch.testing.assert_close(dynamics.simulate(state, actions), simulate(dynamics.step, state, actions))
        assert recorded(dynamics) == [(500, 10), (1000, 12), (1000, 10)]
        dynamics.max_graphs = 3
        dynamics.simulate(*inputs("cuda", 200, 10, seed=6))
    assert recorded(dynamics) == [(1000, 12), (1000, 10), (200, 10)]
    state, actions = inputs("cuda", 8, 3, seed=3)
    actions.requires_grad_(True)
    with torch.enable_grad():
        dynamics.simulate(state, actions).sum().backward()
    assert actions.grad is not None and torch.isfinite(actions.grad).all()


@cuda
def test_descriptor_encoder_on_the_gpu_locates_the_cpus_keypoints():
    """The shipped SDS encoder with its network on the GPU gives 3 scenes' latents within 1 mm of the CPU's (the
    GPU's convolutions round differently), in one batch and one by one."""
    setup = control_setup(shipped_run("top_down", "sds"), None, "best", MPCConfig())
    observations, infos = start_scenes(setup.env, 3)
    on_cpu = setup.encoder.encode_batch(observations, infos)
    setup.encoder.to(torch.device("cuda"))
    assert next(setup.encoder.net.parameters()).is_cuda
    on_gpu = setup.encoder.encode_batch(observations, infos)
    for cpu, gpu, observation, info in zip(on_cpu, on_gpu, observations, infos, strict=True):
        assert isinstance(gpu, np.ndarray) and gpu.dtype == np.float32
        np.testing.assert_allclose(gpu, cpu, rtol=0, atol=1e-3)
        np.testing.assert_allclose(setup.encoder.encode(observation, info), gpu, rtol=0, atol=1e-4)
    setup.env.close()


@cuda
def test_controller_plans_the_same_actions_with_and_without_cuda_graphs():
    """Closed loops of the shrinking-horizon MPC on the GPU, with and without graphs, execute the same actions."""
    env = PushingEnv("top_down", images=False)
    encoder = GroundTruthEncoder(env.task)
    pair = goal_pair(env, GoalPairConfig(), 0)
    executed = []
    for graphs in (False, True):
        planner = MPPIConfig(num_samples=256)
        config = MPCConfig(planner=planner, horizon=6, device="cuda", cuda_graphs=graphs, grid_headings=36)
        controller = MPCController(dynamics_model(), config)
        assert isinstance(controller.dynamics, GraphedDynamics) == graphs
        goal = encoder.encode(*env.reset(options=pair.reset_options(pair.goal_state)))
        observation, info = env.reset(options=pair.reset_options(pair.start_state))
        controller.reset(encoder.encode(observation, info), seed=0)
        cost = controller.goal_cost(goal)
        actions = []
        for left in range(8, 0, -1):
            action = controller.act(encoder.encode(observation, info), lambda horizon, cost=cost: cost, left)
            observation, *_, info = env.step(action)
            actions.append(action)
        executed.append(np.stack(actions))
    env.close()
    np.testing.assert_array_equal(executed[1], executed[0])


@cuda
def test_reproduce_trains_every_stage_on_the_gpu_it_is_given(tmp_path):
    """`keydyn reproduce --device cuda`: the descriptor, Transporter and dynamics (autoencoder too) runs train on
    the GPU, each recording it in its config.json, and the table is written."""
    from keydyn.cli import main

    out = tmp_path / "repro"
    args = ["reproduce", "table2", "--preset", "tiny", "--device", "cuda", "--no-progress", "--out", str(out)]
    assert main([*args, "--methods", "transporter3d", "autoencoder", "sds", "--transporter-crops", "mask"]) == 0
    runs = ["visual/seed0", "transporter/mask/seed0", "runs/transporter3d@mask/seed0", "runs/autoencoder/seed0"]
    for run in runs:
        assert json.loads((out / run / "config.json").read_text())["device"].startswith("cuda"), run
    assert set(json.loads((out / "table.json").read_text())["rows"]) == {"transporter3d@mask", "autoencoder", "sds"}

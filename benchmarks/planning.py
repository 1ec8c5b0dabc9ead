"""MPPI planning speed: one keydyn MPPI call against pytorch_mppi's MPPI on the same MLP dynamics, and the rate
of the closed control loop without perception.

The dynamics is an MLP on (latent state, action) with two hidden layers of 500 ReLU units, as for the paper's
learned keypoint dynamics; the cost is the squared terminal distance to a fixed goal latent. Both planners use
N samples, horizon H and M iterations (pytorch_mppi: M calls of `command(state, shift_nominal_trajectory=False)`),
torch.inference_mode, in the same process, timed in alternation. keydyn is timed with the MLP in float32 (the
same arithmetic as pytorch_mppi) and with its layers under bf16 autocast (keydyn's default for planning; states
stay float32), the latter also against pytorch_mppi in float32. `mlp_only_bf16_ms` times only the H x M
evaluations of the MLP on N samples under bf16 autocast that any such planner makes: the floor of a planning
call with this model, sampling and costs aside. On a GPU keydyn is also timed with each rollout replayed as a
recorded CUDA graph (`keydyn.planning.graphs.GraphedDynamics`, the controller's default there).

The control loop: `keydyn.control.MPCController` with the paper's dynamics model (GT 3D latent, history 2,
2 x 500), MPPI with the defaults above and the shrinking horizon off, driving the top_down task (physics, no
rendering) from observation to action; reported as steps per second.

Prints one JSON document with median milliseconds per call and the ratios.

    python benchmarks/planning.py                     # latent dims 14 and 152, 2 threads
    python benchmarks/planning.py --dims 152 --threads 8 --repeats 30
    python benchmarks/planning.py --device cuda       # on a GPU (issue 19's target: <= 2 ms on an H100)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from control_loop import time_control_loop
from keydyn.control import MPCConfig, MPCController
from keydyn.control.mpc import model_dynamics
from keydyn.dynamics.model import PAPER_HIDDEN, DynamicsMLP
from keydyn.latents.gt3d import GroundTruthEncoder
from keydyn.machine import machine
from keydyn.planning import MPPI, MPPIConfig
from keydyn.planning.graphs import GraphedDynamics
from keydyn.sim.env import PushingEnv

PIP_COMMAND = "python -m pip install -e .[bench]  (from the repository root: pytorch-mppi 0.9.1 and its dependencies)"
ACTION_DIM = 2
BOUND = 0.3  # m/s


class MLPDynamics(nn.Module):
    """next latent (N, S) from latent (N, S) and action (N, A) in m/s; 2 hidden layers of 500 ReLU units."""

    def __init__(self, state_dim: int, action_dim: int, hidden: int = 500) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_dim + action_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, state_dim),
        )

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([state, action], dim=-1))


def paired_median_ms(
    fns: list[Callable[[], object]], repeats: int, warmup: int = 2, device: torch.device | None = None
) -> list[float]:
    """Median wall-clock milliseconds of each `fn()` over `repeats` rounds after `warmup` untimed rounds (on a
    GPU, each call is timed to the end of its kernels).

    Each round calls every function once in turn, so drifting machine load affects all of them alike.
    """
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for fn, fn_times in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            if device is not None and device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_ >= warmup:
                fn_times.append(1e3 * (time.perf_counter() - start))
    return [statistics.median(t) for t in times]


def bench_dim(state_dim: int, args: argparse.Namespace, pytorch_mppi_cls: type) -> dict:
    """Median ms per planning call of both planners for one latent size."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    dynamics = MLPDynamics(state_dim, ACTION_DIM).eval().to(device)
    state, goal = torch.randn(state_dim, device=device), torch.randn(state_dim, device=device)
    low = torch.full((ACTION_DIM,), -BOUND, device=device)
    high = torch.full((ACTION_DIM,), BOUND, device=device)
    config = MPPIConfig(num_samples=args.samples, iterations=args.iterations)

    def terminal_cost(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return (states[:, -1] - goal).square().sum(-1)

    ours = MPPI(dynamics, terminal_cost, config, low, high, horizon=args.horizon)

    def bf16_dynamics(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return dynamics(x, u).float()

    ours_bf16 = MPPI(bf16_dynamics, terminal_cost, config, low, high, horizon=args.horizon)
    graphed = {
        precision: MPPI(GraphedDynamics(step, args.horizon), terminal_cost, config, low, high, horizon=args.horizon)
        for precision, step in (("fp32", dynamics), ("bf16", bf16_dynamics))
        if device.type == "cuda"
    }
    graphed_calls = [planner.plan for planner in graphed.values()]
    first_ms: dict[str, float] = {}

    theirs = pytorch_mppi_cls(
        dynamics,
        lambda s, a: torch.zeros(s.shape[0], dtype=s.dtype, device=s.device),
        state_dim,
        noise_sigma=config.noise_std**2 * torch.eye(ACTION_DIM, device=device),
        num_samples=args.samples,
        horizon=args.horizon,
        terminal_state_cost=lambda states, actions: (states[..., -1, :] - goal).square().sum(-1),
        lambda_=1.0 / config.gamma,
        u_min=low,
        u_max=high,
        device=device,
    )

    def theirs_call() -> None:
        for _ in range(args.iterations):
            theirs.command(state, shift_nominal_trajectory=False)

    samples_state = torch.randn(args.samples, state_dim, device=device)
    samples_action = torch.randn(args.samples, ACTION_DIM, device=device)

    def mlp_only() -> None:  # the H x M batched MLP evaluations any such planner makes, and nothing else
        for _ in range(args.horizon * args.iterations):
            bf16_dynamics(samples_state, samples_action)

    with torch.inference_mode():
        for precision, planner in graphed.items():  # the first call records the graph
            start = time.perf_counter()
            planner.plan(state)
            torch.cuda.synchronize(device)
            first_ms[precision] = 1e3 * (time.perf_counter() - start)
        ours_ms, ours_bf16_ms, theirs_ms, mlp_ms, *graphed_ms = paired_median_ms(
            [
                lambda: ours.plan(state),
                lambda: ours_bf16.plan(state),
                theirs_call,
                mlp_only,
                *[lambda plan=plan: plan(state) for plan in graphed_calls],
            ],
            args.repeats,
            device=device,
        )
    figures = {}
    for precision, ms in zip(graphed, graphed_ms, strict=True):
        figures[f"keydyn_{precision}_cuda_graphs_ms"] = round(ms, 2)
        figures[f"ratio_keydyn_{precision}_cuda_graphs_over_pytorch_mppi"] = round(ms / theirs_ms, 3)
        figures[f"keydyn_{precision}_cuda_graphs_first_call_ms"] = round(first_ms[precision], 2)
    return {
        "latent_dim": state_dim,
        "keydyn_fp32_ms": round(ours_ms, 2),
        "keydyn_bf16_ms": round(ours_bf16_ms, 2),
        "pytorch_mppi_fp32_ms": round(theirs_ms, 2),
        "ratio_keydyn_fp32_over_pytorch_mppi": round(ours_ms / theirs_ms, 3),
        "ratio_keydyn_bf16_over_pytorch_mppi": round(ours_bf16_ms / theirs_ms, 3),
        "mlp_only_bf16_ms": round(mlp_ms, 2),
        "ratio_mlp_only_bf16_over_pytorch_mppi": round(mlp_ms / theirs_ms, 3),
        **figures,
    }


def control_loop_rate(args: argparse.Namespace) -> dict:
    """Steps per second of observe -> GT 3D latent -> MPPI -> act on top_down physics, for fp32 and bf16."""
    env = PushingEnv("top_down", images=False)
    encoder = GroundTruthEncoder(env.task)
    torch.manual_seed(0)
    model = DynamicsMLP(latent_dim=encoder.layout.dim, history=2, hidden=PAPER_HIDDEN)
    rates = {}
    variants = [("fp32", True, ""), ("bf16", True, "")]  # on a GPU the controller's default replays CUDA graphs
    if args.device.startswith("cuda"):
        variants += [("fp32", False, "_no_cuda_graphs"), ("bf16", False, "_no_cuda_graphs")]
    for precision, graphs, suffix in variants:
        mppi = MPPIConfig(num_samples=args.samples, iterations=args.iterations)
        config = MPCConfig(
            planner=mppi,
            horizon=args.horizon,
            shrinking_horizon=False,
            precision=precision,
            device=args.device,
            cuda_graphs=graphs,
        )
        times, _ = time_control_loop(env, encoder, MPCController(model, config), args.loop_steps)
        rates[f"control_loop_{precision}{suffix}_hz"] = round(1.0 / statistics.median(times), 2)
    # bf16 arithmetic against fp32: predicted latents of the same action sequences after H steps.
    device = model.latent_mean.device  # where the controller put the model
    state = torch.cat([model.latent_mean.repeat(2), torch.zeros(2, device=device)])[None].repeat(args.samples, 1)
    actions = BOUND * (2 * torch.rand(args.samples, args.horizon, ACTION_DIM, device=device) - 1)
    finals = []
    with torch.inference_mode():
        for precision in ("fp32", "bf16"):
            step, x = model_dynamics(model, precision), state
            for t in range(args.horizon):
                x = step(x, actions[:, t])
            finals.append(model.current_latent(x))
    rates["bf16_vs_fp32_max_latent_difference_m"] = float((finals[0] - finals[1]).abs().max())
    env.close()
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--dims", type=int, nargs="+", default=[14, 152], help="latent state sizes (GT 3D: 14; DS K=50: 152)"
    )
    parser.add_argument("--samples", type=int, default=1000, help="N sampled sequences")
    parser.add_argument("--horizon", type=int, default=10, help="H control steps")
    parser.add_argument("--iterations", type=int, default=3, help="M MPPI iterations per planning call")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per planner (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--loop-steps", type=int, default=30, help="timed control-loop steps")
    parser.add_argument("--device", default="cpu", help="where the planners run: cpu, cuda (the loop's MPC too)")
    args = parser.parse_args()

    try:
        import pytorch_mppi
    except ImportError as error:
        sys.exit(f"pytorch_mppi is needed for this benchmark ({error}); install it with:\n  {PIP_COMMAND}")

    torch.set_num_threads(args.threads)
    results = [bench_dim(dim, args, pytorch_mppi.MPPI) for dim in args.dims]
    document = {
        "benchmark": "mppi_planning_call",
        "settings": {
            "samples": args.samples,
            "horizon": args.horizon,
            "iterations": args.iterations,
            "action_dim": ACTION_DIM,
            "hidden": [500, 500],
            "dtypes": ["float32", "bf16 autocast (keydyn)"],
            "threads": args.threads,
            "device": args.device,
            "repeats": args.repeats,
            "torch": torch.__version__,
        },
        "results": results,
        "control_loop": control_loop_rate(args),
        "machine": machine(),
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()

"""MPPI planning speed: one keydyn MPPI call against pytorch_mppi's MPPI on the same MLP dynamics.

The dynamics is an MLP on (latent state, action) with two hidden layers of 500 ReLU units, as for the paper's
learned keypoint dynamics; the cost is the squared terminal distance to a fixed goal latent. Both planners use
N samples, horizon H and M iterations (pytorch_mppi: M calls of `command(state, shift_nominal_trajectory=False)`),
float32 and torch.inference_mode, in the same process, timed in alternation. Prints one JSON document with median
milliseconds per planning call and the ratio ours / pytorch_mppi.

    python benchmarks/planning.py                     # latent dims 16 and 152, 2 threads
    python benchmarks/planning.py --dims 152 --threads 8 --repeats 30
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

from keydyn.machine import machine
from keydyn.planning import MPPI, MPPIConfig

PIP_COMMAND = "python -m pip install --no-deps pytorch-mppi==0.9.1 arm-pytorch-utilities pytorch-seed"
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


def paired_median_ms(fns: list[Callable[[], object]], repeats: int, warmup: int = 2) -> list[float]:
    """Median wall-clock milliseconds of each `fn()` over `repeats` rounds after `warmup` untimed rounds.

    Each round calls every function once in turn, so drifting machine load affects all of them alike.
    """
    times: list[list[float]] = [[] for _ in fns]
    for round_ in range(warmup + repeats):
        for fn, fn_times in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                fn_times.append(1e3 * (time.perf_counter() - start))
    return [statistics.median(t) for t in times]


def bench_dim(state_dim: int, args: argparse.Namespace, pytorch_mppi_cls: type) -> dict:
    """Median ms per planning call of both planners for one latent size."""
    torch.manual_seed(0)
    dynamics = MLPDynamics(state_dim, ACTION_DIM).eval()
    state, goal = torch.randn(state_dim), torch.randn(state_dim)
    low, high = torch.full((ACTION_DIM,), -BOUND), torch.full((ACTION_DIM,), BOUND)
    config = MPPIConfig(num_samples=args.samples, horizon=args.horizon, iterations=args.iterations)

    def terminal_cost(states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return (states[:, -1] - goal).square().sum(-1)

    ours = MPPI(dynamics, terminal_cost, config, low, high)

    theirs = pytorch_mppi_cls(
        dynamics,
        lambda s, a: torch.zeros(s.shape[0], dtype=s.dtype),
        state_dim,
        noise_sigma=config.noise_std**2 * torch.eye(ACTION_DIM),
        num_samples=args.samples,
        horizon=args.horizon,
        terminal_state_cost=lambda states, actions: (states[..., -1, :] - goal).square().sum(-1),
        lambda_=1.0 / config.gamma,
        u_min=low,
        u_max=high,
    )

    def theirs_call() -> None:
        for _ in range(args.iterations):
            theirs.command(state, shift_nominal_trajectory=False)

    with torch.inference_mode():
        ours_ms, theirs_ms = paired_median_ms([lambda: ours.plan(state), theirs_call], args.repeats)
    return {
        "latent_dim": state_dim,
        "keydyn_ms": round(ours_ms, 2),
        "pytorch_mppi_ms": round(theirs_ms, 2),
        "ratio_keydyn_over_pytorch_mppi": round(ours_ms / theirs_ms, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", type=int, nargs="+", default=[16, 152], help="latent state sizes")
    parser.add_argument("--samples", type=int, default=1000, help="N sampled sequences")
    parser.add_argument("--horizon", type=int, default=10, help="H control steps")
    parser.add_argument("--iterations", type=int, default=3, help="M MPPI iterations per planning call")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per planner (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
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
            "dtype": "float32",
            "threads": args.threads,
            "repeats": args.repeats,
            "torch": torch.__version__,
        },
        "results": results,
        "machine": machine(),
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()

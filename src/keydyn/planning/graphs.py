"""CUDA-graph replay of the dynamics rollout inside a planning call.

A planner's rollout steps the dynamics H times per iteration, each step a dozen small kernels; on a GPU their
launches, not their arithmetic, bound the call. `GraphedDynamics` records the H steps once per shape as one CUDA
graph and replays it: the same kernels on the same inputs (so the same numbers), launched as one. The costs and the
planner's sampling stay eager, since a controller builds a new cost every step.
"""

from __future__ import annotations

import torch
from torch import Tensor

from keydyn.planning.base import Dynamics, simulate


class GraphedDynamics:
    """A `Dynamics` whose H-step rollouts (`simulate`) replay a CUDA graph recorded for their shape.

    step: the Markov step `(N, S), (N, A) -> (N, S)`. It must be a pure function of its inputs and of tensors
        that keep their storage (model weights): a recorded graph re-reads that memory and re-runs the recorded
        kernels, so a Python value the step reads is frozen at recording time.
    max_graphs: recorded shapes kept (a shrinking horizon records one per H); the oldest is dropped beyond it.

    Calls with autograd enabled (gradient shooting) and on CPU tensors run the step eagerly.
    """

    def __init__(self, step: Dynamics, max_graphs: int = 16) -> None:
        self.step = step
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = {}

    def __call__(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)

    def simulate(self, state: Tensor, actions: Tensor) -> Tensor:
        """(M, H + 1, S) states from (M, S) `state` under (M, H, A) `actions`, the first row `state` itself; the
        result is the caller's own tensor (not the graph's output buffer)."""
        if state.device.type != "cuda" or torch.is_grad_enabled():
            return simulate(self.step, state, actions)
        key = (tuple(state.shape), tuple(actions.shape), state.dtype, actions.dtype, state.device)
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                del self._graphs[next(iter(self._graphs))]
            self._graphs[key] = self._record(state, actions)
        graph, state_in, actions_in, states_out = self._graphs[key]
        state_in.copy_(state)
        actions_in.copy_(actions)
        graph.replay()
        return states_out.clone()

    def _record(self, state: Tensor, actions: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]:
        """Record the rollout for inputs shaped like `state` and `actions` (after warm-up runs on a side stream,
        as CUDA graphs need), with static input buffers the replays copy into."""
        with torch.inference_mode(False), torch.no_grad():  # buffers any later call, inference or not, may fill
            state_in, actions_in = state.clone(), actions.clone()
            side = torch.cuda.Stream(state.device)
            side.wait_stream(torch.cuda.current_stream(state.device))
            with torch.cuda.stream(side):
                for _ in range(2):
                    simulate(self.step, state_in, actions_in)
            torch.cuda.current_stream(state.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                states_out = simulate(self.step, state_in, actions_in)
        return graph, state_in, actions_in, states_out

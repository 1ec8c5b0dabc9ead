"""CUDA-graph replay of the dynamics rollout inside a planning call.

A planner's rollout steps the dynamics H times per iteration, each step a dozen small kernels; on a GPU their
launches, not their arithmetic, bound the call. `GraphedDynamics` records the H steps once per shape as one CUDA
graph and replays it: the same kernels on the same inputs (so the same numbers), launched as one. The costs and the
planner's sampling stay eager, since a controller builds a new cost every step.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor

from keydyn.planning.base import Dynamics, simulate


class GraphedDynamics:
    """A `Dynamics` whose H-step rollouts (`simulate`) replay a CUDA graph recorded for their shape.

    step: the Markov step `(N, S), (N, A) -> (N, S)`. It must be a pure function of its inputs and of tensors
        that keep their storage (model weights): a recorded graph re-reads that memory and re-runs the recorded
        kernels, so a Python value the step reads is frozen at recording time.
    horizon: rollouts of fewer steps are padded with zero actions to this many and cut back, so that a shrinking
        horizon replays one graph per number of rows M (a step's kernels do not depend on the steps after it:
        the same numbers); longer ones get their own graph.
    max_graphs: recorded shapes kept, the least recently used dropped beyond it.

    Calls with autograd enabled (gradient shooting) and on CPU tensors run the step eagerly.
    """

    def __init__(self, step: Dynamics, horizon: int, max_graphs: int = 16) -> None:
        self.step = step
        self.horizon = horizon
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[tuple, tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]] = OrderedDict()

    def __call__(self, state: Tensor, action: Tensor) -> Tensor:
        return self.step(state, action)

    def simulate(self, state: Tensor, actions: Tensor) -> Tensor:
        """(M, H + 1, S) states from (M, S) `state` under (M, H, A) `actions`, the first row `state` itself; the
        result is the caller's own tensor (not the graph's output buffer)."""
        if state.device.type != "cuda" or torch.is_grad_enabled():
            return simulate(self.step, state, actions)
        steps = actions.shape[1]
        if steps < self.horizon:
            actions = torch.cat(
                [actions, actions.new_zeros(actions.shape[0], self.horizon - steps, actions.shape[2])], 1
            )
        key = (tuple(state.shape), tuple(actions.shape), state.dtype, actions.dtype, state.device)
        with torch.cuda.device(state.device):
            if key in self._graphs:
                self._graphs.move_to_end(key)
            else:
                if len(self._graphs) >= self.max_graphs:
                    self._graphs.popitem(last=False)
                self._graphs[key] = self._record(state, actions)
            graph, state_in, actions_in, states_out = self._graphs[key]
            state_in.copy_(state)
            actions_in.copy_(actions)
            graph.replay()
            return states_out[:, : steps + 1].clone()

    def _record(self, state: Tensor, actions: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor, Tensor, Tensor]:
        """Record the rollout for inputs shaped like `state` and `actions` (after warm-up runs on a side stream,
        as CUDA graphs need), with static input buffers the replays copy into."""
        if torch.is_autocast_enabled("cuda"):
            raise RuntimeError(
                "GraphedDynamics (keydyn/planning/graphs.py): called under an enclosing torch.autocast, whose cached "
                "weight casts a recorded graph would read after they are freed; put the autocast inside the step "
                "(keydyn.control.mpc.model_dynamics does)"
            )
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

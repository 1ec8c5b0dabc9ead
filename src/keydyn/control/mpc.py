"""The closed-loop MPC controller: keeps the latent/action history, plans, executes the first action.

One call of `MPCController.act` per control step: pack the last n latents and n - 1 actions into the dynamics
model's Markov state, plan H steps (H fixed, or the steps left in the episode as in the original code), return
the first action and keep the rest, shifted, as the next call's warm start. The first call of an episode can
seed the planner with the best of a grid of constant pusher velocities (the original code's initialisation).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, NamedTuple

import numpy as np
import torch
import tyro
from torch import Tensor

from keydyn.control.costs import nonfinite_entries, per_environment, terminal_cost, tracking_cost
from keydyn.dynamics.model import DynamicsMLP
from keydyn.latents.base import PUSHER_DIM
from keydyn.planning import (
    CEM,
    MPPI,
    CEMConfig,
    GradientShooting,
    GradientShootingConfig,
    MPPIConfig,
    Planner,
    PlannerConfig,
    PlanResult,
    RandomShooting,
    RandomShootingConfig,
    rollout,
)
from keydyn.planning.base import Cost, Dynamics
from keydyn.planning.graphs import GraphedDynamics
from keydyn.runs import resolve_device


class PlannerEntry(NamedTuple):
    """A registered planner: its name (the `planner:NAME` subcommand, the `type` of a preset or config.json, the
    label in result tables upper-cased) and the class that plans with its config."""

    name: str
    planner: Callable[..., Planner]


PLANNERS: dict[type[PlannerConfig], PlannerEntry] = {
    MPPIConfig: PlannerEntry("mppi", MPPI),
    CEMConfig: PlannerEntry("cem", CEM),
    RandomShootingConfig: PlannerEntry("random", RandomShooting),
    GradientShootingConfig: PlannerEntry("gradient", GradientShooting),
}
"""The planner registry: config class -> planner. An entry here is all `MPCConfig.planner`, the command line
(`planner:NAME` with that config's options), presets and the controller need."""

PlannerChoice = functools.reduce(
    operator.or_,
    (
        Annotated[config_class, tyro.conf.subcommand(f"planner:{entry.name}", prefix_name=False)]
        for config_class, entry in PLANNERS.items()
    ),
)
"""The config of any registered planner; on the command line one `planner:NAME` subcommand per planner."""


def planner_name(config: PlannerConfig) -> str:
    """The registered name of the planner `config` configures ("mppi", "cem", ...)."""
    entry = PLANNERS.get(type(config))
    if entry is None:
        known = ", ".join(f"{cls.__name__} ({entry.name})" for cls, entry in PLANNERS.items())
        raise ValueError(f"no planner is registered for {type(config).__name__}; registered: {known}")
    return entry.name


@dataclass(frozen=True)
class MPCConfig:
    """Controller options. Units: m/s for actions, control steps for horizons."""

    planner: PlannerChoice = field(default_factory=MPPIConfig)
    """The planner; on the command line its name, then its options (e.g. `planner:cem --num-samples 500`)."""
    horizon: int = 10
    """Planning horizon H when fixed; with shrinking_horizon, the longest horizon used."""
    shrinking_horizon: bool = True
    """Plan to the end of the episode (H = steps left, capped at horizon), as the original code's goal reaching."""
    grid_seed: bool = True
    """Seed each episode's first plan with the best constant velocity of a grid (360 headings x speeds)."""
    grid_speeds: tuple[float, ...] = (0.15, 0.16, 0.17, 0.18, 0.19, 0.2, 0.21, 0.22, 0.23, 0.24)
    """Speeds of the grid, m/s (the original code's 0.15-0.24)."""
    grid_headings: int = 360
    action_limit: float = 0.3
    """Per-axis bound of planned pusher velocities, m/s (the original code's clip)."""
    cost_scale: float = 100.0
    """Cost units per unit of the compared latent entries (keypoint latents: 100 per metre, centimetres)."""
    precision: Literal["fp32", "bf16"] = "bf16"
    """Arithmetic of the dynamics model's layers while planning; bf16 autocast keeps states in fp32."""
    device: str = "cpu"
    """Torch device for planning; "auto" picks cuda when available."""
    cuda_graphs: bool = True
    """On a CUDA device, replay each rollout of the model as one recorded CUDA graph (`keydyn.planning.graphs`):
    the same kernels, so the same plans, with one launch instead of a dozen per step; no effect on the CPU."""
    observation_gain: float = 1.0
    """Weight of each newly located set of object keypoints (the compared latent entries) against the dynamics
    model's prediction of them from the previous state and the executed action (a fixed-gain filter; beyond the
    paper). 1: the observation alone, as the paper; below 1 damps the keypoints' frame-to-frame jitter and
    single-frame jumps."""

    def __post_init__(self) -> None:
        if not 0 < self.observation_gain <= 1:
            raise ValueError(f"observation_gain must be in (0, 1], got {self.observation_gain}; 1 turns the filter off")
        if self.horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {self.horizon}")
        if self.action_limit <= 0:
            raise ValueError(f"action_limit must be positive, got {self.action_limit}")
        planner_name(self.planner)  # a registered planner's config

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values, the planner's with its name under `type` (as a preset names it)."""
        planner = {"type": planner_name(self.planner), **dataclasses.asdict(self.planner)}
        return {**dataclasses.asdict(self), "planner": planner}


def upgrade_mpc_json(values: dict[str, Any]) -> dict[str, Any]:
    """MPC settings stored by keydyn before the planner was one field (`planner` a name beside one settings mapping
    per planner, each with an ignored `horizon` and `seed`) in the current layout of `MPCConfig.to_json`; current
    ones unchanged."""
    if not isinstance(values.get("planner"), str):
        return values
    name = values["planner"]
    names = {entry.name for entry in PLANNERS.values()}
    settings = {key: value for key, value in values.get(name, {}).items() if key not in ("horizon", "seed")}
    kept = {key: value for key, value in values.items() if key not in names and key != "planner"}
    return {"planner": {"type": name, **settings}, **kept}


def model_dynamics(model: DynamicsMLP, precision: Literal["fp32", "bf16"]) -> Dynamics:
    """The model's Markov step as a planner `Dynamics`, its layers run in `precision` (states stay fp32)."""
    device_type = next(model.parameters()).device.type

    def step(state: Tensor, action: Tensor) -> Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return model.step(state, action).float()

    return step


def constant_velocity_grid(headings: int, speeds: tuple[float, ...]) -> np.ndarray:
    """(headings * len(speeds) + 1, 2) pusher velocities in m/s: every heading at every speed, and zero."""
    angles = np.arange(headings) * (2 * math.pi / headings)
    directions = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    grid = (np.asarray(speeds)[:, None, None] * directions[None]).reshape(-1, 2)
    return np.concatenate([grid, np.zeros((1, 2))]).astype(np.float32)


class PlanError(ValueError):
    """No plan can be chosen: the dynamics model's rollouts end in NaN or inf. `episodes`: the episodes (indices of
    `reset_batch`) whose plans failed; each is as it was before the call."""

    def __init__(self, message: str, episodes: list[int]) -> None:
        super().__init__(message)
        self.episodes = episodes


@dataclass
class _Episode:
    """What the controller keeps of one episode: the last n (D,) latents and n - 1 (2,) actions (m/s) of its
    Markov state, the last action (which led to the next latent), the warm start (H, 2) for its next plan, the
    actions (H, 2) and states (H + 1, S) of its last plan, and its planner's random source."""

    latents: list[np.ndarray]
    actions: list[np.ndarray]
    generator: torch.Generator
    executed: np.ndarray | None = None
    warm_start: Tensor | None = None
    planned_actions: Tensor | None = None
    planned_states: Tensor | None = None


class MPCController:
    """Receding-horizon control of one environment, or of B in lockstep, with a learned dynamics model.

    Usage per episode: `reset(first_latent, seed)`, then each step `act(latent, make_cost, steps_left)`, where
    `make_cost(H)` gives the planning cost for a horizon of H steps. B episodes at once: `reset_batch(latents,
    seeds)`, then each step `act_batch(episodes, latents, make_costs, steps_left)` for those still running; their
    plans are made in one planner call per distinct horizon (B x N rollouts), each episode's samples drawn from
    its own seeded generator, so that every episode acts as it would alone.

    cost_part: the entries of a latent that costs compare and the observation filter blends (the run's
        `LatentMethod.cost_part`); default all but the pusher xy. `latent_part` holds it, `state_part` the
        same entries of the most recent latent inside the model's Markov state.
    """

    def __init__(self, model: DynamicsMLP, config: MPCConfig, cost_part: slice | None = None) -> None:
        self.config = config
        device = resolve_device(config.device)
        self.device = device
        self.model = model.to(device).eval().requires_grad_(False)
        self.dynamics = model_dynamics(self.model, config.precision)
        if config.cuda_graphs and device.type == "cuda":
            self.dynamics = GraphedDynamics(self.dynamics, config.horizon)
        limit = torch.full((2,), config.action_limit, device=device)
        planner = PLANNERS[type(config.planner)].planner
        self.planner = planner(self.dynamics, _unset_cost, config.planner, -limit, limit)
        self.grid = torch.as_tensor(constant_velocity_grid(config.grid_headings, config.grid_speeds), device=device)
        self.grid = torch.clamp(self.grid, -limit, limit)
        dim = model.latent_dim
        begin, end, _ = (slice(0, dim - PUSHER_DIM) if cost_part is None else cost_part).indices(dim)
        self.latent_part = slice(begin, end)
        offset = (model.history - 1) * dim  # where the most recent latent starts inside the Markov state
        self.state_part = slice(offset + begin, offset + end)
        self._episodes: list[_Episode] = []

    def horizon(self, steps_left: int | None) -> int:
        """Planning horizon for a step with `steps_left` control steps to go, this one included (None: no episode
        end)."""
        if steps_left is not None and steps_left < 1:
            raise ValueError(
                f"MPCController (keydyn/control/mpc.py): steps_left is {steps_left}; give the control steps left in "
                "the episode counting this one (at least 1), or None when the episode has no end"
            )
        if self.config.shrinking_horizon and steps_left is not None:
            return max(1, min(self.config.horizon, steps_left))
        return self.config.horizon

    def reset(self, latent: np.ndarray, seed: int) -> None:
        """Start an episode at (D,) `latent`: the history is that latent repeated with zero actions."""
        self.reset_batch([latent], [seed])

    def reset_batch(self, latents: Sequence[np.ndarray], seeds: Sequence[int]) -> None:
        """Start B episodes (numbered 0 to B - 1 in `act_batch`), episode b at (D,) `latents[b]` with its planner
        seeded with `seeds[b]`."""
        if len(latents) != len(seeds):
            raise ValueError(f"MPCController.reset_batch: {len(latents)} latents but {len(seeds)} seeds; give one each")
        n = self.model.history
        checked = [self._checked(latent) for latent in latents]  # all, before any episode changes
        self._episodes = []
        for latent, seed in zip(checked, seeds, strict=True):
            generator = torch.Generator(device=self.device)
            generator.manual_seed(seed)
            self._episodes.append(_Episode([latent] * n, [np.zeros(2, dtype=np.float32)] * (n - 1), generator))

    def state(self, episode: int = 0) -> Tensor:
        """(S,) Markov state of an episode's last n latents and the n - 1 actions between them."""
        return self._state(self._episode(episode))

    @torch.no_grad()
    def plan(self, latent: np.ndarray, cost: Cost, horizon: int) -> PlanResult:
        """Record (D,) `latent` as the newest observation (filtered, see MPCConfig.observation_gain) and plan
        `horizon` steps under `cost`."""
        episode = self._episode(0)
        self._record(episode, latent)
        result = self._plan([episode], cost, horizon)
        return PlanResult(result.actions[0], result.cost[0], result.states[0])

    def act(self, latent: np.ndarray, make_cost: Callable[[int], Cost], steps_left: int | None = None) -> np.ndarray:
        """Plan from the newest (D,) latent and return the (2,) action to execute now, m/s.

        Raises:
            ValueError: the latent is not a finite (D,) vector, the cost's goal or reference is not finite
                (`keydyn.control.costs`), or steps_left < 1.
        """
        return self.act_batch([0], [latent], [make_cost], [steps_left])[0]

    @torch.no_grad()
    def act_batch(
        self,
        episodes: Sequence[int],
        latents: Sequence[np.ndarray],
        make_costs: Sequence[Callable[[int], Cost]],
        steps_left: Sequence[int | None],
    ) -> np.ndarray:
        """`act` for several episodes of `reset_batch` at once: (E, 2) actions in m/s, row e for `episodes[e]`
        planned from its newest (D,) `latents[e]` under `make_costs[e]` with `steps_left[e]` steps to go. Episodes
        with the same horizon are planned in one planner call; the others keep their state. A refused latent or
        plan raises with every episode as it was before the call."""
        horizons = [self.horizon(left) for left in steps_left]
        costs = [make_cost(horizon) for make_cost, horizon in zip(make_costs, horizons, strict=True)]
        chosen = [self._episode(index) for index in episodes]
        before = [(dataclasses.replace(episode), episode.generator.get_state()) for episode in chosen]
        try:
            return self._act_recorded(episodes, chosen, latents, costs, horizons)
        except Exception:  # a refused latent or plan: every episode as it was, to act again or end
            for episode, (saved, random_state) in zip(chosen, before, strict=True):
                vars(episode).update(vars(saved))
                episode.generator.set_state(random_state)
            raise

    def _act_recorded(
        self,
        episodes: Sequence[int],
        chosen: list[_Episode],
        latents: Sequence[np.ndarray],
        costs: list[Cost],
        horizons: list[int],
    ) -> np.ndarray:
        """`act_batch` once its episodes, costs and horizons are known: record the latents, plan, keep the plans."""
        for episode, latent in zip(chosen, latents, strict=True):
            self._record(episode, latent)
        actions = np.zeros((len(chosen), 2), dtype=np.float32)
        keys = [(horizon, episode.warm_start is None) for horizon, episode in zip(horizons, chosen, strict=True)]
        for key in dict.fromkeys(keys):  # one call per horizon (and for first plans, which have no warm start)
            rows = [row for row, other in enumerate(keys) if other == key]
            group = [chosen[row] for row in rows]
            try:
                result = self._plan(group, per_environment([costs[row] for row in rows]), key[0])
            except PlanError as error:
                failed = [episodes[rows[k]] for k in error.episodes]
                raise PlanError(f"episodes {failed}: {error}", failed) from None
            for k, (row, episode) in enumerate(zip(rows, group, strict=True)):
                episode.executed = result.actions[k, 0].float().cpu().numpy()
                episode.warm_start = self.planner.shift(result.actions[k])
                episode.planned_actions = result.actions[k]
                episode.planned_states = result.states[k]
                actions[row] = episode.executed
        return actions

    def predicted_latents(self, episode: int = 0) -> np.ndarray:
        """(H + 1, D) latents the model predicts along an episode's last plan (its first row: the latent planned
        from), in the latent's units; what the paper's figure 1 draws."""
        planned = self._episode(episode).planned_states
        if planned is None:
            raise RuntimeError("no plan yet: call act() first")
        states = planned.reshape(-1, planned.shape[-1])
        return self.model.current_latent(states.float()).cpu().numpy()

    def planned_actions(self, episode: int = 0) -> np.ndarray:
        """(H, 2) pusher velocities (m/s) of an episode's last plan; its first row is the action `act` returned."""
        planned = self._episode(episode).planned_actions
        if planned is None:
            raise RuntimeError("no plan yet: call act() first")
        return planned.float().cpu().numpy()

    def goal_cost(self, goal: np.ndarray) -> Cost:
        """The goal-reaching cost toward the (D,) `goal` latent (`keydyn.control.costs.terminal_cost` of its
        compared entries, `latent_part`), for every horizon."""
        goal = np.asarray(goal)
        if goal.shape != (self.model.latent_dim,):
            raise ValueError(
                f"MPCController.goal_cost: the goal latent has shape {goal.shape}, the model's latents "
                f"({self.model.latent_dim},); encode the goal with the run's own latent method"
            )
        part = torch.as_tensor(goal[self.latent_part], device=self.device)
        return terminal_cost(part, self.state_part, self.config.cost_scale)

    def tracking_cost(self, reference: np.ndarray) -> Cost:
        """The tracking cost along (H, D) reference latents for the H predicted steps
        (`keydyn.control.costs.tracking_cost` of their compared entries, `latent_part`)."""
        reference = np.asarray(reference)
        if reference.ndim != 2 or reference.shape[1] != self.model.latent_dim:
            raise ValueError(
                f"MPCController.tracking_cost: the reference latents have shape {reference.shape}, not (H, "
                f"{self.model.latent_dim}); encode the reference with the run's own latent method"
            )
        part = torch.as_tensor(reference[:, self.latent_part], device=self.device)
        return tracking_cost(part, self.state_part, self.config.cost_scale)

    def _episode(self, index: int) -> _Episode:
        if not 0 <= index < len(self._episodes):
            raise RuntimeError(
                f"MPCController (keydyn/control/mpc.py): no episode {index} of {len(self._episodes)}; call reset() or "
                "reset_batch() with each episode's first latent before planning"
            )
        return self._episodes[index]

    def _state(self, episode: _Episode) -> Tensor:
        latents = torch.as_tensor(np.stack(episode.latents), device=self.device)[None]
        past = np.stack(episode.actions) if episode.actions else np.zeros((0, 2), np.float32)
        actions = torch.as_tensor(past, device=self.device)[None]
        return self.model.pack_state(latents, actions)[0]

    def _record(self, episode: _Episode, latent: np.ndarray) -> None:
        """Append (D,) `latent` (filtered) and the action executed since the last one to the episode's history."""
        latent = self._checked(latent)
        if episode.executed is not None and self.config.observation_gain < 1:
            latent = self._filtered(episode, latent)
        episode.latents = [*episode.latents[1:], latent]
        if episode.executed is not None and self.model.history > 1:
            episode.actions = [*episode.actions[1:], episode.executed]

    def _plan(self, episodes: list[_Episode], cost: Cost, horizon: int) -> PlanResult:
        """One planner call for B episodes (their states (B, S), warm starts, generators), all making their first
        plan or none, under a cost of their B x N rows; a batched PlanResult."""
        state = torch.stack([self._state(episode) for episode in episodes])
        self.planner.cost = cost
        self.planner.generator = [episode.generator for episode in episodes]
        starts = [episode.warm_start for episode in episodes]
        if starts[0] is None:  # a first plan (act_batch plans first plans and later ones apart)
            warm_start = self._best_constant_velocity(state, cost, horizon) if self.config.grid_seed else None
        else:
            warm_start = torch.stack([self._padded(start, horizon) for start in starts])
        result = self.planner.plan(state, warm_start, horizon)
        lost = torch.nonzero(~torch.isfinite(result.cost)).flatten().tolist()
        if lost:  # argmin takes NaN for the lowest cost: an action of a NaN rollout would be executed
            raise PlanError(
                "MPCController (keydyn/control/mpc.py): the dynamics model's rollouts end in NaN or inf, so no plan "
                "can be chosen; its weights or normaliser hold NaN, or the state lies far outside its training data "
                "(retrain the run, or plan with --mpc.precision fp32)",
                lost,
            )
        return result

    def _padded(self, warm_start: Tensor, horizon: int) -> Tensor:
        """(H', 2) warm start padded with zero actions to at least `horizon` steps."""
        if warm_start.shape[0] >= horizon:
            return warm_start
        return torch.cat([warm_start, torch.zeros(horizon - warm_start.shape[0], 2, device=self.device)])

    def _checked(self, latent: np.ndarray) -> np.ndarray:
        """(D,) `latent` as float32, or a ValueError naming its non-finite entries or its wrong shape."""
        latent = np.asarray(latent, dtype=np.float32)
        dim = self.model.latent_dim
        problem = f"has shape {latent.shape}, not ({dim},)" if latent.shape != (dim,) else ""
        bad = "" if problem else nonfinite_entries(latent)
        if problem or bad:
            raise ValueError(
                f"MPCController (keydyn/control/mpc.py): the latent {problem or f'entries {bad} are not finite'}; "
                "plan only from latents of valid observations (keydyn.sim.observations.check_observation)"
            )
        return latent

    def _filtered(self, episode: _Episode, observed: np.ndarray) -> np.ndarray:
        """(D,) `observed` with its compared entries (object keypoints, metres) moved toward the model's
        prediction of them, made from the episode's state before this observation and the action executed since;
        the other entries (the pusher's position) are kept."""
        executed = torch.as_tensor(episode.executed, device=self.device)
        predicted = self.dynamics(self._state(episode)[None], executed[None])[0, self.state_part].cpu().numpy()
        gain = self.config.observation_gain
        filtered = observed.copy()
        filtered[self.latent_part] = gain * observed[self.latent_part] + (1 - gain) * predicted
        return filtered

    def _best_constant_velocity(self, state: Tensor, cost: Cost, horizon: int) -> Tensor:
        """(B, H, 2) per episode of (B, S) `state` the lowest-cost sequence holding one grid velocity for all H
        steps."""
        B = state.shape[0]
        candidates = self.grid[None, :, None, :].expand(B, len(self.grid), horizon, 2)
        _, costs = rollout(self.dynamics, cost, state, candidates)
        return candidates[torch.arange(B, device=self.device), costs.argmin(dim=1)]


def _unset_cost(states: Tensor, actions: Tensor) -> Tensor:
    raise RuntimeError("MPCController sets the planner's cost on every call")

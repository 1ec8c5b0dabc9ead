"""Closed-loop episodes: goal reaching from a start/goal pair, and tracking a demonstrated latent trajectory.

Both run the same loop, observe -> encode -> plan -> act, on a `PushingEnvironment`, and score the final object pose
against the target's true pose (ground truth is read for scoring only).

An observation the encoder refuses (`keydyn.sim.observations.ObservationError`: a missing entry, a wrong dtype or
shape, no valid depth, keypoints without depth) or whose latent is not finite is never planned from: the loop
commands zero velocity, records why in the episode's `fault`, and ends the episode, which counts as failed. So
does one that no plan can be made for (`keydyn.control.mpc.PlanError`: the model's rollouts end in NaN or inf).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keydyn.control.costs import nonfinite_entries
from keydyn.control.mpc import MPCController, PlanError
from keydyn.evaluation.goals import GoalPair
from keydyn.evaluation.metrics import pose_errors
from keydyn.evaluation.scene import SceneFrame, capture_frame
from keydyn.latents.base import BatchLatentEncoder, LatentEncoder
from keydyn.planning.base import Cost
from keydyn.sim.environment import ACTION_DIM, PushingEnvironment
from keydyn.sim.observations import ObservationError

VideoPoints = Callable[[np.ndarray], np.ndarray | None]
"""(D,) latent -> (P, 3) world points (metres) to draw, or None: `LatentMethod.video_points`."""

FrameSink = Callable[[SceneFrame], None]
"""Called with each recorded frame as the loop runs (a live view: `keydyn.evaluation.viewer`)."""


@dataclass
class EpisodeResult:
    """Outcome of one closed-loop episode. Distances in metres, angles in radians, times in seconds.

    latents: (T + 1, D) observed latents; actions: (T, 2) executed pusher velocities, m/s.
    fault: why the episode was stopped ("" if it was not): the refused observation's error. The goal's, before any
        step; otherwise observation T - 1's, after which the last action is the zero-velocity stop and `latents`
        holds the T - 1 latents before it.
    frames: the recorded scene (`SceneFrame`: every camera's image with the target's and the current latent's
        points and those predicted along each plan), when recorded: one per step, as planned from, and the final
        scene; `keydyn.evaluation.scene.draw_frame` makes video frames of them.
    """

    index: int
    steps: int
    initial_position_error: float
    initial_angle_error: float
    final_position_error: float
    final_angle_error: float
    termination: str
    plan_time: float
    latents: np.ndarray
    actions: np.ndarray
    fault: str = ""
    frames: list[SceneFrame] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        """JSON-serialisable summary (cm and degrees, as the paper reports)."""
        return {
            "index": self.index,
            "steps": self.steps,
            "initial_position_error_cm": 100 * self.initial_position_error,
            "initial_angle_error_deg": float(np.degrees(self.initial_angle_error)),
            "final_position_error_cm": 100 * self.final_position_error,
            "final_angle_error_deg": float(np.degrees(self.final_angle_error)),
            "termination": self.termination,
            "fault": self.fault,
            "mean_plan_time_s": self.plan_time / max(self.steps, 1),
        }


@dataclass
class ClosedLoopRun:
    """What `run_closed_loop` observed: latents (T + 1, D), actions (T, 2) in m/s, the env info at the start and
    at the end, the termination reason ("" if none), planning seconds in total, recorded frames, and why the
    episode was stopped ("" if it was not; see `EpisodeResult.fault`)."""

    latents: np.ndarray
    actions: np.ndarray
    first_info: dict
    last_info: dict
    termination: str
    plan_time: float
    frames: list[SceneFrame]
    fault: str = ""

    def result(self, index: int, target_position: np.ndarray, target_quaternion: np.ndarray) -> EpisodeResult:
        """Score the run against a target pose: initial errors from the start, final errors from the end."""
        first, last = self.first_info, self.last_info
        centre = first.get("object_centre_offset")  # optional for an environment: its object frame's origin
        initial = pose_errors(
            first["object_position"], first["object_quaternion"], target_position, target_quaternion, centre
        )
        final = pose_errors(
            last["object_position"], last["object_quaternion"], target_position, target_quaternion, centre
        )
        return EpisodeResult(
            index=index,
            steps=len(self.actions),
            initial_position_error=float(initial[0]),
            initial_angle_error=float(initial[1]),
            final_position_error=float(final[0]),
            final_angle_error=float(final[1]),
            termination=self.termination,
            plan_time=self.plan_time,
            latents=self.latents,
            actions=self.actions,
            fault=self.fault,
            frames=self.frames,
        )


class ClosedLoop:
    """One environment's closed loop, which `run_closed_loops` advances one control step at a time beside others.

    reset_options: the environment's reset options; make_cost(t, H): the cost of the plan made at step t with
    horizon H; steps: MPC steps at most; seed: the planner's seed; target(t): the (D,) target latent of step t,
    drawn with the current one by `video_points`, frames recorded only when both are given; shrinking: plan to the
    end of the `steps` (the controller caps the horizon) rather than a fixed window; on_frame: called with each
    recorded frame as it is made. Making one resets the environment and observes its first latent (or why the
    observation is refused: `fault`).
    """

    def __init__(
        self,
        env: PushingEnvironment,
        encoder: LatentEncoder,
        reset_options: dict,
        make_cost: Callable[[int, int], Cost],
        steps: int,
        seed: int,
        target: Callable[[int], np.ndarray] | None = None,
        video_points: VideoPoints | None = None,
        shrinking: bool = True,
        on_frame: FrameSink | None = None,
    ) -> None:
        self.env, self.encoder, self.make_cost, self.steps, self.seed = env, encoder, make_cost, steps, seed
        self.target, self.video_points, self.shrinking, self.on_frame = target, video_points, shrinking, on_frame
        self.record = target is not None and video_points is not None
        self.observation, self.info = env.reset(options=reset_options)
        self.first_info = self.info
        self.latent, self.fault = observe(encoder, self.observation, info=self.info, reset=True)
        self.latents = [] if self.fault else [self.latent]
        self.actions: list[np.ndarray] = []
        self.frames: list[np.ndarray] = []
        self.plan_time, self.termination, self.ended = 0.0, "", bool(self.fault)
        self._terminated = False  # whether the last step of `advance` ended the episode

    @property
    def running(self) -> bool:
        """Whether the loop takes another control step."""
        return not self.ended and len(self.actions) < self.steps

    def cost(self, horizon: int) -> Cost:
        """The cost of this step's plan with horizon H."""
        return self.make_cost(len(self.actions), horizon)

    def steps_left(self) -> int | None:
        """The steps left to plan to (this one included), None for a fixed window."""
        return self.steps - len(self.actions) if self.shrinking else None

    def advance(self, action: np.ndarray, predicted: np.ndarray | None) -> None:
        """Execute the planned (2,) `action` (m/s); `observed` then takes the new observation's latent.
        `predicted`: the (H + 1, D) latents predicted along the plan, drawn when frames are recorded."""
        t = len(self.actions)
        if self.record:  # the scene as planned from, with the plan's predicted points
            points = [self.video_points(z) for z in predicted]
            paths = None if points[0] is None else np.stack(points)
            self._record(self.video_points(self.target(t)), self.video_points(self.latent), paths, action)
        self.observation, _, self._terminated, _, self.info = self.env.step(action)
        self.actions.append(action)

    def observed(self, latent: np.ndarray | None, fault: str) -> None:
        """Take the latent of the observation `advance` made (or why it is refused: the loop stops)."""
        self.latent, self.fault = latent, fault
        if self._terminated:  # also when its observation is refused: the episode ended there, for that reason
            self.termination, self.ended = self.info.get("termination", "terminated"), True
        if self.fault:
            self.ended = True
            return
        self.latents.append(self.latent)

    def _record(self, target, current, predicted=None, action=None) -> None:
        """Capture the scene with these points (see `SceneFrame`) and pass it to `on_frame`."""
        pusher = self.observation["pusher_position"]
        self.frames.append(capture_frame(self.env, pusher, target, current, predicted, action))
        if self.on_frame is not None:
            self.on_frame(self.frames[-1])

    def finish(self, latent_dim: int) -> ClosedLoopRun:
        """End the loop (the zero-velocity stop after a refused observation) and return what it observed."""
        if self.fault and not self.termination:  # the safe stop: the pusher is told to stand still; the episode ends
            stop = np.zeros(ACTION_DIM, dtype=np.float32)
            self.observation, _, terminated, _, self.info = self.env.step(stop)
            self.actions.append(stop)
            self.termination = self.info.get("termination", "terminated") if terminated else ""
        if self.record:
            current = None if self.fault else self.video_points(self.latent)
            self._record(self.video_points(self.target(len(self.actions))), current)
        latents = np.stack(self.latents) if self.latents else np.zeros((0, latent_dim), np.float32)
        actions = _stack_actions(self.actions)
        return ClosedLoopRun(
            latents, actions, self.first_info, self.info, self.termination, self.plan_time, self.frames, self.fault
        )


def run_closed_loops(controller: MPCController, loops: list[ClosedLoop]) -> list[ClosedLoopRun]:
    """Run B closed loops in lockstep, all of them planned at each step by one `controller.act_batch` call (one
    planner call per distinct horizon); a loop that terminates or is stopped by a refused observation drops out
    while the others go on. Each loop's run equals the one it has when run alone, to float tolerance; the
    planning time of a step is shared equally among the loops planned in it."""
    started = [loop for loop in loops if not loop.fault]
    controller.reset_batch([loop.latent for loop in started], [loop.seed for loop in started])
    while running := [(episode, loop) for episode, loop in enumerate(started) if loop.running]:
        begin = time.perf_counter()
        try:
            actions = controller.act_batch(
                [episode for episode, _ in running],
                [loop.latent for _, loop in running],
                [loop.cost for _, loop in running],
                [loop.steps_left() for _, loop in running],
            )
        except PlanError as error:  # those episodes stop as on a refused observation; the others plan again
            for episode, loop in running:
                if episode in error.episodes:
                    loop.fault, loop.ended = f"PlanError: {error}", True
            continue
        share = (time.perf_counter() - begin) / len(running)
        for (episode, loop), action in zip(running, actions, strict=True):
            loop.plan_time += share
            loop.advance(action, controller.predicted_latents(episode) if loop.record else None)
        observe_loops([loop for _, loop in running])
    return [loop.finish(controller.model.latent_dim) for loop in loops]


def observe_loops(loops: Sequence[ClosedLoop]) -> None:
    """Give each loop the latent of its latest observation: loops that share a `BatchLatentEncoder` are encoded in
    one `encode_batch` call (one network call per camera), the others one by one (`observe`)."""
    shared: dict[int, list[ClosedLoop]] = {}
    for loop in loops:
        if isinstance(loop.encoder, BatchLatentEncoder):
            shared.setdefault(id(loop.encoder), []).append(loop)
        else:
            loop.observed(*observe(loop.encoder, loop.observation, loop.info))
    for group in shared.values():
        encoded = group[0].encoder.encode_batch([loop.observation for loop in group], [loop.info for loop in group])
        for loop, latent in zip(group, encoded, strict=True):
            loop.observed(*checked_latent(latent))


def run_closed_loop(
    env: PushingEnvironment,
    encoder: LatentEncoder,
    controller: MPCController,
    reset_options: dict,
    make_cost: Callable[[int, int], Cost],
    steps: int,
    seed: int,
    target: Callable[[int], np.ndarray] | None = None,
    video_points: VideoPoints | None = None,
    shrinking: bool = True,
    on_frame: FrameSink | None = None,
) -> ClosedLoopRun:
    """Reset with `reset_options` and run `steps` MPC steps (fewer if the episode terminates, or is stopped by a
    refused observation: see the module docstring); the arguments as `ClosedLoop`'s."""
    loop = ClosedLoop(env, encoder, reset_options, make_cost, steps, seed, target, video_points, shrinking, on_frame)
    return run_closed_loops(controller, [loop])[0]


def _stack_actions(actions: list[np.ndarray]) -> np.ndarray:
    return np.stack(actions) if actions else np.zeros((0, ACTION_DIM), np.float32)


def observe(
    encoder: LatentEncoder, observation: Mapping[str, Any], info: Mapping[str, Any], reset: bool = False
) -> tuple[np.ndarray | None, str]:
    """The (D,) latent of an observation and "", or None and why the observation is refused (its
    ObservationError, or the latent's non-finite entries); `reset` first resets the encoder with it."""
    try:
        if reset:
            encoder.reset(observation, info)
        latent = encoder.encode(observation, info)
    except ObservationError as error:
        return None, str(error)
    return checked_latent(latent)


def checked_latent(latent: np.ndarray | ObservationError) -> tuple[np.ndarray | None, str]:
    """(latent, "") for a finite (D,) latent; (None, why) for a refused observation or non-finite entries."""
    if isinstance(latent, ObservationError):
        return None, str(latent)
    bad = nonfinite_entries(latent)
    if bad:
        return None, f"the encoder gave a latent whose entries {bad} are not finite; check the observation it read"
    return latent, ""


def reach_goal(
    env: PushingEnvironment,
    encoder: LatentEncoder,
    controller: MPCController,
    pair: GoalPair,
    seed: int,
    steps: int | None = None,
    video_points: VideoPoints | None = None,
) -> EpisodeResult:
    """Drive the object from the pair's start to its goal for `steps` MPC steps (default: the pair's push steps).

    The goal is given as an observation of the goal scene; the cost is the L2 distance of the predicted final
    latent's compared entries (`controller.latent_part`; keypoint latents: the object keypoints) to the goal's.
    Frames are recorded when `video_points` (the run's `LatentMethod.video_points`) is given.
    """
    return reach_goals([env], [encoder], controller, [pair], [seed], steps, [video_points])[0]


def reach_goals(
    envs: Sequence[PushingEnvironment],
    encoders: Sequence[LatentEncoder],
    controller: MPCController,
    pairs: Sequence[GoalPair],
    seeds: Sequence[int],
    steps: int | None = None,
    video_points: Sequence[VideoPoints | None] | None = None,
    on_frames: Sequence[FrameSink | None] | None = None,
) -> list[EpisodeResult]:
    """`reach_goal` for B pairs in lockstep (`run_closed_loops`): pair b in environment b with encoder b and
    planner seed b, frames recorded when `video_points[b]` is given (and passed to `on_frames[b]` as they are
    made); each result equals `reach_goal`'s for that pair alone, to float tolerance."""
    video_points = [None] * len(pairs) if video_points is None else video_points
    on_frames = [None] * len(pairs) if on_frames is None else on_frames
    results: dict[int, EpisodeResult] = {}
    loops: dict[int, ClosedLoop] = {}
    for b, (env, encoder, pair, seed, points, on_frame) in enumerate(
        zip(envs, encoders, pairs, seeds, video_points, on_frames, strict=True)
    ):
        observation, info = env.reset(options=pair.reset_options(pair.goal_state))
        goal, fault = observe(encoder, observation, info, reset=True)
        if fault:  # no goal to plan towards: the episode stops before its first step
            observation, info = env.reset(options=pair.reset_options(pair.start_state))
            frames = [] if points is None else [capture_frame(env, observation["pusher_position"], None, None)]
            if frames and on_frame is not None:
                on_frame(frames[0])
            latents, actions = np.zeros((0, controller.model.latent_dim), np.float32), _stack_actions([])
            run = ClosedLoopRun(latents, actions, info, info, "", 0.0, frames, f"the goal: {fault}")
            results[b] = run.result(pair.index, pair.goal_position, pair.goal_quaternion)
            continue
        cost = controller.goal_cost(goal)
        loops[b] = ClosedLoop(
            env,
            encoder,
            pair.reset_options(pair.start_state),
            lambda t, horizon, cost=cost: cost,
            pair.push_steps if steps is None else steps,
            seed,
            lambda t, goal=goal: goal,
            points,
            on_frame=on_frame,
        )
    for b, run in zip(loops, run_closed_loops(controller, list(loops.values())), strict=True):
        results[b] = run.result(pairs[b].index, pairs[b].goal_position, pairs[b].goal_quaternion)
    return [results[b] for b in range(len(pairs))]

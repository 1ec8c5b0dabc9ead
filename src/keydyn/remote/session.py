"""The control side of `keydyn serve`: a trained run, loaded once, answering a robot's info, reset, act, plan and
save requests (`keydyn.remote.server` carries them over ZMQ; this module knows nothing of the transport).

An episode is what `keydyn evaluate` and `keydyn track` run, with the robot in place of the simulator: `reset`
encodes the goal observation (or the demonstration's reference observations) into the target latent(s); each
`act` encodes the robot's observation, plans with the run's MPC controller and returns the first action. Given
the same observations and seed, the actions are those of `keydyn.evaluation.episodes.reach_goal` (goal) and
`keydyn.evaluation.tracking.track` (reference), bit for bit (evaluate with `--batch 1`: a batch locates images
together, equal to float tolerance).

Images: the server reads each camera at the run's resolution (its task.json; the shipped models: 320x240). A
camera at a whole multiple k of it (640x480 for 320x240, as RealSense and the paper give) is averaged down over
k x k pixel blocks, depth over its valid pixels, with its intrinsics scaled to match: the same pinhole camera at
the run's resolution. Other sizes are refused (the descriptor network is fully convolutional, but its descriptors
were learned at one scale of the object in the image). Depth in uint16 millimetres (RealSense's z16) is converted
to float32 metres, 0 (no depth) staying a hole.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from keydyn.control.mpc import MPCConfig
from keydyn.control.run import load_run, run_controller
from keydyn.evaluation.episodes import observe
from keydyn.evaluation.tracking import reference_window
from keydyn.files import write_json_atomic
from keydyn.planning.base import Cost
from keydyn.sim.config import check_seed
from keydyn.sim.observations import FORMAT, ObservationError

SESSION_FORMAT = 1
"""Version of the session file `save` writes."""


@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)  # the planner's options (MPPI's by default) show in --help
@dataclass(frozen=True)
class ServeConfig:
    """Serve a trained run's controller to a robot over the network (keydyn.remote.client on the robot)."""

    run: Path
    """Run directory written by `keydyn train-dynamics` (or a shipped one: keydyn/models/top_down/sds)."""
    address: str = "tcp://127.0.0.1:5555"
    """ZMQ address to listen at: tcp://HOST:PORT (tcp://0.0.0.0:5555: every interface; PORT *: any free one),
    or ipc:///path/to/socket."""
    checkpoint: Literal["best", "last"] = "best"
    mpc: MPCConfig = field(default_factory=MPCConfig)
    save_dir: Path = Path("sessions")
    """Directory that `save` requests write into: a request names a file in it, never a path elsewhere."""
    threads: int = 1
    """Torch threads for encoding and planning. With 1, as every `keydyn evaluate` worker, the served actions equal
    evaluate's and track's bit for bit."""
    max_frame_age_s: float | None = None
    """Refuse an act or plan whose frame_age_s (seconds from image capture to request, sent by the robot) is older
    than this: the robot gets a clear error and stops. Default: the run's control period (a frame older than that
    shows a scene the last action has already changed); inf: no limit. Requests without frame_age_s are not
    checked (`info` replies the limit)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "save_dir", Path(self.save_dir))
        if self.threads < 1:
            raise ValueError(f"--threads must be at least 1, got {self.threads}")
        if self.max_frame_age_s is not None and not self.max_frame_age_s > 0:
            raise ValueError(f"--max-frame-age-s must be positive (seconds; inf: no limit), got {self.max_frame_age_s}")

    def to_json(self) -> dict[str, Any]:
        values = {**dataclasses.asdict(self), "run": str(self.run), "save_dir": str(self.save_dir)}
        if values["max_frame_age_s"] is not None and math.isinf(values["max_frame_age_s"]):
            values["max_frame_age_s"] = "inf"  # strict JSON has no infinity
        return {**values, "mpc": self.mpc.to_json()}


def _block_sums(image: np.ndarray, k: int, dtype: type) -> np.ndarray:
    """(k H', k W', ...) image -> (H', W', ...) sums of its k x k pixel blocks, in `dtype`."""
    total = np.zeros((image.shape[0] // k, image.shape[1] // k, *image.shape[2:]), dtype)
    for row in range(k):
        for column in range(k):
            total += image[row::k, column::k]
    return total


def _downscaled_depth(depth: np.ndarray, k: int) -> np.ndarray:
    """(H, W) depth (metres; holes <= 0 or not finite) -> (H / k, W / k) means of each k x k block's valid pixels,
    0 where a block has none."""
    valid = np.isfinite(depth) & (depth > 0)
    count = _block_sums(valid, k, np.int32)
    total = _block_sums(np.where(valid, depth, 0), k, np.float64)
    return np.where(count > 0, total / np.maximum(count, 1), 0).astype(np.float32)


def _downscaled_intrinsics(K: np.ndarray, k: int) -> np.ndarray:
    """Pinhole K (pixel centres at whole coordinates) of an image averaged over k x k blocks."""
    scaled = np.asarray(K, dtype=np.float64) / k
    scaled[:2, 2] -= (k - 1) / (2 * k)
    scaled[2] = K[2]
    return scaled  # float64 whatever K's dtype: whole-number K would lose the half pixels


def prepared_observation(
    observation: Mapping[str, Any], cameras: Sequence[str], size: tuple[int, int]
) -> dict[str, Any]:
    """`observation` with the depth of `cameras` in float metres (uint16 millimetres converted) and their images at
    `size` = (width, height) pixels: images k times as large are averaged over k x k blocks and their intrinsics
    scaled (see the module docstring); malformed entries are left for `check_observation` to name.

    Raises:
        ObservationError: a camera's RGB image is neither `size` nor a whole multiple of it.
    """
    prepared = dict(observation)
    width, height = size
    for camera in cameras:
        rgb, depth, intrinsics = (prepared.get(f"{camera}/{entry}") for entry in ("rgb", "depth", "intrinsics"))
        if isinstance(depth, np.ndarray) and depth.dtype == np.uint16:
            depth = prepared[f"{camera}/depth"] = depth.astype(np.float32) / 1000
        if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3):
            continue
        k = rgb.shape[0] // height
        if rgb.shape[:2] == (height, width):
            continue
        if k < 2 or rgb.shape[:2] != (k * height, k * width):
            raise ObservationError(
                f"observation {camera}/rgb is {rgb.shape[1]}x{rgb.shape[0]} pixels; this run reads {width}x{height} "
                f"images or a whole multiple of them ({2 * width}x{2 * height}, ...), which the server averages "
                f"down: set the camera to one of these ({FORMAT})"
            )
        sums = _block_sums(rgb, k, np.uint16 if k * k * 255 < 2**16 else np.uint32)
        prepared[f"{camera}/rgb"] = ((sums + k * k // 2) // (k * k)).astype(np.uint8)
        if isinstance(depth, np.ndarray) and depth.shape == rgb.shape[:2]:
            prepared[f"{camera}/depth"] = _downscaled_depth(depth, k)
        if isinstance(intrinsics, np.ndarray) and intrinsics.shape == (3, 3):
            prepared[f"{camera}/intrinsics"] = _downscaled_intrinsics(intrinsics, k)
    return prepared


@dataclass
class Episode:
    """One episode of a session: its target (`goal` (D,) latent, or `reference` (T + 1, D) latents), the cost of
    the plan made at step t with horizon H (`make_cost(t, H)`), its length in control steps (None: no end), whether
    the horizon shrinks to the steps left, the planner's seed, and what happened: (T', D) latents observed,
    (T', 2) actions in m/s, and seconds spent encoding and planning at each step."""

    kind: Literal["goal", "reference"]
    target: np.ndarray
    make_cost: Callable[[int, int], Cost]
    steps: int | None
    shrinking: bool
    seed: int
    latents: list[np.ndarray] = field(default_factory=list)
    actions: list[np.ndarray] = field(default_factory=list)
    encode_times: list[float] = field(default_factory=list)
    plan_times: list[float] = field(default_factory=list)

    def steps_left(self) -> int | None:
        """The steps left to plan to, this one included (None: a fixed horizon)."""
        return self.steps - len(self.actions) if self.shrinking and self.steps is not None else None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            self.kind: self.target.tolist(),
            "steps": self.steps,
            "seed": self.seed,
            "latents": [latent.tolist() for latent in self.latents],
            "actions": [action.tolist() for action in self.actions],
            "encode_times_s": self.encode_times,
            "plan_times_s": self.plan_times,
        }


class ControlSession:
    """A trained run's encoder and MPC controller serving one robot, one episode at a time, with the log of every
    episode since it started. Each method takes a request's fields and returns the reply's (numpy arrays and JSON
    values); a refused request raises ValueError (ObservationError for an observation) naming the problem and the
    fix, and leaves the episode as it was, except a refused reset, which ends it."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.run = load_run(config.run, which=config.checkpoint)
        self.controller = run_controller(self.run, config.mpc)
        task = self.run.task
        self.cameras = [camera.name for camera in task.cameras] if self.run.encoder.needs_images else []
        self.episodes: list[Episode] = []
        self.episode: Episode | None = None
        limit = config.max_frame_age_s
        self.max_frame_age = task.control_dt if limit is None else limit
        """Seconds: the oldest frame an act or plan may observe."""

    def info(self) -> dict[str, Any]:
        """The run's task, the cameras an observation carries and their resolution, the latent, the control period
        (seconds) and the MPC settings."""
        task = self.run.task
        return {
            "run": str(self.config.run),
            "task": task.name,
            "cameras": self.cameras,
            "width": task.width,
            "height": task.height,
            "control_dt": task.control_dt,
            "max_frame_age_s": self.max_frame_age,
            "latent": self.run.latent,
            "latent_dim": self.run.model.latent_dim,
            "mpc": self.config.mpc.to_json(),
        }

    def _observe(self, observation: Mapping[str, Any], reset: bool, what: str) -> np.ndarray:
        """The (D,) latent of a request's observation (its `info` map to the encoder), or ObservationError naming
        `what` it was."""
        entries = {name: value for name, value in observation.items() if name != "info"}
        info = observation.get("info", {})
        if not isinstance(info, dict):
            raise ObservationError(f"{what}: its info is a {type(info).__name__}; send a map of ground truth")
        task = self.run.task
        latent, fault = observe(
            self.run.encoder, prepared_observation(entries, self.cameras, (task.width, task.height)), info, reset
        )
        if fault:
            raise ObservationError(f"{what}: {fault}")
        return latent

    def reset(
        self,
        goal: Mapping[str, Any] | None = None,
        reference: Sequence[Mapping[str, Any]] | None = None,
        steps: int | None = None,
        seed: int = 0,
    ) -> dict[str, Any]:
        """Start an episode toward a goal observation, or along the T + 1 reference observations of a demonstration
        (`steps` defaults to T, the horizon fixed, as `keydyn track`); with a goal, `steps` given makes the
        horizon shrink to the steps left (as `keydyn evaluate`). The episode's first `act` observes its start.
        Replies the target latent(s)."""
        self.episode = None
        if (goal is None) == (reference is None):
            raise ValueError("reset needs exactly one of goal (an observation) and reference (a list of observations)")
        check_seed(seed, "reset's seed")
        if steps is not None and steps < 1:
            raise ValueError(f"reset's steps is {steps}; give the episode's control steps (at least 1), or none")
        if goal is not None:
            target = self._observe(goal, reset=True, what="the goal")
            cost = self.controller.goal_cost(target)
            episode = Episode("goal", target, lambda t, horizon: cost, steps, True, seed)
        else:
            if len(reference) < 2 or not all(isinstance(item, dict) for item in reference):
                raise ValueError("reset's reference is not a list of at least 2 observations (maps); send T + 1 >= 2")
            observed = [self._observe(item, t == 0, f"reference observation {t}") for t, item in enumerate(reference)]
            target = np.stack(observed)

            def make_cost(t: int, horizon: int, reference: np.ndarray = target) -> Cost:
                return self.controller.tracking_cost(reference_window(reference, t, horizon))

            episode = Episode("reference", target, make_cost, len(target) - 1 if steps is None else steps, False, seed)
        self.episode = episode
        self.episodes.append(episode)
        return {"target": target}

    def _check_frame_age(self, frame_age_s: float | None) -> None:
        """Refuse a frame older than the limit (ObservationError), or an age that is not a duration."""
        if frame_age_s is None:
            return
        frame_age_s = float(frame_age_s)  # msgpack may carry an int
        if not math.isfinite(frame_age_s) or frame_age_s < 0:
            raise ValueError(f"frame_age_s is {frame_age_s}; send the seconds since the images were captured (>= 0)")
        if frame_age_s > self.max_frame_age:
            raise ObservationError(
                f"the observation's frame is {1000 * frame_age_s:.0f} ms old, over the server's limit of "
                f"{1000 * self.max_frame_age:.0f} ms: stop the robot and send a fresh frame (or serve with a larger "
                "--max-frame-age-s if the latency is known and the dynamics allow it)"
            )

    def _step(self, observation: Mapping[str, Any], step: int, frame_age_s: float | None) -> np.ndarray:
        """Observe, plan and log one control step of the episode, the robot having received `step` of its actions
        so far; the (2,) action, m/s."""
        episode = self.episode
        if episode is None:
            raise ValueError("no episode: send reset with a goal observation (or reference observations) first")
        if step != len(episode.actions):
            raise ValueError(
                f"the request is for step {step} of the episode, the server has planned {len(episode.actions)} "
                "steps of it: a reply was lost (a timeout) or another client acts in this episode; stop the robot "
                "and send reset"
            )
        self._check_frame_age(frame_age_s)
        if episode.steps is not None and len(episode.actions) >= episode.steps:
            raise ValueError(f"the episode's {episode.steps} steps are done; send reset to start another")
        first = not episode.actions
        begin = time.perf_counter()
        latent = self._observe(observation, reset=first, what="the observation")
        encoded = time.perf_counter()
        if first:
            self.controller.reset(latent, episode.seed)
        t = len(episode.actions)
        action = self.controller.act(latent, lambda horizon: episode.make_cost(t, horizon), episode.steps_left())
        episode.encode_times.append(encoded - begin)
        episode.plan_times.append(time.perf_counter() - encoded)
        episode.latents.append(latent)
        episode.actions.append(action)
        return action

    def act(self, observation: Mapping[str, Any], step: int, frame_age_s: float | None = None) -> dict[str, Any]:
        """Plan step `step` of the episode (the actions the robot has received so far) from `observation` (its
        images captured `frame_age_s` seconds before the request, if given): the (2,) world-xy pusher velocity
        (m/s) to execute now, the (D,) latent observed, and the seconds spent encoding the observation and
        planning (the rest of a robot's round trip is transport and (de)serialisation)."""
        action = self._step(observation, step, frame_age_s)
        episode = self.episode
        return {
            "action": action,
            "latent": episode.latents[-1],
            "encode_time_s": episode.encode_times[-1],
            "plan_time_s": episode.plan_times[-1],
        }

    def plan(self, observation: Mapping[str, Any], step: int, frame_age_s: float | None = None) -> dict[str, Any]:
        """`act`, with the whole plan: (H, 2) actions, (H + 1, D) predicted latents and, for keypoint latents,
        (H + 1, P, 3) world keypoints along it."""
        reply = self.act(observation, step, frame_age_s)
        latents = self.controller.predicted_latents()
        reply.update(actions=self.controller.planned_actions(), latents=latents)
        points = [self.run.method.video_points(latent) for latent in latents]
        if points[0] is not None:
            reply["keypoints"] = np.stack(points)
        return reply

    def save(self, name: str) -> dict[str, Any]:
        """Write every episode of the session to the JSON file `name` in the server's `save_dir` (atomically), and
        return its path there. A name with a directory part is refused: a peer chooses no path on the server."""
        if Path(name).name != name or name in ("", ".", ".."):
            raise ValueError(
                f"save takes a file name, written into the server's --save-dir ({self.config.save_dir}); got {name!r}"
            )
        target = (self.config.save_dir / name).absolute()
        if target.is_dir():
            raise ValueError(f"save's file {target} is a directory; give another file name, e.g. session.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "format": SESSION_FORMAT,
            "serve": self.config.to_json(),
            "task": self.run.task.name,
            "latent": self.run.latent,
            "episodes": [episode.to_json() for episode in self.episodes],
        }
        write_json_atomic(target, document)
        return {"path": str(target)}

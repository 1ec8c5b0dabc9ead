"""`keydyn robot`: a simulated robot that `keydyn serve` controls through the client, exactly as a real one.

At every control tick the robot sends what a robot's sensors give (`RobotSensors`: per camera RGB, depth, K and
T_world_camera, and the pusher position; the true object pose only to a run that reads ground truth, GT 3D, whose
server lists no cameras) and applies the velocity the server returns; on a refused observation, a timeout, or a
reply that is not a finite velocity within its speed limit it commands zero velocity and ends the episode, as a
robot must.

On the simulated-hardware harness (task "harness": an iiwa arm under a 200 Hz differential IK, a D415-like
camera) it runs one-demonstration trajectory tracking (paper section 10.2) through the server: it records the
demonstration `keydyn track` would (a generated constant push, or a dataset episode's actions), sends its
observations as the reference, and tracks it from the demonstration's start and from `keydyn track`'s grid of
offset starts; or, with --sweep, measures how the final error from the demonstration's start grows with the
camera's depth noise, latency and calibration error (each factor varied alone from the configured camera).

The simulation does not wait in real time: the environment steps when the reply comes. Each act's round trip is
timed and split into the server's encoding and planning and the rest (transport and (de)serialisation); the
summary compares it, with the camera's latency, to the control period.

The output directory holds:
    config.json                the resolved RobotConfig
    track.json                 as `keydyn track`'s; each row also has the actions the server returned and those
                               applied (m/s), and each act's round trip and server time (s); the summary has the
                               loop's timing (`loop`) and the served run (`server`)
    region_of_attraction.png   as `keydyn track`'s
    degradation.json, .png     with --sweep instead: final error per setting of each factor
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from keydyn.evaluation.episodes import ClosedLoopRun
from keydyn.evaluation.evaluate import episode_seed
from keydyn.evaluation.goals import GoalPairConfig
from keydyn.evaluation.imitation import DemonstrationConfig, write_track_results
from keydyn.evaluation.tracking import Demonstration, perturbed_start, replay
from keydyn.files import write_json_atomic
from keydyn.locks import holds_files, one_writer
from keydyn.plots import pyplot, save_figure
from keydyn.sim.config import TaskConfig, task_config
from keydyn.sim.environment import ACTION_DIM, PushingEnvironment, make_environment
from keydyn.sim.harness import D415Model, HarnessEnv

GROUND_TRUTH = ("object_position", "object_quaternion", "mug_instance")
"""The info entries sent to a run that reads ground truth (GT 3D): what `GroundTruthEncoder` reads."""

HARNESS_GOALS = GoalPairConfig(object_xy_range=0.05, push_speed=(0.05, 0.1), min_translation=0.02)
"""Demonstrations that fit the harness's 0.40 m table: slow pushes (5-10 cm/s) of a box near its centre."""


@dataclass(frozen=True)
class SweepConfig:
    """The degradation study's settings: each factor is varied alone, the others as --camera gives them."""

    depth_noise_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    """Multiples of the camera's disparity error (--camera.subpixel; 1: the D415's 0.08 px)."""
    latency_frames: tuple[int, ...] = (0, 1, 2, 3)
    """Camera latencies, in frames of 1/fps s (at most a control period)."""
    calibration_scales: tuple[float, ...] = (0.0, 1.0, 2.0, 4.0)
    """Multiples of the calibration error (--camera.translation-error and --camera.rotation-error-deg)."""

    def settings(self, camera: D415Model) -> Iterator[tuple[str, float, D415Model]]:
        """(factor, value, camera) of every setting: factor "depth_noise" (value: the scale), "latency" (value:
        milliseconds) or "calibration" (value: the scale)."""
        for scale in self.depth_noise_scales:
            yield "depth_noise", scale, dataclasses.replace(camera, subpixel=scale * camera.subpixel)
        for frames in self.latency_frames:
            changed = dataclasses.replace(camera, latency_frames=frames)
            yield "latency", 1000 * changed.latency, changed
        for scale in self.calibration_scales:
            yield (
                "calibration",
                scale,
                dataclasses.replace(
                    camera,
                    translation_error=scale * camera.translation_error,
                    rotation_error_deg=scale * camera.rotation_error_deg,
                ),
            )


FACTOR_LABELS = {
    "depth_noise": "depth noise (x the D415's disparity error)",
    "latency": "camera latency (ms)",
    "calibration": "calibration error (x 4 mm, 1 deg)",
}


@dataclass(frozen=True, kw_only=True)
class RobotConfig(DemonstrationConfig):
    """Be the robot: drive a simulated task (the served run's: the harness) through `keydyn serve`, tracking a
    demonstration from its start and offset starts, or measuring the error's growth with camera degradations."""

    out: Path
    """Output directory (created)."""
    address: str = "tcp://127.0.0.1:5555"
    """The server's address (`keydyn serve --address`)."""
    timeout_s: float = 30.0
    """Longest wait for a reply, seconds; the robot stops the episode when none comes."""
    task: str | None = None
    """The robot's task; default the served run's (the server names it)."""
    width: int | None = None
    """Camera image width, pixels; default the served run's. A whole multiple of it (640 for a 320x240 run) is
    averaged down by the server, as a real camera's 640x480."""
    height: int | None = None
    """Camera image height, pixels; default the served run's."""
    camera: D415Model = field(default_factory=D415Model)
    """The harness's camera: its depth noise, holes, latency and calibration error (task harness only)."""
    demo_steps: int = 8
    """Length of a generated demonstration: a constant push held this many steps (8 steps of 0.2 s at 5-10 cm/s
    move the pusher 8-16 cm, within the harness's table)."""
    goals: GoalPairConfig = field(default_factory=lambda: HARNESS_GOALS)
    """How generated demonstrations are drawn (push_steps is replaced by --demo-steps)."""
    sweep: bool = False
    """Run the degradation study (degradation.json, .png) instead of the region of attraction."""
    factors: SweepConfig = field(default_factory=SweepConfig)
    """The settings --sweep runs (an empty list leaves a factor out)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "out", Path(self.out))
        if self.timeout_s <= 0:
            raise ValueError(f"--timeout-s must be positive, got {self.timeout_s}")

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["out"] = str(self.out)
        values["dataset"] = None if self.dataset is None else str(self.dataset)
        return values


@dataclass(frozen=True)
class RobotSensors:
    """What the robot sends the server: the pusher position, and per camera of `cameras` its RGB, depth, K and
    T_world_camera; the true object pose (`GROUND_TRUTH`, as the map `info`) only when `ground_truth`."""

    cameras: tuple[str, ...]
    ground_truth: bool

    def message(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> dict[str, Any]:
        """The observation to send, from an environment's observation and info."""
        message = {"pusher_position": observation["pusher_position"]}
        for camera in self.cameras:
            for entry in ("rgb", "depth", "intrinsics", "pose"):
                message[f"{camera}/{entry}"] = observation[f"{camera}/{entry}"]
        if self.ground_truth:
            message["info"] = {key: info[key] for key in GROUND_TRUTH}
        return message


def robot_environment(task: TaskConfig, camera: D415Model, images: bool) -> PushingEnvironment:
    """The environment of `task`, the harness's with `camera`; rendering only when `images`.

    Raises:
        ValueError: a camera model other than the default for a task that does not run on the harness.
    """
    if task.environment == "harness":
        return HarnessEnv(task, images=images, camera=camera)
    if camera != D415Model():
        raise ValueError(
            f"--camera.* sets the harness's camera; task {task.name} runs environment {task.environment!r}, which "
            "renders its own: leave --camera at its defaults or use --task harness"
        )
    return make_environment(task, images)


def unsafe_action(action: Any, max_speed: float) -> str:
    """Why a velocity the server returned must not be executed ("" when it may): not a finite (2,) world-xy
    velocity, or faster than `max_speed` (m/s) along an axis, which keydyn serve never plans for a run of the
    robot's task (`keydyn.control.run.run_controller`): a server of another task, or a fault; the robot stops
    rather than guess."""
    try:
        velocity = np.asarray(action, np.float64)
    except (TypeError, ValueError):
        velocity = None
    if velocity is None or velocity.shape != (ACTION_DIM,) or not np.isfinite(velocity).all():
        return f"the server returned {action!r}, not a finite (2,) velocity"
    if np.abs(velocity).max() > max_speed * (1 + 1e-5):
        return (
            f"the server returned {np.round(velocity, 4).tolist()} m/s, over the task's limit of "
            f"{max_speed} m/s per axis: serve a run of the robot's task (its max_speed), or check the server"
        )
    return ""


def track_through_server(
    client: Any,
    env: PushingEnvironment,
    sensors: RobotSensors,
    demo: Demonstration,
    reference: Sequence[Mapping[str, Any]],
    seed: int,
    index: int = 0,
    reset_options: dict[str, Any] | None = None,
    frame_age_s: float | None = None,
) -> dict[str, Any]:
    """Track `demo` through a `keydyn.remote.client.Client`: reset the server with the `reference` observations
    and planner `seed`, then for demo.steps ticks send the robot's observation (its images `frame_age_s` seconds
    old, if given) and apply the returned velocity, from the demonstration's start or from `reset_options` (the
    environment reset with `seed`, so that any random draws of its own repeat).

    A refused act (ServerError: a late frame, a missing camera, ...), no reply (TimeoutError: a dropped
    connection), or a reply that is not a finite velocity within the task's max_speed per axis is the robot's
    safe stop: zero velocity for one tick, the episode ended, its `fault` the reason. Returns `keydyn track`'s
    row (errors against the demonstration's final pose), with `index`, the server's and the applied (T, 2)
    actions, and each act's round trip and server (encode + plan) time in seconds.
    """
    from keydyn.remote.client import ServerError  # pyzmq, the robot extra, only when a robot runs

    limit = env.task.max_speed
    client.reset(reference=reference, seed=seed)
    observation, info = env.reset(seed=seed, options=demo.reset_options if reset_options is None else reset_options)
    first_info = info
    latents, returned, applied, round_trips, server_times = [], [], [], [], []
    fault = termination = ""
    for _ in range(demo.steps):
        message = sensors.message(observation, info)
        begin = time.perf_counter()
        try:
            reply = client.act_reply(message, frame_age_s)
        except (ServerError, TimeoutError) as error:
            fault = str(error)
            break
        round_trips.append(time.perf_counter() - begin)
        server_times.append(reply.encode_time + reply.plan_time)
        fault = unsafe_action(reply.action, limit)
        if fault:
            break
        returned.append(reply.action)
        applied.append(np.asarray(reply.action, np.float32))
        latents.append(reply.latent)
        observation, _, terminated, _, info = env.step(applied[-1])
        if terminated:
            termination = info.get("termination", "terminated")
            break
    if fault:
        applied.append(np.zeros(ACTION_DIM, np.float32))
        _, _, terminated, _, info = env.step(applied[-1])
        termination = info.get("termination", "terminated") if terminated else ""
    run = ClosedLoopRun(
        np.array(latents, np.float32),
        np.array(applied, np.float32).reshape(-1, ACTION_DIM),
        first_info,
        info,
        termination,
        float(sum(round_trips)),
        [],
        fault,
    )
    row = run.result(index, demo.positions[-1], demo.quaternions[-1]).row()
    row.update(
        server_actions=np.array(returned).reshape(-1, ACTION_DIM).tolist(),
        actions=run.actions.tolist(),
        act_times_s=round_trips,
        server_times_s=server_times,
    )
    return row


def loop_timing(rows: Sequence[Mapping[str, Any]], control_dt: float, camera_latency: float) -> dict[str, Any]:
    """The control loop's timing over every act of `rows`: round trip (mean, max), the server's share and the rest
    (transport and (de)serialisation), the rate the round trip allows, and the fraction of acts whose action was
    ready within the control period of the scene it was planned from (camera latency + round trip)."""
    round_trips = np.array([t for row in rows for t in row["act_times_s"]])
    server = np.array([t for row in rows for t in row["server_times_s"]])
    if not len(round_trips):
        return {"acts": 0, "control_dt_s": control_dt, "camera_latency_s": camera_latency}
    return {
        "acts": len(round_trips),
        "control_dt_s": control_dt,
        "camera_latency_s": camera_latency,
        "act_round_trip_mean_s": float(round_trips.mean()),
        "act_round_trip_max_s": float(round_trips.max()),
        "server_time_mean_s": float(server.mean()),
        "transport_mean_s": float((round_trips - server).mean()),
        "round_trip_rate_hz": float(1 / round_trips.mean()),
        "within_control_period": float(np.mean(camera_latency + round_trips <= control_dt)),
    }


class Robot:
    """The robot's side of one session: the served run's description, the robot's task and sensors, and the
    demonstration's start and actions (drawn once, in an environment of the configured camera)."""

    def __init__(self, config: RobotConfig, client: Any) -> None:
        self.config, self.client = config, client
        self.served = client.info()
        name = config.task or self.served["task"]
        size = {"width": config.width or self.served["width"], "height": config.height or self.served["height"]}
        self.task = task_config(name, **size)
        cameras = tuple(self.served["cameras"])
        missing = sorted(set(cameras) - set(self.task.camera_names))
        if missing:
            raise ValueError(
                f"the served run reads cameras {', '.join(missing)}, which task {name} has not (its cameras: "
                f"{', '.join(self.task.camera_names)}); serve a run trained on the robot's task, or give its --task"
            )
        self.sensors = RobotSensors(cameras, ground_truth=not cameras)
        env = self.environment(config.camera)
        try:
            self.push = config.demonstration_push(env)
        finally:
            env.close()

    def environment(self, camera: D415Model) -> PushingEnvironment:
        return robot_environment(self.task, camera, images=bool(self.sensors.cameras))

    def camera_latency(self, env: PushingEnvironment) -> float:
        """How old the images the robot sends are, seconds: the harness's camera latency (0 without images or
        the harness)."""
        return env.camera.latency if self.sensors.cameras and isinstance(env, HarnessEnv) else 0.0

    def demonstration(self, env: PushingEnvironment) -> tuple[Demonstration, list[dict[str, Any]]]:
        """The demonstration replayed in `env` (as its sensors record it) and the reference observations to send;
        its latents are those the server encodes from them."""
        observations, infos = replay(env, *self.push, seed=self.config.seed)
        reference = [self.sensors.message(o, i) for o, i in zip(observations, infos, strict=True)]
        latents = self.client.reset(reference=reference, seed=self.config.seed)
        return Demonstration.from_replay(*self.push, latents, infos), reference

    def track(self, env: PushingEnvironment, offsets: Sequence[tuple[float, float, float]]) -> list[dict[str, Any]]:
        """Tracking rows from each (dx, dy, dyaw) start offset (metres, radians; the first (0, 0, 0): the
        demonstration's own start), as `keydyn track`'s."""
        demo, reference = self.demonstration(env)
        latency = self.camera_latency(env)
        rows = []
        for index, (dx, dy, dyaw) in enumerate(offsets):
            options = None if (dx, dy, dyaw) == (0.0, 0.0, 0.0) else perturbed_start(demo, dx, dy, dyaw)
            seed = episode_seed(self.config.seed, index)
            row = track_through_server(self.client, env, self.sensors, demo, reference, seed, index, options, latency)
            rows.append({**row, "dx_cm": 100 * dx, "dy_cm": 100 * dy, "dyaw_deg": math.degrees(dyaw)})
        return rows


def plot_degradation(rows: Sequence[Mapping[str, Any]], out: Path) -> Path:
    """Final position and angle error (rows) against each factor's setting (columns)."""
    plt = pyplot()
    factors = list(dict.fromkeys(row["factor"] for row in rows))
    figure, axes = plt.subplots(2, len(factors), figsize=(4 * len(factors), 6), sharey="row", squeeze=False)
    for column, factor in enumerate(factors):
        chosen = [row for row in rows if row["factor"] == factor]
        values = [row["value"] for row in chosen]
        for line, (key, label) in enumerate(
            (("final_position_error_cm", "final position error (cm)"), ("final_angle_error_deg", "final angle (deg)"))
        ):
            axis = axes[line, column]
            axis.plot(values, [row[key] for row in chosen], "o-")
            stopped = [row for row in chosen if row["fault"] or row["termination"]]
            axis.plot([row["value"] for row in stopped], [row[key] for row in stopped], "rx", ms=10)
            axis.set_ylabel(label if column == 0 else "")
            axis.grid(alpha=0.3)
        axes[1, column].set_xlabel(FACTOR_LABELS[factor])
    figure.suptitle("tracking from the demonstration's start on the harness (red x: stopped or ended early)")
    return save_figure(figure, out, dpi=110)


@one_writer("keydyn robot")
def run_robot(config: RobotConfig) -> dict[str, Any]:
    """Connect to the server and run the tracking study (or, with --sweep, the degradation study); write the
    output directory (see the module docstring) and return what track.json (degradation.json) holds."""
    try:
        from keydyn.remote.client import Client, ServerError
    except ModuleNotFoundError as error:
        raise ValueError(f"keydyn robot needs {error.name}: pip install 'keydyn[robot]'") from error
    if config.out.exists() and holds_files(config.out):
        raise ValueError(f"{config.out} already exists; pick a new --out")
    write_json_atomic(config.out / "config.json", config.to_json())
    with Client(config.address, timeout_s=config.timeout_s) as client:
        try:
            robot = Robot(config, client)
            return degradation_study(robot) if config.sweep else tracking_study(robot)
        except ServerError as error:  # a refused info or reset: nothing to track (a refused act stops its episode)
            raise ValueError(str(error)) from error


def tracking_study(robot: Robot) -> dict[str, Any]:
    """Track from the demonstration's start and the offset starts; write track.json and the region plot."""
    env = robot.environment(robot.config.camera)
    try:
        rows = robot.track(env, robot.config.start_offsets())
        latency = robot.camera_latency(env)
    finally:
        env.close()
    timing = loop_timing(rows, robot.task.control_dt, latency)
    return write_track_results(robot.config.out, rows, robot.config.to_json(), loop=timing, server=robot.served)


def degradation_study(robot: Robot) -> dict[str, Any]:
    """Track from the demonstration's start for every setting of `config.factors` (the demonstration recorded
    with that camera too); write degradation.json and degradation.png."""
    config = robot.config
    if robot.task.environment != "harness":
        raise ValueError(f"--sweep varies the harness's camera; task {robot.task.name} is not the harness's")
    rows = []
    for factor, value, camera in config.factors.settings(config.camera):
        env = robot.environment(camera)
        try:
            (row,) = robot.track(env, [(0.0, 0.0, 0.0)])
        finally:
            env.close()
        rows.append({"factor": factor, "value": value, "camera": dataclasses.asdict(camera), **row})
    if not rows:
        raise ValueError("--sweep has no settings: give --factors.latency-frames (or another factor) some values")
    results = {"config": config.to_json(), "server": robot.served, "runs": rows}
    write_json_atomic(config.out / "degradation.json", results)
    plot_degradation(rows, config.out / "degradation.png")
    return results

"""`keydyn robot`: the harness driven through a real `keydyn serve` socket, as a robot would be, tracking a
demonstration with a GT 3D run trained on harness episodes."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from keydyn.cli import main
from keydyn.data.collect import EpisodeFilter, collect
from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics
from keydyn.evaluation.goals import GoalPairConfig
from keydyn.models import shipped_run
from keydyn.remote.client import Client
from keydyn.remote.robot import Robot, RobotConfig, RobotSensors, SweepConfig, run_robot, track_through_server
from keydyn.sim.config import task_config
from keydyn.sim.harness import D415Model, HarnessEnv
from keydyn.sim.policy import RandomPushConfig
from tests.conftest import served, small_collect_config

DEMO_STEPS = 3


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory):
    """A GT 3D run trained for 3 epochs on 3 harness episodes (slow pushes, as its small workspace needs)."""
    data = tmp_path_factory.mktemp("datasets") / "harness"
    policy = RandomPushConfig(min_speed=0.05, max_speed=0.1)
    collect(
        small_collect_config(
            data, task="harness", steps=8, width=32, height=24, policy=policy, filter=EpisodeFilter(min_steps=4)
        )
    )
    out = tmp_path_factory.mktemp("runs") / "gt3d_harness"
    config = TrainDynamicsConfig(
        dataset=data, out=out, horizon=3, epochs=3, hidden=(32, 32), val_fraction=0.34, progress=False
    )
    return train_dynamics(config)


@pytest.fixture(scope="module")
def server(harness_run):
    with served(harness_run) as server:
        yield server


def robot_config(server, out, **overrides) -> RobotConfig:
    """Tracking from the demonstration's start and one offset start (30 deg of yaw)."""
    values = {"offsets_cm": (0.0,), "yaw_offsets_deg": (30.0,), "demo_steps": DEMO_STEPS, "timeout_s": 60.0}
    return RobotConfig(out=out, address=server.address, **{**values, **overrides})


def test_the_harness_tracks_a_demonstration_through_the_server_repeatably(server, tmp_path):
    results = run_robot(robot_config(server, tmp_path / "first"))
    rows = results["runs"]
    assert [(row["index"], row["dx_cm"], row["dy_cm"], round(row["dyaw_deg"])) for row in rows] == [
        (0, 0.0, 0.0, 0),
        (1, 0.0, 0.0, 30),
    ]
    for row in rows:
        assert row["steps"] == DEMO_STEPS or (row["termination"] and 0 < row["steps"] < DEMO_STEPS)
        assert not row["fault"] and np.isfinite(row["final_position_error_cm"])
        assert row["actions"] == row["server_actions"]  # within the speed limit: applied as returned
        assert len(row["act_times_s"]) == len(row["server_times_s"]) == row["steps"]
    loop = results["summary"]["loop"]
    assert loop["acts"] == sum(row["steps"] for row in rows) and loop["control_dt_s"] == 0.2
    assert loop["camera_latency_s"] == 0  # GT 3D reads no images
    assert 0 < loop["server_time_mean_s"] < loop["act_round_trip_mean_s"]
    for name in ("config.json", "track.json", "region_of_attraction.png"):
        assert (tmp_path / "first" / name).stat().st_size > 0
    assert json.loads((tmp_path / "first" / "track.json").read_text())["runs"] == rows

    acted = [episode for episode in server.session.episodes if episode.actions][-len(rows) :]  # the server's log
    for episode, row in zip(acted, rows, strict=True):
        assert episode.kind == "reference" and len(episode.target) == DEMO_STEPS + 1
        np.testing.assert_array_equal(np.stack(episode.actions), np.float32(row["actions"]))

    again = run_robot(robot_config(server, tmp_path / "again"))["runs"]
    timings = ("act_times_s", "server_times_s", "mean_plan_time_s")
    assert [{k: v for k, v in row.items() if k not in timings} for row in again] == [
        {k: v for k, v in row.items() if k not in timings} for row in rows
    ]


def test_a_latency_sweep_writes_its_curves(server, tmp_path):
    out = tmp_path / "sweep"
    factors = ["--factors.latency-frames", "0", "2", "--factors.depth-noise-scales", "--factors.calibration-scales"]
    argv = ["robot", "--address", server.address, "--out", str(out), "--demo-steps", str(DEMO_STEPS), "--sweep"]
    assert main([*argv, *factors]) == 0
    rows = json.loads((out / "degradation.json").read_text())["runs"]
    assert [(row["factor"], round(row["value"], 3)) for row in rows] == [("latency", 0.0), ("latency", 66.667)]
    assert [row["camera"]["latency_frames"] for row in rows] == [0, 2]
    assert (out / "degradation.png").stat().st_size > 0
    assert main([*argv, *factors]) == 2  # the output directory is taken


def test_the_robot_sends_only_what_a_robots_sensors_give():
    env = HarnessEnv(task_config("harness", width=32, height=24))
    observation, info = env.reset(seed=0)
    sent = RobotSensors(("d415",), ground_truth=False).message(observation, info)
    assert set(sent) == {"pusher_position", "d415/rgb", "d415/depth", "d415/intrinsics", "d415/pose"}
    assert set(observation) - set(sent) == {"pusher_velocity", "d415/mask"}  # neither is a sensor's reading
    ground_truth = RobotSensors((), ground_truth=True).message(observation, info)
    assert set(ground_truth) == {"pusher_position", "info"}
    assert set(ground_truth["info"]) == {"object_position", "object_quaternion", "mug_instance"}
    env.close()


def test_a_sweep_varies_one_camera_factor_at_a_time():
    cameras = {(factor, value): camera for factor, value, camera in SweepConfig().settings(D415Model())}
    noisy, miscalibrated = cameras["depth_noise", 2.0], cameras["calibration", 4.0]
    assert noisy.subpixel == pytest.approx(0.16) and noisy.translation_error == 0.004 and noisy.latency_frames == 1
    assert miscalibrated.translation_error == pytest.approx(0.016) and miscalibrated.rotation_error_deg == 4.0
    assert miscalibrated.subpixel == 0.08 and len(cameras) == 12


def test_a_run_that_reads_images_gets_them_from_a_camera_at_twice_its_resolution(tmp_path):
    """The shipped SDS run (top_down, 320x240) served, the robot's cameras at 640x480: the server averages the
    images down, and the robot tracks a 2-step demonstration from its start with them."""
    with served(shipped_run("top_down", "sds")) as server:
        still = GoalPairConfig(min_translation=0.0, min_rotation_deg=0.0)  # 2 steps: the push may not reach the box
        config = robot_config(server, tmp_path / "sds", demo_steps=2, goals=still, region=False, width=640, height=480)
        results = run_robot(config)
    (row,) = results["runs"]
    assert row["steps"] == 2 and not row["fault"] and row["actions"] == row["server_actions"]
    assert results["summary"]["server"]["cameras"] == ["top_down", "top_down_rotated"]
    assert results["summary"]["loop"]["camera_latency_s"] == 0  # keydyn's own renders have no latency


def test_a_refused_act_is_the_robots_safe_stop(server, tmp_path):
    with Client(server.address, timeout_s=60) as client:
        robot = Robot(robot_config(server, tmp_path / "unused"), client)
        env = robot.environment(robot.config.camera)
        demo, reference = robot.demonstration(env)
        blind = RobotSensors((), ground_truth=False)  # sends no object pose, which GT 3D reads
        row = track_through_server(client, env, blind, demo, reference, seed=0)
        env.close()
    assert row["steps"] == 1 and row["actions"] == [[0.0, 0.0]] and row["server_actions"] == []
    assert "the observation: GT 3D reads the true object pose from info" in row["fault"]


class FaultyServer:
    """A server that answers reset as keydyn serve does and every act with `act_reply` (None: no reply at all, a
    dropped connection), over a real loopback socket: the faults a robot must stop on."""

    def __init__(self, act_reply: dict | None) -> None:
        import threading

        import zmq

        self.act_reply = act_reply
        self.context = zmq.Context()
        self.socket = self.context.socket(zmq.REP)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.bind("tcp://127.0.0.1:*")
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.serve)
        self.thread.start()

    def serve(self) -> None:
        from keydyn.remote.protocol import decode, encode

        while not self.stop.is_set():
            if not self.socket.poll(50):
                continue
            op = decode(self.socket.recv())["op"]
            if op == "reset":
                self.socket.send(encode({"ok": True, "target": np.zeros((DEMO_STEPS + 1, 14), np.float32)}))
            elif self.act_reply is not None:
                self.socket.send(encode(self.act_reply))
            else:
                return  # never answers: the robot's client times out

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.socket.close()
        self.context.term()


def _act(action) -> dict:
    """An act reply as keydyn serve's, with `action`."""
    reply = {"ok": True, "action": np.asarray(action, np.float32), "latent": np.zeros(14, np.float32)}
    return {**reply, "encode_time_s": 0.0, "plan_time_s": 0.0}


@pytest.mark.parametrize(
    ("act_reply", "fault"),
    [
        (_act([0.5, 0.0]), r"returned \[0.5, 0.0\] m/s, over the task's limit of 0.3 m/s per axis"),
        (_act([np.nan, 0.0]), "not a finite"),
        (_act([0.1, 0.0, 0.0]), r"not a finite \(2,\) velocity"),
        ({**_act([0.0, 0.0]), "action": ["fast", "left"]}, r"returned \['fast', 'left'\], not a finite"),
        (None, r"no reply to act from a keydyn server at tcp://127.0.0.1:\d+ within 0.5 s"),
    ],
    ids=["over the speed limit", "not finite", "wrong shape", "not numbers", "dropped connection"],
)
def test_a_faulty_reply_or_none_is_the_robots_safe_stop(server, tmp_path, act_reply, fault):
    with Client(server.address, timeout_s=60) as client:
        robot = Robot(robot_config(server, tmp_path / "unused"), client)
        env = robot.environment(robot.config.camera)
        try:
            demo, reference = robot.demonstration(env)
            faulty = FaultyServer(act_reply)
            try:
                with Client(faulty.address, timeout_s=0.5) as faulty_client:
                    row = track_through_server(faulty_client, env, robot.sensors, demo, reference, seed=0)
            finally:
                faulty.close()
        finally:
            env.close()
    assert row["steps"] == 1 and row["actions"] == [[0.0, 0.0]] and row["server_actions"] == []
    assert re.search(fault, row["fault"]), row["fault"]


def test_a_late_frame_is_refused_and_the_robot_stops(server, tmp_path):
    with Client(server.address, timeout_s=60) as client:
        robot = Robot(robot_config(server, tmp_path / "unused"), client)
        env = robot.environment(robot.config.camera)
        try:
            demo, reference = robot.demonstration(env)
            late = 2 * client.info()["max_frame_age_s"]
            row = track_through_server(client, env, robot.sensors, demo, reference, seed=0, frame_age_s=late)
        finally:
            env.close()
    assert row["steps"] == 1 and row["actions"] == [[0.0, 0.0]] and row["server_actions"] == []
    assert "ms old, over the server's limit of 200 ms: stop the robot" in row["fault"]

"""`keydyn serve` and its client: the shipped models served over a real ZMQ socket to a real MuJoCo scene."""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq

from keydyn.control.mpc import MPCConfig
from keydyn.control.run import control_setup, run_task
from keydyn.evaluation.episodes import reach_goal
from keydyn.evaluation.goals import GoalPairConfig, goal_pair
from keydyn.evaluation.tracking import record_demonstration, track
from keydyn.models import shipped_run
from keydyn.remote.client import Client, ServerError
from keydyn.remote.protocol import ProtocolError, check_request, decode, encode, request
from keydyn.remote.server import Server
from keydyn.remote.session import ControlSession, ServeConfig, prepared_observation
from keydyn.sim.environment import make_environment
from keydyn.sim.render import camera_intrinsics

SEED = 3
STEPS = 3


@pytest.fixture(scope="module")
def setup():
    """The shipped SDS run in this process: its environment (320x240, both cameras), encoder and controller."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield control_setup(shipped_run("top_down", "sds"), None, "best", MPCConfig())
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(setup, tmp_path_factory):
    """The shipped SDS run served from a background thread at a free local port."""
    config = ServeConfig(run=shipped_run("top_down", "sds"), save_dir=tmp_path_factory.mktemp("sessions"))
    served = Server(ControlSession(config), "tcp://127.0.0.1:*")
    stop = threading.Event()
    thread = threading.Thread(target=served.serve, args=(stop,))
    thread.start()
    yield served
    stop.set()
    thread.join()
    served.close()


@pytest.fixture(scope="module")
def pair(setup):
    return goal_pair(setup.env, GoalPairConfig(), 0)


def test_served_goal_reaching_equals_the_in_process_loop_bit_for_bit(setup, server, pair, tmp_path):
    expected = reach_goal(setup.env, setup.encoder, setup.controller, pair, SEED, STEPS)
    env = setup.env
    with Client(server.address, timeout_s=60) as client:
        goal, _ = env.reset(options=pair.reset_options(pair.goal_state))
        assert client.reset(goal=goal, steps=STEPS, seed=SEED).shape == (17,)
        observation, _ = env.reset(options=pair.reset_options(pair.start_state))
        actions = []
        for t in range(STEPS):
            if t == 1:  # plan: act's action, with the whole plan (H = 2 steps left)
                plan = client.plan(observation)
                assert plan.actions.shape == (2, 2) and plan.latents.shape == (3, 17)
                assert plan.keypoints.shape == (3, 5, 3)
                np.testing.assert_array_equal(plan.latents[0], expected.latents[1])
                action = plan.actions[0]
            else:
                action = client.act(observation)
            assert action.dtype == np.float32 and action.shape == (2,)
            actions.append(action)
            observation, _, terminated, _, _ = env.step(action)
            assert not terminated
        with pytest.raises(ServerError, match="3 steps are done; send reset"):
            client.act(observation)
        with pytest.raises(ServerError, match="save takes a file name"):
            client.save(str(tmp_path / "elsewhere.json"))  # a peer chooses no path on the server
        written = client.save("session.json")
    np.testing.assert_array_equal(np.stack(actions), expected.actions)
    session = json.loads(Path(written).read_text())
    episode = session["episodes"][-1]
    assert session["task"] == "top_down" and session["latent"] == "sds" and episode["kind"] == "goal"
    np.testing.assert_array_equal(np.asarray(episode["actions"], np.float32), expected.actions)
    np.testing.assert_array_equal(np.asarray(episode["latents"], np.float32), expected.latents[:STEPS])
    assert len(episode["goal"]) == 17 and len(episode["plan_times_s"]) == STEPS


def test_served_tracking_equals_the_in_process_loop_bit_for_bit(setup, server, pair):
    env, pushes = setup.env, np.array([[0.2, 0.05], [0.2, 0.0], [0.15, -0.05]], np.float32)
    demo = record_demonstration(env, setup.encoder, pair.reset_options(pair.start_state), pushes)
    expected = track(env, setup.encoder, setup.controller, demo, SEED)
    reference = [env.reset(options=demo.reset_options)[0]] + [env.step(push)[0] for push in pushes]
    with Client(server.address, timeout_s=60) as client:
        np.testing.assert_array_equal(client.reset(reference=reference, seed=SEED), demo.latents)
        observation, _ = env.reset(options=demo.reset_options)
        actions = []
        for _ in range(len(pushes)):
            actions.append(client.act(observation))
            observation, *_ = env.step(actions[-1])
    np.testing.assert_array_equal(np.stack(actions), expected.actions)


def test_bad_requests_are_answered_with_the_problem_and_the_server_goes_on(setup, server, pair):
    observation, _ = setup.env.reset(options=pair.reset_options(pair.start_state))
    context = zmq.Context()
    raw = context.socket(zmq.REQ)
    raw.setsockopt(zmq.LINGER, 0)
    raw.setsockopt(zmq.RCVTIMEO, 30000)
    raw.connect(server.address)

    def answer(data: bytes) -> str:
        raw.send(data)
        reply = decode(raw.recv())
        assert reply["ok"] is False and "\n" not in reply["error"]
        return reply["error"]

    try:
        assert "not msgpack" in answer(b"\xc1 not msgpack")
        assert "protocol version 0, this server speaks version 4" in answer(encode({"version": 0, "op": "info"}))
        assert "unknown op 'fly'" in answer(encode(request("fly")))
        assert "no observation" in answer(encode(request("act")))
        big_endian = {"dtype": ">f4", "shape": [2], "data": np.zeros(2, ">f4").tobytes()}
        message = encode(request("act", observation={**observation, "pusher_position": big_endian}, step=0))
        assert "not a little-endian" in answer(message)
    finally:
        raw.close()
        context.term()
    with Client(server.address, timeout_s=60) as client:
        with pytest.raises(ServerError, match="exactly one of goal"):
            client.reset()
        with pytest.raises(ServerError, match="no episode: send reset"):
            client.act(observation)
        client.reset(goal=observation, seed=SEED)
        float_rgb = {**observation, "top_down/rgb": observation["top_down/rgb"] / 255.0}
        with pytest.raises(ServerError, match=r"the observation: observation top_down/rgb is float64 .* not uint8"):
            client.act(float_rgb)
        no_camera = {key: value for key, value in observation.items() if not key.startswith("top_down/")}
        with pytest.raises(ServerError, match=r"has no top_down/rgb .* give camera top_down's images"):
            client.act(no_camera)
        wrong_size = {**observation, "top_down/rgb": np.zeros((400, 500, 3), np.uint8)}
        with pytest.raises(ServerError, match=r"500x400 pixels; this run reads 320x240 images or a whole multiple"):
            client.act(wrong_size)
        limit = client.info()["max_frame_age_s"]
        assert limit == setup.env.task.control_dt  # the default: one control period
        late = f"frame is 250 ms old, over the server's limit of {1000 * limit:.0f} ms: stop the robot"
        with pytest.raises(ServerError, match=late):
            client.act(observation, frame_age_s=0.25)
        with pytest.raises(ServerError, match=r"frame_age_s is -1.0; send the seconds since the images were captured"):
            client.act(observation, frame_age_s=-1)
        assert client.info()["latent"] == "sds"
        assert client.act(observation, frame_age_s=limit / 2).shape == (2,)  # as it was before the refused requests
        assert client.step == 1
        client.step = 0  # as after a reply lost to a timeout: the server planned a step this robot never received
        with pytest.raises(ServerError, match="request is for step 0 of the episode, the server has planned 1 steps"):
            client.act(observation)
        client.reset(goal=observation, seed=SEED)
        assert client.step == 0 and client.act(observation).shape == (2,)
        millimetres = {**observation, "top_down/depth": 1000 * observation["top_down/depth"]}  # float, not metres
        with pytest.raises(ServerError, match=r"median .* m: depth in millimetres\?"):
            client.act(millimetres)
        assert client.act(observation).shape == (2,)  # the refused act left the episode as it was


def test_images_at_twice_the_resolution_and_depth_in_millimetres_are_read_as_the_runs_own(setup, pair):
    """640x480 images averaged down locate the keypoints where 320x240 renders of the same scene do (within
    2 mm); uint16 millimetre depth reads as metres."""
    task, encoder = setup.env.task, setup.encoder
    cameras = [camera.name for camera in task.cameras]
    large = make_environment(dataclasses.replace(task, width=640, height=480))
    options = pair.reset_options(pair.start_state)
    small, _ = setup.env.reset(options=options)
    observation, _ = large.reset(options=options)
    prepared = prepared_observation(observation, cameras, (320, 240))
    assert prepared["top_down/rgb"].shape == (240, 320, 3) and prepared["top_down/depth"].shape == (240, 320)
    np.testing.assert_allclose(
        prepared["top_down/intrinsics"], camera_intrinsics(task.cameras[0].fovy_deg, 320, 240), atol=1e-4
    )
    expected = encoder.encode(small, {})[:15].reshape(5, 3)
    located = encoder.encode(prepared, {})[:15].reshape(5, 3)
    assert np.linalg.norm(located - expected, axis=1).max() < 0.002
    whole_number_k = {**observation, "top_down/intrinsics": np.round(observation["top_down/intrinsics"]).astype(int)}
    scaled = prepared_observation(whole_number_k, cameras, (320, 240))["top_down/intrinsics"]
    assert scaled.dtype == np.float64 and scaled[0, 2] % 1 != 0  # the half pixels of the scaling are kept
    millimetres = {**small, "top_down/depth": np.round(1000 * small["top_down/depth"]).astype(np.uint16)}
    converted = prepared_observation(millimetres, cameras, (320, 240))["top_down/depth"]
    assert converted.dtype == np.float32
    np.testing.assert_allclose(converted, small["top_down/depth"], atol=5e-4)


def test_arrays_travel_exactly_and_malformed_ones_are_refused():
    arrays = [np.arange(6, dtype=">f8").reshape(2, 3), np.zeros((0, 2), np.float32), np.array(7, np.uint16)]
    message = decode(encode({"arrays": arrays, "flag": np.bool_(True), "scale": np.float32(0.5)}))
    for sent, received in zip(arrays, message["arrays"], strict=True):
        assert received.dtype == sent.dtype.newbyteorder("<") and received.flags.writeable
        assert received.shape == sent.shape
        np.testing.assert_array_equal(received, sent)
    assert message["flag"] is True and message["scale"] == 0.5
    with pytest.raises(ProtocolError, match=r"4 bytes, its dtype <f4 and shape \[2\] need 8 bytes"):
        decode(encode({"a": {"dtype": "<f4", "shape": [2], "data": b"1234"}}))
    with pytest.raises(ProtocolError, match=r"'\|O' is not a little-endian bool, integer or float"):
        decode(encode({"a": {"dtype": "|O", "shape": [1], "data": b"12345678"}}))
    with pytest.raises(TypeError, match="cannot send an array of <U1"):
        encode({"a": np.array(["x"])})


def test_the_client_times_out_clearly_and_can_call_again(tmp_path):
    with Client(f"ipc://{tmp_path}/nobody", timeout_s=0.2) as client:
        for _ in range(2):  # the REQ socket is made afresh after a timeout
            with pytest.raises(TimeoutError, match=r"no reply to info from a keydyn server at ipc://.* within 0.2 s"):
                client.info()


def test_importing_the_client_does_not_import_torch():
    code = "import sys, keydyn.remote.client; print(sorted(m for m in sys.modules if m.split('.')[0] in MODULES))"
    result = subprocess.run(
        [sys.executable, "-c", f"MODULES = ('torch', 'keydyn'); {code}"], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "['keydyn', 'keydyn.remote', 'keydyn.remote.client', 'keydyn.remote.protocol']"


@pytest.mark.slow
def test_keydyn_serve_serves_ground_truth_latents_and_stops_on_sigterm(pair):
    run = shipped_run("top_down", "gt3d")
    command = [sys.executable, "-m", "keydyn.cli", "serve", "--run", str(run), "--address", "tcp://127.0.0.1:*"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        address = re.search(r" at (tcp://\S+);", line)
        assert address, line + process.stderr.read()
        env = make_environment(run_task(run), images=False)
        goal, goal_info = env.reset(options=pair.reset_options(pair.goal_state))
        observation, info = env.reset(options=pair.reset_options(pair.start_state))
        with Client(address.group(1), timeout_s=60) as client:
            assert client.info()["cameras"] == [] and client.info()["latent"] == "gt3d"
            with pytest.raises(ServerError, match="the goal: GT 3D reads the true object pose from info, which has no"):
                client.reset(goal=goal)
            client.reset(goal={**goal, "info": goal_info})
            assert np.isfinite(client.act({**observation, "info": info})).all()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
        assert "keydyn serve: stopped" in process.stdout.read()
    finally:
        process.kill()
        process.wait()


def test_a_frame_age_may_travel_as_an_int_or_a_float_and_nothing_else():
    for age in (0, 0.033):
        assert check_request(request("act", observation={}, step=0, frame_age_s=age)) == (
            "act",
            {"observation": {}, "step": 0, "frame_age_s": age},
        )
    with pytest.raises(ProtocolError, match="the plan request's frame_age_s is a str; send a int or float"):
        check_request(request("plan", observation={}, step=0, frame_age_s="0.1"))

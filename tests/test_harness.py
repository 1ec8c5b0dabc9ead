"""The simulated-hardware harness: iiwa kinematics, differential IK, the D415-like camera, the environment."""

from __future__ import annotations

import math

import gymnasium as gym
import mujoco
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy.spatial.transform import Rotation

import keydyn.sim  # noqa: F401  (registers the environments)
from keydyn.cli import main
from keydyn.data.store import EpisodeStore
from keydyn.sim.config import task_config
from keydyn.sim.environment import PushingEnvironment, make_environment
from keydyn.sim.harness import D415Model, HarnessEnv
from keydyn.sim.harness.iiwa import JOINT_LIMITS, SEGMENTS, VELOCITY_LIMITS, planar_pose

SMALL = {"width": 96, "height": 72}
PERFECT = D415Model(
    subpixel=0.0, edge_jump=0.0, dropout=0.0, latency_frames=0, translation_error=0.0, rotation_error_deg=0.0
)
CLEAR = {"object_xy": [0.12, 0.12], "object_yaw": 0.0, "pusher_xy": [-0.1, -0.12]}  # pushes in +-x, +y miss the box


def _flange(env: HarnessEnv, q) -> np.ndarray:
    """World position (3,) of the flange at joint angles q (7,) (the kinematics alone)."""
    data = mujoco.MjData(env.model)
    data.qpos[env._ik().qpos] = q
    mujoco.mj_kinematics(env.model, data)
    return data.xpos[env.model.body("iiwa_tool").id]


def test_forward_kinematics_has_the_published_geometry():
    env = HarnessEnv(images=False)
    base = env.base
    shoulder, upper, fore, flange = SEGMENTS
    straight = _flange(env, np.zeros(7)) - base
    np.testing.assert_allclose(straight, [0.0, 0.0, shoulder + upper + fore + flange], atol=1e-9)  # 1.306 m
    horizontal = _flange(env, [0, math.pi / 2, 0, 0, 0, 0, 0]) - base  # leaning along +x from the shoulder
    np.testing.assert_allclose(horizontal, [upper + fore + flange, 0.0, shoulder], atol=1e-9)
    turned = _flange(env, [math.pi / 2, math.pi / 2, 0, 0, 0, 0, 0]) - base  # joint 1 turns it to +y
    np.testing.assert_allclose(turned, [0.0, upper + fore + flange, shoulder], atol=1e-9)
    elbow = _flange(env, [0, 0, 0, math.pi / 2, 0, 0, 0]) - base  # forearm horizontal from the elbow
    np.testing.assert_allclose(elbow, [fore + flange, 0.0, shoulder + upper], atol=1e-9)
    twisted = _flange(env, [0, 0, math.pi / 2, math.pi / 2, 0, 0, 0]) - base  # joint 3 turns the elbow's axis
    np.testing.assert_allclose(np.linalg.norm(twisted[:2]), fore + flange, atol=1e-9)
    assert np.degrees(JOINT_LIMITS).round().tolist() == [170, 120, 170, 120, 170, 120, 175]
    env.close()


def test_every_start_of_the_task_is_reached_pointing_down():
    """The closed-form pose of 500 starts of the task's distribution (some beyond the table edge, where the episode
    ends at once) puts the tip at the start within 1e-6 m, the pusher vertical, inside the joint limits."""
    env = HarnessEnv(images=False)
    controller = env._ik()
    rng = np.random.default_rng(0)
    for _ in range(500):
        xy = env.task.start.sample(rng)["pusher_xy"]
        tip = np.array([xy[0], xy[1], controller.height])
        q = planar_pose(tip, env.base)
        position, pointing = controller.tip(q)
        np.testing.assert_allclose(position, tip, atol=1e-6)
        np.testing.assert_allclose(pointing, [0, 0, -1], atol=1e-6)
        assert np.all(np.abs(q) < JOINT_LIMITS)
    with pytest.raises(ValueError, match="out of the iiwa's reach"):
        planar_pose(np.array([0.4, 0.4, 0.0]), env.base)
    env.close()


def test_the_tip_tracks_a_5_hz_velocity_command():
    """Measured: the mean tip velocity over the first 0.2 s step is 13-27 mm/s short of the command (the servos
    follow their targets 20 ms late), over later steps within 2.7 mm/s (about 1%) of it; the tip stays within
    0.03 mm of its height and 0.02 deg of vertical."""
    env = HarnessEnv(images=False)
    for command in ([0.2, 0.0], [0.0, 0.2], [-0.1, 0.1], [0.25, 0.1]):
        obs, _ = env.reset(seed=0, options={"start": CLEAR})
        positions = [obs["pusher_position"].astype(float)]
        for _ in range(3):
            obs, *_ = env.step(np.array(command))
            positions.append(obs["pusher_position"].astype(float))
        velocity = np.diff(positions, axis=0) / env.task.control_dt
        np.testing.assert_allclose(velocity[0], command, atol=0.03)
        np.testing.assert_allclose(velocity[1:], [command, command], atol=0.003)
        np.testing.assert_allclose(obs["pusher_velocity"], command, atol=0.006)
        site = env._ik().site
        assert env.data.site_xpos[site][2] == pytest.approx(env._ik().height, abs=2e-4)
        assert env.data.site_xmat[site][8] < -math.cos(math.radians(0.05))
    env.close()


def test_joint_position_and_speed_limits_hold():
    """A command far beyond the arm's speed, and then one that folds the elbow against its limit: every IK tick
    moves each joint target at most its speed limit, and neither targets nor joints pass their limits."""
    env = HarnessEnv(images=False)
    for command, ticks in (([3.0, -3.0], 40), ([-0.3, 0.0], 200)):  # the env would clip the first; IK does not
        env.reset(seed=0, options={"start": CLEAR})
        controller, data = env._ik(), env.data
        controller.command = np.array(command)
        for _ in range(ticks):
            before = data.ctrl[controller.actuators].copy()
            controller.tick(data)
            mujoco.mj_step(env.model, data, nstep=5)
            step = np.abs(data.ctrl[controller.actuators] - before) / controller.dt
            assert np.all(step <= VELOCITY_LIMITS + 1e-9)
            assert np.all(np.abs(data.ctrl[controller.actuators]) <= JOINT_LIMITS - controller.config.limit_margin)
            assert np.all(np.abs(env.joint_positions()) <= JOINT_LIMITS)
    assert abs(env.joint_positions()[3]) > JOINT_LIMITS[3] - 0.05  # the elbow did reach its limit
    env.close()


def _observe(camera: D415Model, size: dict = SMALL) -> tuple[HarnessEnv, dict]:
    env = HarnessEnv(camera=camera, **size)
    obs, _ = env.reset(seed=1, options={"start": CLEAR})
    return env, obs


def test_depth_noise_has_the_stereo_standard_deviation():
    """Over the table pixels, (noisy - true) / (z^2 sigma_d / (f b)) has standard deviation 1 within 5%."""
    noisy_camera = D415Model(edge_jump=0.0, dropout=0.0, latency_frames=0, translation_error=0.0, rotation_error_deg=0)
    noisy_env, noisy = _observe(noisy_camera, {"width": 160, "height": 120})
    perfect_env, perfect = _observe(PERFECT, {"width": 160, "height": 120})
    true = perfect["d415/depth"].astype(float)
    table = (true > 0.8) & (true < 1.2) & (perfect["d415/mask"] == 0)
    assert table.sum() > 3000
    sigma = noisy_camera.depth_sigma(true[table], noisy_env.task.cameras[0].fovy_deg)
    assert noisy_camera.depth_sigma(np.array(1.0), 40.4) == pytest.approx(0.0022, abs=1e-4)  # 2.2 mm at 1 m
    ratio = (noisy["d415/depth"][table] - true[table]) / sigma
    assert np.std(ratio) == pytest.approx(1.0, abs=0.05) and abs(np.mean(ratio)) < 0.1
    holed_env, holed = _observe(D415Model())
    assert np.all(holed["d415/depth"] >= 0)
    assert 0.005 < np.mean(holed["d415/depth"] == 0) < 0.2  # random dropout and edge holes
    for env in (noisy_env, perfect_env, holed_env):
        env.close()


def test_images_lag_the_state_by_one_camera_frame():
    """The image returned after a step is the latency-free render of the scene 33 ms (1/30 s in 1 ms steps) before
    the step ended, not of the scene at its end."""
    late_camera = D415Model(subpixel=0.0, edge_jump=0.0, dropout=0.0, translation_error=0.0, rotation_error_deg=0.0)
    late, _ = _observe(late_camera)
    prompt, _ = _observe(PERFECT)
    command = np.array([0.3, 0.0])
    obs, *_ = late.step(command)
    prompt._actuate(command)
    prompt._simulate(late.task.substeps - 33)
    np.testing.assert_array_equal(obs["d415/rgb"], prompt.camera_images()[0])
    assert not np.array_equal(obs["d415/rgb"], late.camera_images()[0])  # the arm moved in the last 33 ms
    for env in (late, prompt):
        env.close()


def test_reported_camera_pose_has_the_configured_calibration_error():
    for millimetres, degrees in ((4.0, 1.0), (10.0, 0.3)):
        camera = D415Model(translation_error=millimetres / 1000, rotation_error_deg=degrees, calibration_seed=3)
        env = HarnessEnv(camera=camera, images=False)
        env.reset(seed=0)
        (reported,), (true,) = env.camera_poses(), env.true_camera_poses()
        assert np.linalg.norm(reported[:3, 3] - true[:3, 3]) == pytest.approx(millimetres / 1000, abs=1e-12)
        angle = np.linalg.norm(Rotation.from_matrix(true[:3, :3].T @ reported[:3, :3]).as_rotvec())
        assert math.degrees(angle) == pytest.approx(degrees, abs=1e-9)
        env.close()
    env = HarnessEnv(camera=PERFECT, images=False)
    env.reset(seed=0)
    np.testing.assert_array_equal(env.camera_poses()[0], env.true_camera_poses()[0])
    env.close()


def test_harness_is_a_pushing_environment_that_passes_the_gymnasium_checker():
    made = make_environment(task_config("harness", **SMALL))
    assert isinstance(made, HarnessEnv)
    made.close()
    env = gym.make("keydyn/harness-v0", **SMALL).unwrapped
    assert isinstance(env, PushingEnvironment)
    check_env(env, skip_render_check=False)
    env.reset(seed=4)
    env.step(np.array([0.2, 0.1]))
    saved = env.sim_state()
    after, *_ = env.step(np.array([0.1, -0.2]))
    env.reset(seed=5, options={"sim_state": saved})  # the joint targets live in ctrl, part of the state
    replayed, *_ = env.step(np.array([0.1, -0.2]))
    np.testing.assert_array_equal(after["pusher_position"], replayed["pusher_position"])
    env.close()


def test_keydyn_collect_and_preview_run_the_harness(tmp_path):
    out = tmp_path / "harness"
    size = ["--width", "64", "--height", "48"]
    argv = ["collect", "--task", "harness", "--out", str(out), "--episodes", "1", "--steps", "4", *size]
    assert main([*argv, "--filter.min-steps", "2", "--no-progress"]) == 0
    store = EpisodeStore.open(out)
    assert store.num_episodes == 1 and store.episode(0)["d415/depth"].shape[1:] == (48, 64)
    picture = tmp_path / "harness.png"
    assert main(["preview", "--task", "harness", "--out", str(picture), *size]) == 0
    assert picture.stat().st_size > 0

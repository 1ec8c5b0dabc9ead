"""The gymnasium Pusher-v5 adapter (keydyn.sim.adapters.gymnasium_pusher): the contract, the tip controller, replay,
geometry, and collect / train-dynamics / evaluate through the command line, all on the real Pusher-v5."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from keydyn.cli import main
from keydyn.sim import PushingEnvironment, make_environment, task_config
from keydyn.sim.adapters.gymnasium_pusher import TIP_HEIGHT, GymnasiumPusherEnv
from keydyn.vision.geometry import pixel_grid, unproject_to_world

from .conftest import SMALL
from .test_evaluate import FAST_MPC

TASK = task_config("gymnasium_pusher", **SMALL)


def start(object_xy, pusher_xy) -> dict:
    return {"start": {"object_xy": np.array(object_xy), "object_yaw": 0.0, "pusher_xy": np.array(pusher_xy)}}


def test_the_adapter_is_a_pushing_environment_that_passes_gymnasiums_checker():
    env = make_environment(TASK)
    assert isinstance(env, GymnasiumPusherEnv) and isinstance(env, PushingEnvironment)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert obs["top_down/rgb"].shape == (72, 96, 3) and obs["top_down/mask"].sum() > 0
    assert np.array_equal(info["object_quaternion"], [1.0, 0.0, 0.0, 0.0]) and info["object_yaw"] == 0.0
    assert info["object_position"][2] == pytest.approx(TASK.cylinder_size[1] / 2, abs=1e-6)  # on the table top
    assert (info["mug_instance"], info["mug_material"]) == (-1, -1) and np.array_equal(info["mug_rgba"], np.ones(4))
    for pose, expected in zip(env.camera_poses(), (obs["top_down/pose"], obs["angled/pose"]), strict=True):
        np.testing.assert_allclose(pose, expected, atol=1e-6)
    env.close()


@pytest.mark.parametrize("velocity", [(0.1, 0.0), (0.0, -0.2), (-0.14, 0.14)])
def test_the_tip_follows_a_commanded_xy_velocity(velocity):
    """After the first 0.1 s step (the arm accelerating from rest) each step's mean tip velocity is within 10% of
    the command (measured: 2-9%), and the tip holds its height within 3 mm."""
    env = GymnasiumPusherEnv(TASK, images=False)
    velocity = np.array(velocity)
    obs, _ = env.reset(options=start((-0.12, -0.12), -0.4 * velocity))  # the cylinder away from the fork
    positions = [obs["pusher_position"]]
    for _ in range(6):
        obs, _, terminated, _, _ = env.step(velocity)
        assert not terminated
        positions.append(obs["pusher_position"])
        assert abs(env.tip_position()[2] - TIP_HEIGHT) < 3e-3
    step_velocity = np.diff(np.array(positions, dtype=float), axis=0) / TASK.control_dt
    errors = np.linalg.norm(step_velocity[1:] - velocity, axis=1)
    assert errors.max() < 0.1 * np.linalg.norm(velocity), step_velocity
    np.testing.assert_allclose(obs["pusher_velocity"], velocity, atol=0.1 * np.linalg.norm(velocity))


def test_a_push_moves_the_cylinder_and_sim_state_replays_bit_exactly():
    env = GymnasiumPusherEnv(TASK)
    _, info = env.reset(options=start((0.03, 0.0), (-0.07, 0.0)))
    saved, object_start = info["sim_state"], info["object_position"]
    actions = [np.array([0.2, 0.0])] * 4
    first = [env.step(a) for a in actions]
    assert first[-1][4]["object_position"][0] - object_start[0] > 0.02  # the fork pushed the cylinder along +x
    _, info = env.reset(options={"sim_state": saved})
    np.testing.assert_array_equal(info["object_position"], object_start)
    for action, (obs_1, _, _, _, info_1) in zip(actions, first, strict=True):
        obs_2, _, _, _, info_2 = env.step(action)
        for key in obs_1:
            np.testing.assert_array_equal(obs_1[key], obs_2[key], err_msg=key)
        np.testing.assert_array_equal(info_1["sim_state"], info_2["sim_state"])
    env.close()


def test_masked_depth_unprojects_onto_the_cylinder_surface():
    """Masked pixels lie on the cylinder's side or top within a pixel's size at 96x72 (~1 cm); 90% of them (pixels on
    the silhouette mix depths)."""
    tolerance = 0.01
    env = GymnasiumPusherEnv(TASK)
    obs, info = env.reset(seed=5)
    radius, height = TASK.cylinder_size
    centre = info["object_position"]
    for camera in TASK.camera_names:
        mask = obs[f"{camera}/mask"].astype(bool)
        assert mask.sum() >= 10, camera
        uv = pixel_grid(TASK.height, TASK.width)[torch.from_numpy(mask)]
        depth = torch.from_numpy(obs[f"{camera}/depth"][mask])
        points = unproject_to_world(
            uv, depth, torch.from_numpy(obs[f"{camera}/intrinsics"]), torch.from_numpy(obs[f"{camera}/pose"])
        ).numpy()
        local = points - centre
        radial, z = np.linalg.norm(local[:, :2], axis=1), local[:, 2]
        on_side, on_top = np.abs(radial - radius) < tolerance, np.abs(z - height / 2) < tolerance
        inside = (radial < radius + tolerance) & (np.abs(z) < height / 2 + tolerance)
        assert np.mean(inside & (on_side | on_top)) > 0.9, camera
    env.close()


@pytest.mark.slow
def test_collect_train_dynamics_and_evaluate_run_on_pusher_through_the_command_line(tmp_path):
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    assert main(["collect", "--task", "gymnasium_pusher", "--out", str(data), "--episodes", "3", "--steps", "6",
                 "--width", "96", "--height", "72", "--workers", "1", "--filter.min-steps", "3",
                 "--no-progress"]) == 0  # fmt: skip
    assert main(["train-dynamics", "--dataset", str(data), "--out", str(run), "--latent", "gt3d", "--epochs", "2",
                 "--horizon", "3", "--hidden", "32", "32", "--no-progress"]) == 0  # fmt: skip
    assert (run / "config.json").exists()
    goals = ["--goals.object-xy-range", "0.04", "--goals.push-steps", "4", "--goals.min-translation", "0.01"]
    assert main(["evaluate", "--run", str(run), "--out", str(out), "--episodes", "2", "--workers", "1",
                 "--videos", "0", *goals, *FAST_MPC, "--no-progress"]) == 0  # fmt: skip
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "gymnasium_pusher" and results["latent"] == "gt3d"
    assert len(results["episodes"]) == 2
    for row in results["episodes"]:
        assert np.isfinite(row["final_position_error_cm"]) and row["final_angle_error_deg"] == pytest.approx(0.0)
    assert (out / "results.md").exists()

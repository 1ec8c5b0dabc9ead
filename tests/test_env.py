"""The simulated pushing tasks: API conformance, determinism, geometry, physics."""

from __future__ import annotations

import math
from dataclasses import replace

import gymnasium as gym
import mujoco
import numpy as np
import pytest
import trimesh
from gymnasium.utils.env_checker import check_env
from scipy import ndimage

import keydyn.sim  # noqa: F401  (registers the environments)
from keydyn.sim.config import SUGAR_BOX_SIZE, TASK_NAMES, TaskConfig, task_config
from keydyn.sim.env import PushingEnv, mug_instances, mug_shape, object_yaw
from keydyn.sim.environment import PushingEnvironment, make_environment
from keydyn.sim.meshes import mug_mesh
from keydyn.sim.textures import mug_pattern

SMALL = {"width": 96, "height": 72}


@pytest.mark.parametrize("task", TASK_NAMES)
def test_gymnasium_env_checker_passes(task):
    env = gym.make(f"keydyn/{task}-v0", **SMALL)
    check_env(env.unwrapped, skip_render_check=False)
    env.close()


def test_starts_with_the_pusher_off_the_table_are_in_the_observation_space():
    """The pusher starts up to 0.16 m behind an object that may be 0.25 m from the centre: beyond the 0.4 m table
    half-width for these seeds (the env checker's unseeded reset found them)."""
    env = PushingEnv("top_down", images=False)
    for seed in (93, 106, 126, 158):
        observation, _ = env.reset(seed=seed)
        assert np.abs(observation["pusher_position"]).max() > task_config("top_down").table_size / 2
        assert observation in env.observation_space
    env.close()


@pytest.mark.parametrize("task", ["top_down", "mugs"])
def test_same_seed_gives_bit_identical_observations(task):
    def rollout():
        env = PushingEnv(task, **SMALL)
        obs, info = env.reset(seed=123)
        frames = [(obs, info["sim_state"])]
        for t in range(4):
            obs, _, _, _, info = env.step(np.array([0.2 * math.cos(t), 0.2 * math.sin(t)]))
            frames.append((obs, info["sim_state"]))
        env.close()
        return frames

    first, second = rollout(), rollout()
    for (obs_a, state_a), (obs_b, state_b) in zip(first, second, strict=True):
        assert np.array_equal(state_a, state_b)
        for key in obs_a:
            assert np.array_equal(obs_a[key], obs_b[key]), key
    other = PushingEnv(task, **SMALL)
    obs_c, _ = other.reset(seed=124)
    assert not np.array_equal(
        obs_c[f"{other.task.cameras[0].name}/rgb"], first[0][0][f"{other.task.cameras[0].name}/rgb"]
    )
    other.close()


def _unproject(depth: np.ndarray, mask: np.ndarray, K: np.ndarray, T_world_camera: np.ndarray) -> np.ndarray:
    v, u = np.nonzero(mask)
    z = depth[v, u].astype(float)
    x = (u - K[0, 2]) * z / K[0, 0]
    y = (v - K[1, 2]) * z / K[1, 1]
    points_camera = np.stack([x, y, z, np.ones_like(z)], axis=1)
    return (T_world_camera.astype(float) @ points_camera.T).T[:, :3]


def _silhouette(mesh: trimesh.Trimesh, K: np.ndarray, T_world_camera: np.ndarray, pose: np.ndarray, size) -> np.ndarray:
    """(H, W) bool for an image of `size` (H, W): pixels whose ray through the pixel centre hits `mesh` (body frame)
    at the 4x4 body `pose`."""
    height, width = size
    v, u = np.mgrid[0:height, 0:width]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones(u.shape)], axis=-1).reshape(-1, 3)
    rotation = pose[:3, :3].T @ T_world_camera[:3, :3]  # camera -> body
    origin = pose[:3, :3].T @ (T_world_camera[:3, 3] - pose[:3, 3])
    hits = mesh.ray.intersects_any(np.broadcast_to(origin, rays.shape), rays @ rotation.T)
    return hits.reshape(height, width)


@pytest.mark.parametrize("task", TASK_NAMES)
def test_masked_depth_unprojects_onto_the_object_surface(task):
    """Every pixel of the eroded mask unprojects to within 0.5 mm of the object's surface at its true pose, and the
    mask is the object's silhouette (ray cast through the pixel centres)."""
    env = PushingEnv(task)  # default resolution
    obs, info = env.reset(seed=5)
    obs, _, _, _, info = env.step(np.zeros(2))
    rotation = np.empty(9)
    mujoco.mju_quat2Mat(rotation, info["object_quaternion"])
    pose = np.eye(4)
    pose[:3, :3], pose[:3, 3] = rotation.reshape(3, 3), info["object_position"]
    if task == "mugs":
        mesh = mug_mesh(mug_shape(info["mug_instance"]), mug_pattern(8, 8, 0))
        surface = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    else:
        surface = trimesh.creation.box(extents=SUGAR_BOX_SIZE)
    for camera in env.task.camera_names:
        mask = obs[f"{camera}/mask"].astype(bool)
        assert mask.sum() > 50, f"{task}/{camera}: object barely visible"
        K, T_world_camera = obs[f"{camera}/intrinsics"].astype(float), obs[f"{camera}/pose"].astype(float)
        inner = ndimage.binary_erosion(mask)  # pixels whose neighbours are all the object's
        points = _unproject(obs[f"{camera}/depth"], inner, K, T_world_camera)
        body = (points - pose[:3, 3]) @ pose[:3, :3]  # world -> object body frame
        _, distance, _ = trimesh.proximity.closest_point(surface, body)
        assert distance.max() < 5e-4, f"{task}/{camera}: {distance.max() * 1e3:.2f} mm off the surface"
        silhouette = _silhouette(surface, K, T_world_camera, pose, mask.shape)
        overlap = (mask & silhouette).sum() / (mask | silhouette).sum()
        assert overlap > 0.98, f"{task}/{camera}: mask and silhouette overlap {overlap:.3f} (intersection over union)"
    env.close()


def _push_box(lateral_offset: float) -> float:
    """Push a box lying at the origin (long side along y) in +x at a lateral offset; returns its yaw change."""
    env = PushingEnv("top_down", **SMALL)
    start = {"object_xy": [0.0, 0.0], "object_yaw": 0.0, "pusher_xy": [-0.08, lateral_offset]}
    _, info = env.reset(seed=0, options={"start": start})
    yaw0 = info["object_yaw"]
    for _ in range(8):
        _, _, _, _, info = env.step(np.array([0.15, 0.0]))
    env.close()
    return float(np.angle(np.exp(1j * (info["object_yaw"] - yaw0))))


def test_off_centre_push_turns_the_box_the_right_way():
    # A push in +x above the centre (y > 0) has torque r x F = -y F about z: the box turns clockwise.
    assert _push_box(+0.05) < -math.radians(5)
    assert _push_box(-0.05) > math.radians(5)
    assert abs(_push_box(0.0)) < math.radians(2)


def test_box_left_alone_stays_put():
    env = PushingEnv("top_down", **SMALL)
    _, info = env.reset(seed=3)
    position0, yaw0 = info["object_position"], info["object_yaw"]
    for _ in range(20):
        _, _, terminated, _, info = env.step(np.zeros(2))
    env.close()
    assert not terminated
    assert np.linalg.norm(info["object_position"] - position0) < 1e-3
    assert abs(info["object_yaw"] - yaw0) < math.radians(0.1)


def test_pusher_tracks_the_commanded_velocity():
    env = PushingEnv("top_down", **SMALL)
    start = {"object_xy": [0.2, 0.2], "object_yaw": 0.0, "pusher_xy": [-0.2, 0.0]}
    obs, _ = env.reset(seed=0, options={"start": start})
    command = np.array([0.2, -0.1])
    positions = [obs["pusher_position"]]
    for _ in range(4):
        obs, *_ = env.step(command)
        positions.append(obs["pusher_position"])
        np.testing.assert_allclose(obs["pusher_velocity"], command, atol=2e-3)
    steps = np.diff(np.asarray(positions, dtype=float), axis=0)[1:]  # after the first step's spin-up
    np.testing.assert_allclose(steps, np.tile(command * env.task.control_dt, (3, 1)), atol=2e-4)
    obs, *_ = env.step(np.array([5.0, -5.0]))  # clipped to the speed limit
    np.testing.assert_allclose(obs["pusher_velocity"], [0.3, -0.3], atol=3e-3)
    env.close()


def test_sim_state_replays_a_frame_exactly():
    env = PushingEnv("top_down", **SMALL)
    env.reset(seed=11)
    for _ in range(3):
        env.step(np.array([0.2, 0.05]))
    saved = env.sim_state()
    obs_a, *_ = env.step(np.array([0.1, 0.2]))
    state_a = env.sim_state()
    env.reset(seed=99)
    env.set_sim_state(saved)
    obs_b, *_ = env.step(np.array([0.1, 0.2]))
    assert np.array_equal(state_a, env.sim_state())
    assert np.array_equal(obs_a["top_down/rgb"], obs_b["top_down/rgb"])
    env.close()


def test_leaving_the_table_terminates_the_episode():
    env = PushingEnv("top_down", **SMALL)
    start = {"object_xy": [0.25, 0.0], "object_yaw": 0.0, "pusher_xy": [0.12, 0.0]}
    env.reset(seed=0, options={"start": start})
    terminated, info = False, {}
    for _ in range(20):
        _, _, terminated, _, info = env.step(np.array([0.3, 0.0]))
        if terminated:
            break
    env.close()
    assert terminated and info["termination"] == "out_of_bounds"


def test_occlusions_box_lies_on_its_side_and_survives_pushes():
    env = PushingEnv("occlusions", **SMALL)
    start = {"object_xy": [0.0, 0.0], "object_yaw": 0.0, "pusher_xy": [-0.06, 0.03]}
    _, info = env.reset(seed=0, options={"start": start})
    assert info["object_position"][2] == pytest.approx(SUGAR_BOX_SIZE[0] / 2, abs=1e-3)
    moved = 0.0
    for _ in range(10):
        _, _, terminated, _, info = env.step(np.array([0.2, 0.0]))
        assert not terminated, info.get("termination")
        moved = info["object_position"][0]
    env.close()
    assert moved > 0.05


def test_mug_splits_are_disjoint_and_appearance_is_randomised():
    train, test = task_config("mugs"), task_config("mugs", mug_split="test")
    assert len(mug_instances(train)) >= 10 and len(mug_instances(test)) >= 5
    assert not set(mug_instances(train)) & set(mug_instances(test))
    shapes = [mug_shape(i) for i in mug_instances(train) + mug_instances(test)]
    assert len(set(shapes)) == 15
    assert np.ptp([s.radius for s in shapes]) > 0.005 and np.ptp([s.height for s in shapes]) > 0.01
    env = PushingEnv("mugs", **SMALL)
    seen = [env.reset(seed=s)[1] for s in range(6)]
    assert len({i["mug_instance"] for i in seen}) > 1
    assert len({tuple(np.round(i["mug_rgba"], 4)) for i in seen}) == 6
    with pytest.raises(ValueError, match="not in the 'train' split"):
        env.reset(seed=0, options={"mug_instance": 12})
    env.close()


def _rotation_deg(quaternion_a: np.ndarray, quaternion_b: np.ndarray) -> float:
    """Angle (degrees) of the rotation between two orientations."""
    a, b = np.empty(9), np.empty(9)
    mujoco.mju_quat2Mat(a, quaternion_a)
    mujoco.mju_quat2Mat(b, quaternion_b)
    cosine = (np.trace(a.reshape(3, 3).T @ b.reshape(3, 3)) - 1) / 2
    return math.degrees(math.acos(np.clip(cosine, -1.0, 1.0)))


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_mug_on_its_side_rests_against_its_handle(split):
    """Every mug lies on its side with its axis level, the body and the handle's bar on the table, and stays put."""
    env = PushingEnv("mugs", mug_split=split, **SMALL)
    for instance in mug_instances(env.task):
        start = {"object_xy": [0.05, -0.05], "object_yaw": 0.7, "pusher_xy": [-0.3, 0.0]}
        _, first = env.reset(seed=0, options={"mug_instance": instance, "start": start})
        shape = mug_shape(instance)
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, first["object_quaternion"])
        handle, side, axis = rotation.reshape(3, 3).T  # body x (the handle's direction), y, z (the mug's axis)
        assert abs(axis[2]) < 1e-3 and first["object_position"][2] == pytest.approx(shape.radius, abs=5e-4)
        np.testing.assert_allclose(first["object_centre_offset"], [0.0, 0.0, shape.height / 2])  # its middle
        reach = shape.radius + shape.handle_radius + shape.handle_thickness
        corners = [(reach, sign * shape.handle_thickness) for sign in (-1, 1)]  # the bar's outer edges
        lowest = min(first["object_position"][2] + x * handle[2] + y * side[2] for x, y in corners)
        assert lowest == pytest.approx(0.0, abs=5e-4)  # the handle's bar is on the table
        assert first["object_yaw"] == pytest.approx(0.7, abs=1e-6)
        for _ in range(20):  # 2 s untouched
            _, _, terminated, _, info = env.step(np.zeros(2))
            assert not terminated
        assert np.linalg.norm(info["object_position"] - first["object_position"]) < 1e-4
        assert _rotation_deg(first["object_quaternion"], info["object_quaternion"]) < 0.1
    env.close()


@pytest.mark.parametrize("offset", [-0.02, 0.02])
def test_an_off_centre_push_turns_a_mug_on_its_side_the_right_way(offset):
    """Pushed along its axis (+y) left of its middle the mug turns clockwise, right of it anticlockwise; it slides
    and turns without tipping onto its base or rim."""
    env = PushingEnv("mugs", **SMALL)
    start = {"object_xy": [0.0, 0.0], "object_yaw": 0.0, "pusher_xy": [offset, -0.08]}  # the axis lies along +y
    _, first = env.reset(seed=0, options={"mug_instance": 0, "start": start})
    for _ in range(8):
        _, _, terminated, _, info = env.step(np.array([0.0, 0.15]))
        assert not terminated, info.get("termination")
    env.close()
    turned = math.degrees(np.angle(np.exp(1j * (info["object_yaw"] - first["object_yaw"]))))
    assert info["object_position"][1] - first["object_position"][1] > 0.03
    assert 8 < math.copysign(1, offset) * turned < 60


def test_object_yaw_wraps_and_matches_placement():
    env = PushingEnv("top_down", **SMALL)
    for yaw in (0.3, 3.0, -2.5):
        _, info = env.reset(seed=0, options={"start": {"object_xy": [0, 0], "object_yaw": yaw, "pusher_xy": [-0.2, 0]}})
        assert object_yaw(info["object_quaternion"]) == pytest.approx(yaw, abs=1e-3)
    env.close()


def test_bad_arguments_are_rejected_with_a_fix():
    with pytest.raises(ValueError, match="unknown task 'sideways'"):
        task_config("sideways")
    with pytest.raises(ValueError, match="unknown task option"):
        task_config("top_down", resolution=3)
    env = PushingEnv("top_down", **SMALL)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"finite \(2,\) pusher velocity"):
        env.step(np.array([np.nan, 0.0]))
    env.close()


class _MirroredPushingEnv(PushingEnv):
    """A stand-in for another environment: keydyn's scene with the pusher commands mirrored in x."""

    def step(self, action):
        return super().step(np.asarray(action) * np.array([-1.0, 1.0]))


def mirrored_environment(task, images: bool) -> _MirroredPushingEnv:
    """An environment factory a task names by reference ("tests.test_env:mirrored_environment")."""
    return _MirroredPushingEnv(task, images=images)


@pytest.fixture
def registries(monkeypatch):
    """The environment and task registries, restored after the test."""
    from keydyn.sim import config, environment

    monkeypatch.setattr(environment, "_ENVIRONMENTS", dict(environment._ENVIRONMENTS))
    monkeypatch.setattr(config, "_TASKS", dict(config._TASKS))


def test_a_registered_environment_and_task_are_what_collection_runs(tmp_path, registries):
    """A task that names another registered environment is collected in it (the mirrored pushes move the pusher
    the other way), and the store records the task with its environment."""
    from keydyn.data.collect import collect
    from keydyn.sim import environment_names, register_environment, register_task, task_names

    from .conftest import small_collect_config

    register_environment("mirrored", mirrored_environment)
    register_task(replace(task_config("top_down"), name="top_down_mirrored", environment="mirrored"))
    assert "mirrored" in environment_names() and "top_down_mirrored" in task_names()
    made = make_environment(task_config("top_down_mirrored"))
    assert isinstance(made, PushingEnvironment) and isinstance(made, _MirroredPushingEnv)
    made.close()
    plain = collect(small_collect_config(tmp_path / "plain", episodes=1))
    mirrored = collect(small_collect_config(tmp_path / "mirrored", episodes=1, task="top_down_mirrored"))
    assert TaskConfig.from_dict(mirrored.attrs["task_config"]).environment == "mirrored"
    for store, sign in ((plain, 1.0), (mirrored, -1.0)):  # the pusher moves as the environment's step makes it
        episode = store.episode(0)
        action_x, velocity_x = episode["action"][:-1, 0], episode["pusher_velocity"][1:, 0]
        firm = np.abs(action_x) > 0.05
        assert firm.sum() >= 3
        assert np.all(np.sign(velocity_x[firm]) == sign * np.sign(action_x[firm]))


def test_a_task_registered_by_a_script_is_collected_by_spawned_workers(tmp_path, registries):
    """Spawned workers know only the built-in tasks: they are given the task itself, so that two workers collect
    what one does."""
    from keydyn.data.collect import collect
    from keydyn.sim import register_task

    from .conftest import small_collect_config

    register_task(replace(task_config("top_down"), name="top_down_renamed"))
    one = collect(small_collect_config(tmp_path / "one", episodes=2, task="top_down_renamed"))
    two = collect(small_collect_config(tmp_path / "two", episodes=2, task="top_down_renamed", workers=2))
    assert two.attrs["task"] == "top_down_renamed"
    for name in ("action", "object_position", "top_down/rgb"):
        assert np.array_equal(one.frames(name), two.frames(name)), name


def test_an_unregistered_environment_is_named_with_the_known_ones(registries):
    task = replace(task_config("top_down"), environment="no_such_robot")
    with pytest.raises(ValueError, match=r"'no_such_robot', which is not registered \(known: .*keydyn"):
        make_environment(task)
    imported = make_environment(replace(task, environment="tests.test_env:mirrored_environment"))
    assert isinstance(imported, _MirroredPushingEnv)  # a worker that never imported the module finds it
    imported.close()
    with pytest.raises(ValueError, match=r"cannot import 'nothing' from module 'tests\.test_env'"):
        make_environment(replace(task, environment="tests.test_env:nothing"))

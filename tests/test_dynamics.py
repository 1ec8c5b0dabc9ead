"""GT 3D latents, training windows, SE(2) augmentation, the dynamics model and its (resumable) training."""

from __future__ import annotations

import json
import math
import shutil

import mujoco
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from keydyn.data.split import split_episodes
from keydyn.data.store import EpisodeStore
from keydyn.dynamics import DynamicsMLP, PlanarMotion, make_windows, transform_latents
from keydyn.dynamics.augment import augment_windows, rotate_vectors_xy
from keydyn.dynamics.train import (
    RESUMABLE_FIELDS,
    TrainDynamicsConfig,
    load_dynamics,
    train_dynamics,
    unread_settings,
    upgrade_stored_config,
)
from keydyn.dynamics.windows import window_starts
from keydyn.latents import KeypointConfig, LatentLayout, get_latent
from keydyn.latents.gt3d import GroundTruthKeypoints, box_top_corners, ground_truth_latents, rotate_by_quaternions
from keydyn.runs import prepare_run_dir
from keydyn.sim.config import SUGAR_BOX_SIZE, task_config
from keydyn.sim.env import PushingEnv, quaternion_multiply, yaw_quaternion


def _random_quaternion(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    return q / np.linalg.norm(q)


# -- latents --------------------------------------------------------------------------------------------
def test_gt3d_box_keypoints_are_the_top_corners_at_identity_pose():
    keypoints = GroundTruthKeypoints.for_task(task_config("top_down"))
    world = keypoints.world_keypoints(np.zeros(3), np.array([1.0, 0, 0, 0]))
    hx, hy, hz = (s / 2 for s in SUGAR_BOX_SIZE)
    expected = {(sx * hx, sy * hy, hz) for sx in (1, -1) for sy in (1, -1)}
    assert {tuple(np.round(p, 9)) for p in world} == {tuple(np.round(p, 9)) for p in expected}


def test_gt3d_keypoints_move_rigidly_with_the_pose():
    rng = np.random.default_rng(0)
    keypoints = GroundTruthKeypoints.for_task(task_config("top_down"))
    positions = rng.normal(size=(5, 3))
    quaternions = np.stack([_random_quaternion(rng) for _ in range(5)])
    world = keypoints.world_keypoints(positions, quaternions)  # (5, 4, 3), vectorised
    body = keypoints.body_points
    body_distances = np.linalg.norm(body[:, None] - body[None], axis=-1)
    for i in range(5):
        distances = np.linalg.norm(world[i][:, None] - world[i][None], axis=-1)
        np.testing.assert_allclose(distances, body_distances, atol=1e-12)
        rotation = np.empty(9)
        mujoco.mju_quat2Mat(rotation, quaternions[i])
        np.testing.assert_allclose(world[i], body @ rotation.reshape(3, 3).T + positions[i], atol=1e-12)
    # A pure yaw keeps the corners on the top face.
    yawed = keypoints.world_keypoints(np.zeros(3), yaw_quaternion(0.8))
    np.testing.assert_allclose(yawed[:, 2], SUGAR_BOX_SIZE[2] / 2, atol=1e-12)


def test_on_side_box_keypoints_are_on_the_face_that_is_up():
    keypoints = GroundTruthKeypoints.for_task(task_config("occlusions"))
    resting = np.array([math.cos(math.pi / 4), 0.0, math.sin(math.pi / 4), 0.0])  # the env's on-side rest
    world = keypoints.world_keypoints(np.zeros(3), quaternion_multiply(yaw_quaternion(0.4), resting))
    np.testing.assert_allclose(world[:, 2], SUGAR_BOX_SIZE[0] / 2, atol=1e-9)
    assert np.allclose(box_top_corners((2, 4, 6), 2, 1.0)[:, 2], 3)


def test_latents_of_a_store_match_the_per_frame_computation(small_dataset):
    store = EpisodeStore.open(small_dataset)
    latents = ground_truth_latents(store)
    assert latents.shape == (store.num_frames, 14) and latents.dtype == np.float32
    keypoints = GroundTruthKeypoints.for_task(task_config("top_down"))
    frame = 5
    info = {
        "object_position": store.frames("object_position", frame, frame + 1)[0],
        "object_quaternion": store.frames("object_quaternion", frame, frame + 1)[0],
    }
    single = keypoints.latent_from_info(info, store.frames("pusher_position", frame, frame + 1)[0])
    np.testing.assert_allclose(latents[frame], single, atol=1e-7)
    layout = LatentLayout.from_dim(14)
    np.testing.assert_allclose(layout.pusher(latents), store.frames("pusher_position"), atol=1e-7)


# -- windows --------------------------------------------------------------------------------------------
def test_windows_never_cross_episode_boundaries():
    ends = np.array([5, 12, 14, 30])
    starts = window_starts(ends, np.array([0, 1, 2, 3]), length=4)
    episode_of = np.searchsorted(ends, np.arange(30), side="right")
    for s in starts:
        assert episode_of[s] == episode_of[s + 3]
    # every valid window is present: 2 + 4 + 0 + 13
    assert len(starts) == 19
    latents = np.arange(30, dtype=np.float32)[:, None].repeat(14, axis=1)
    actions = np.arange(30, dtype=np.float32)[:, None].repeat(2, axis=1)
    windows = make_windows(latents, actions, ends, np.array([1, 3]), history=2, horizon=3)
    batch_latents, batch_actions = windows.batch(torch.arange(len(windows)))
    assert batch_latents.shape == (len(windows), 5, 14) and batch_actions.shape == (len(windows), 4, 2)
    frames = batch_latents[:, :, 0].long()
    assert torch.all(frames[:, 1:] - frames[:, :-1] == 1)
    assert torch.all(torch.as_tensor(episode_of)[frames[:, 0]] == torch.as_tensor(episode_of)[frames[:, -1]])
    assert torch.all(batch_actions[:, :, 0].long() == frames[:, :-1])


def test_a_frame_without_a_finite_latent_is_in_no_window():
    ends = np.array([5, 12, 14, 30])
    latents = np.arange(30, dtype=np.float32)[:, None].repeat(14, axis=1)
    latents[20, 3] = np.nan  # a frame whose keypoints could not be lifted to 3D
    actions = np.zeros((30, 2), np.float32)
    every = make_windows(np.nan_to_num(latents), actions, ends, np.arange(4), history=1, horizon=3)
    windows = make_windows(latents, actions, ends, np.arange(4), history=1, horizon=3)
    frames = windows.frames(torch.arange(len(windows)))
    assert not (frames == 20).any() and len(every) - len(windows) == 4  # the windows starting at 17 .. 20
    assert torch.isfinite(windows.batch(torch.arange(len(windows)))[0]).all()


def test_split_is_by_episode_and_seeded():
    train, val = split_episodes(10, 0.3, seed=4)
    assert len(val) == 3 and len(train) == 7 and not set(train) & set(val)
    again = split_episodes(10, 0.3, seed=4)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    with pytest.raises(ValueError, match="too few"):
        split_episodes(1, 0.5, seed=0)


# -- augmentation ---------------------------------------------------------------------------------------
def _scene_latent(env: PushingEnv, keypoints: GroundTruthKeypoints, obs, info) -> np.ndarray:
    return keypoints.latent_from_info(info, obs["pusher_position"])


def test_augmentation_commutes_with_the_simulated_dynamics():
    env = PushingEnv("top_down", width=64, height=48)
    keypoints = GroundTruthKeypoints.for_task(env.task)
    yaw = 0.3
    heading = np.array([math.cos(yaw), math.sin(yaw)])
    object_xy = np.array([0.02, -0.01])
    start = {"object_xy": object_xy, "object_yaw": yaw, "pusher_xy": object_xy - 0.06 * heading}
    action = 0.2 * np.array([math.cos(yaw + 0.2), math.sin(yaw + 0.2)])

    def simulate(start, action):
        obs, info = env.reset(options={"start": start})
        latents = [_scene_latent(env, keypoints, obs, info)]
        for _ in range(3):
            obs, _, terminated, _, info = env.step(action)
            assert not terminated
            latents.append(_scene_latent(env, keypoints, obs, info))
        return np.stack(latents)

    original = simulate(start, action)
    assert np.linalg.norm(original[-1, :2] - original[0, :2]) > 0.02  # the object was pushed

    theta, translation = 0.9, np.array([0.06, -0.04])
    motion = PlanarMotion(torch.tensor([theta], dtype=torch.float64), torch.from_numpy(translation[None]))
    rotation = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    moved_start = {
        "object_xy": rotation @ start["object_xy"] + translation,
        "object_yaw": yaw + theta,
        "pusher_xy": rotation @ start["pusher_xy"] + translation,
    }
    moved_action = rotate_vectors_xy(torch.tensor(action)[None], motion)[0].numpy()
    np.testing.assert_allclose(moved_action, rotation @ action, atol=1e-12)
    moved = simulate(moved_start, moved_action)
    expected = transform_latents(torch.tensor(original[None], dtype=torch.float64), motion)[0].numpy()
    np.testing.assert_allclose(moved, expected, atol=3e-3)
    env.close()


def _planar_motion_of(before: np.ndarray, after: np.ndarray) -> tuple[float, np.ndarray]:
    """(yaw radians, (2,) translation metres) of the planar rigid motion taking (P, 2) points `before` onto
    `after`, by least squares (2D Procrustes)."""
    centre_before, centre_after = before.mean(0), after.mean(0)
    p, q = before - centre_before, after - centre_after
    yaw = math.atan2(np.sum(p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]), np.sum(p * q))
    rotation = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    return yaw, centre_after - rotation @ centre_before


def test_augmentation_is_a_rigid_motion_and_seeded():
    """Each window's keypoints move by one planar rigid motion (recovered here from them); its pusher moves by the
    same motion and its actions turn by the same yaw."""
    generator = torch.Generator().manual_seed(0)
    latents = 0.2 * torch.randn(8, 5, 14, dtype=torch.float32)
    actions = 0.2 * torch.randn(8, 4, 2)
    moved, moved_actions = augment_windows(latents, actions, generator)
    again = augment_windows(latents, actions, torch.Generator().manual_seed(0))
    assert torch.equal(moved, again[0]) and torch.equal(moved_actions, again[1])
    other = augment_windows(latents, actions, torch.Generator().manual_seed(1))
    assert not torch.equal(moved, other[0])
    points = latents[..., :12].reshape(8, 5, 4, 3).double().numpy()
    moved_points = moved[..., :12].reshape(8, 5, 4, 3).double().numpy()
    np.testing.assert_array_equal(moved_points[..., 2], points[..., 2])  # heights unchanged
    yaws = []
    for window in range(8):
        before, after = points[window, ..., :2].reshape(-1, 2), moved_points[window, ..., :2].reshape(-1, 2)
        yaw, translation = _planar_motion_of(before, after)
        yaws.append(yaw)
        rotation = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
        np.testing.assert_allclose(after, before @ rotation.T + translation, atol=1e-5)  # a rigid motion
        pusher = latents[window, :, 12:].double().numpy()
        np.testing.assert_allclose(moved[window, :, 12:].numpy(), pusher @ rotation.T + translation, atol=1e-5)
        turned = actions[window].double().numpy() @ rotation.T  # velocities turn, they do not translate
        np.testing.assert_allclose(moved_actions[window].numpy(), turned, atol=1e-5)
    assert max(abs(yaw) for yaw in yaws) > 0.5  # some windows are really turned


# -- model ----------------------------------------------------------------------------------------------
def test_model_fits_known_linear_latent_dynamics():
    torch.manual_seed(0)
    dim, history = 14, 2
    generator = torch.Generator().manual_seed(1)
    A = 0.05 * torch.randn(dim, dim, generator=generator)
    B = 0.1 * torch.randn(dim, 2, generator=generator)

    def true_step(z, a):
        return z + z @ A.T * 0.1 + a @ B.T

    model = DynamicsMLP(dim, history=1, hidden=(64, 64))
    z = torch.randn(4096, dim, generator=generator)
    a = torch.randn(4096, 2, generator=generator)
    target = true_step(z, a)
    model.fit_normalizer(torch.stack([z, target], 1), a[:, None])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        index = torch.randint(0, 4096, (256,), generator=generator)
        loss = torch.mean((model(z[index, None], a[index, None]) - target[index]) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        test_z, test_a = torch.randn(512, dim, generator=generator), torch.randn(512, 2, generator=generator)
        error = torch.mean((model(test_z[:, None], test_a[:, None]) - true_step(test_z, test_a)) ** 2)
        change = torch.mean((true_step(test_z, test_a) - test_z) ** 2)
    assert error < 0.02 * change

    # rollout and the Markov step agree for history 2
    model2 = DynamicsMLP(dim, history=history, hidden=(16,))
    initial, actions = torch.randn(3, history, dim), torch.randn(3, 4 + history - 1, 2)
    with torch.no_grad():
        rolled = model2.rollout(initial, actions)
        state = model2.pack_state(initial, actions[:, : history - 1])
        for h in range(4):
            state = model2.step(state, actions[:, h + history - 1])
            assert torch.allclose(model2.current_latent(state), rolled[:, h], atol=1e-6)
    assert rolled.shape == (3, 4, dim) and state.shape == (3, model2.state_dim)


# -- training -------------------------------------------------------------------------------------------
def _config(dataset, out, **overrides) -> TrainDynamicsConfig:
    values = {
        "dataset": dataset,
        "out": out,
        "horizon": 4,
        "hidden": (64, 64),
        "epochs": 4,
        "batch_size": 8,
        "lr": 1e-3,
        "val_fraction": 0.34,
        "seed": 3,
        "progress": False,
    }
    values.update(overrides)
    return TrainDynamicsConfig(**values)


def test_rollout_loss_falls_on_real_data(small_dataset, tmp_path):
    run = train_dynamics(_config(small_dataset, tmp_path / "run", epochs=10, batch_size=4, hidden=(256, 256)))
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    losses = [r["train_loss"] for r in rows]
    assert sum(losses[-3:]) / 3 < 0.6 * losses[0]
    assert all(math.isfinite(r["val_final_step_error_m"]) for r in rows)
    saved = json.loads((run / "config.json").read_text())
    assert saved["horizon"] == 4 and saved["device"] == "cpu"
    best = json.loads((run / "best.json").read_text())
    assert best["val_final_step_error_m"] == min(r["val_final_step_error_m"] for r in rows)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(small_dataset, tmp_path):
    whole = train_dynamics(_config(small_dataset, tmp_path / "whole"))
    part = train_dynamics(_config(small_dataset, tmp_path / "part", epochs=2))
    assert json.loads((part / "last.json").read_text())["epoch"] == 2
    train_dynamics(_config(small_dataset, part, epochs=4, resume=True))
    a, b = load_file(str(whole / "last.safetensors")), load_file(str(part / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    assert json.loads((whole / "best.json").read_text()) == json.loads((part / "best.json").read_text())
    assert json.loads((part / "config.json").read_text())["epochs"] == 4  # the resumption's own, rewritten
    stored = (part / "config.json").read_text()
    train_dynamics(_config(small_dataset, part, epochs=4, resume=True))  # finished: nothing to train
    with pytest.raises(ValueError, match="has trained 4 epochs, more than the 3 asked for"):
        train_dynamics(_config(small_dataset, part, epochs=3, resume=True))  # not passed off as a 3-epoch run
    assert (part / "config.json").read_text() == stored


def test_a_diverging_run_stops_before_a_checkpoint_takes_its_loss_in(small_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"training loss is (nan|inf) at epoch \d: training diverged.*learning rate"):
        train_dynamics(_config(small_dataset, tmp_path / "run", lr=1e30))
    metrics = tmp_path / "run" / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    assert all(math.isfinite(row["train_loss"]) for row in rows)  # every checkpointed epoch trained to a number


@pytest.mark.parametrize("committed", [False, True])
def test_a_kill_inside_a_checkpoint_commit_resumes_to_the_same_result(small_dataset, tmp_path, committed):
    """A kill while epoch 3's checkpoint is written: before last.json commits it (its files stay `.next`, dropped
    on resume, and epoch 3 is trained again) or after (they are moved into place). Both end where an
    uninterrupted run does."""
    whole = train_dynamics(_config(small_dataset, tmp_path / "whole", epochs=3))
    part = train_dynamics(_config(small_dataset, tmp_path / "part", epochs=2))
    shutil.copy(whole / "last.safetensors", part / "last.safetensors.next")
    shutil.copy(whole / "last_optim.pt", part / "last_optim.pt.next")
    if committed:
        shutil.copy(whole / "last.json", part / "last.json")
        shutil.copy(whole / "metrics.jsonl", part / "metrics.jsonl")
    train_dynamics(_config(small_dataset, part, epochs=3, resume=True))
    a, b = load_file(str(whole / "last.safetensors")), load_file(str(part / "last.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    assert not list(part.glob("*.next"))
    # A run whose files were mixed from outside keydyn is refused, not resumed from the wrong weights.
    (part / "last.json").write_text(json.dumps({**json.loads((part / "last.json").read_text()), "epoch": 2}))
    with pytest.raises(ValueError, match=r"last\.safetensors is of epoch 3 but last\.json of 2"):
        train_dynamics(_config(small_dataset, part, epochs=4, resume=True))


def test_a_run_stored_with_keypoints_bf16_resumes_with_that_precision(small_dataset, tmp_path):
    """Runs made before --keypoints.precision stored `keypoints.bf16`: it counts as that precision on resume (the
    check a method that reads the keypoint settings gets)."""
    run = train_dynamics(_config(small_dataset, tmp_path / "old", epochs=1))
    stored = json.loads((run / "config.json").read_text())
    for old_flag, allowed in ((False, True), (True, False)):  # the run's own precision is fp32
        keypoints = {k: v for k, v in stored["keypoints"].items() if k != "precision"}
        (run / "config.json").write_text(json.dumps({**stored, "keypoints": {**keypoints, "bf16": old_flag}}))
        resume = _config(small_dataset, run, epochs=2, resume=True)
        if allowed:
            assert prepare_run_dir(run, resume, RESUMABLE_FIELDS, "last.json", upgrade_stored_config)
        else:
            with pytest.raises(ValueError, match="its keypoints differ"):
                prepare_run_dir(run, resume, RESUMABLE_FIELDS, "last.json", upgrade_stored_config)


def test_a_run_resumes_under_other_settings_only_of_methods_it_is_not(small_dataset, tmp_path):
    """GT 3D reads no keypoint settings: resumed under a recipe with others (`keydyn reproduce` after a task's
    SDS settings changed) it goes on; a setting it reads still has to match."""
    assert {"keypoints", "visual_run", "transporter_run", "autoencoder"} <= set(unread_settings(get_latent("gt3d")))
    assert "keypoints" not in unread_settings(get_latent("sds")) and "visual_run" in unread_settings(
        get_latent("autoencoder")
    )
    run = train_dynamics(_config(small_dataset, tmp_path / "gt3d", epochs=1))
    other_keypoints = KeypointConfig(num_selected=4, min_distance_px=11.0)
    train_dynamics(_config(small_dataset, run, epochs=2, keypoints=other_keypoints, resume=True))
    assert json.loads((run / "last.json").read_text())["epoch"] == 2
    with pytest.raises(ValueError, match="its horizon differ"):
        train_dynamics(_config(small_dataset, run, epochs=3, horizon=3, resume=True))


def test_normalizer_is_saved_and_restored_with_the_model(small_dataset, tmp_path):
    run = train_dynamics(_config(small_dataset, tmp_path / "run", epochs=1, hidden=(32,)))
    loaded = load_dynamics(run, "last")
    weights = load_file(str(run / "last.safetensors"))
    for name in ("latent_mean", "latent_std", "action_mean", "action_std", "delta_mean", "delta_std"):
        assert torch.equal(getattr(loaded, name), weights[name])
    assert not torch.all(loaded.latent_mean == 0) and not torch.all(loaded.delta_std == 1)
    assert loaded.history == 2 and loaded.hidden == (32,)
    initial, actions = torch.zeros(2, 2, 14), torch.zeros(2, 5, 2)
    assert loaded.rollout(initial, actions).shape == (2, 4, 14)


def test_clear_errors(small_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_dynamics(_config(tmp_path / "missing", tmp_path / "a"))
    with pytest.raises(ValueError, match="longest episode"):
        train_dynamics(_config(small_dataset, tmp_path / "b", horizon=100))
    run = train_dynamics(_config(small_dataset, tmp_path / "c", epochs=1, hidden=(8,)))
    with pytest.raises(ValueError, match="already exists"):
        train_dynamics(_config(small_dataset, run, epochs=1, hidden=(8,)))
    with pytest.raises(ValueError, match="hidden"):
        train_dynamics(_config(small_dataset, run, epochs=2, hidden=(16,), resume=True))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_dynamics(_config(small_dataset, tmp_path / "d", resume=True))
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        load_dynamics(tmp_path / "nothing")


def test_quaternion_rotation_matches_mujoco():
    rng = np.random.default_rng(5)
    q = _random_quaternion(rng)
    v = rng.normal(size=(1, 3))
    expected = np.empty(3)
    mujoco.mju_rotVecQuat(expected, v[0], q)
    np.testing.assert_allclose(rotate_by_quaternions(q, v)[0], expected, atol=1e-12)


def test_cli_train_dynamics_writes_a_loadable_run(small_dataset, tmp_path):
    from keydyn.cli import main
    from keydyn.dynamics.train import load_dynamics

    out = tmp_path / "run"
    argv = [
        "train-dynamics",
        "--dataset",
        str(small_dataset),
        "--out",
        str(out),
        "--epochs",
        "2",
        "--horizon",
        "3",
        "--hidden",
        "32",
        "32",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert list(load_dynamics(out).config()["hidden"]) == [32, 32]
    assert main(argv) == 2  # the run exists: refused without --resume

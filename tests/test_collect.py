"""Data collection: determinism across workers, resume after a kill, filtering, the CLI and tools."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import zarr

from keydyn.cli import main
from keydyn.data.collect import collect
from keydyn.data.store import EpisodeStore, StoreError
from keydyn.evaluation.imitation import DemonstrationConfig
from keydyn.runs import store_task
from keydyn.sim.config import task_config
from keydyn.sim.env import PushingEnv, mug_instances

from .conftest import SMALL, small_collect_config


def _assert_same_store(a: Path, b: Path) -> None:
    first, second = EpisodeStore.open(a), EpisodeStore.open(b)
    assert first.num_episodes == second.num_episodes
    assert np.array_equal(first.episode_ends, second.episode_ends)
    for name in first.episode_fields:
        assert np.array_equal(first.episode_meta(name), second.episode_meta(name)), name
    for name in first.frame_fields:
        assert np.array_equal(first.frames(name), second.frames(name)), name


def test_collected_dataset_is_consistent_with_the_simulator(small_dataset):
    store = EpisodeStore.open(small_dataset)
    assert store.num_episodes == 3
    assert store.attrs["task"] == "top_down"
    assert set(store.attrs["cameras"]) == {"top_down", "top_down_rotated"}
    start, stop = store.episode_range(1)
    episode = store.episode(1)
    assert 11 <= stop - start <= 13  # 12 steps, or cut short but with at least 10 actions
    assert np.all(episode["action"][-1] == 0)
    speeds = np.linalg.norm(episode["action"][:-1], axis=1)
    assert np.all((speeds >= 0.15 - 1e-6) & (speeds <= 0.25 + 1e-6))
    # Replaying the stored state and action reproduces the next stored frame exactly.
    env = PushingEnv("top_down", **SMALL)
    env.reset(seed=0)
    env.set_sim_state(episode["sim_state"][3])
    obs, _, _, _, info = env.step(episode["action"][3])
    env.close()
    assert np.array_equal(info["sim_state"], episode["sim_state"][4])
    assert np.array_equal(obs["top_down/rgb"], episode["top_down/rgb"][4])
    assert np.array_equal(obs["top_down/mask"], episode["top_down/mask"][4])
    assert episode["top_down/mask"].sum() > 0


def test_dataset_is_identical_whatever_the_worker_count(small_dataset, tmp_path):
    collect(small_collect_config(tmp_path / "two", workers=2))
    _assert_same_store(small_dataset, tmp_path / "two")


def test_resume_after_a_killed_collection_gives_the_same_dataset(small_dataset, tmp_path):
    out = tmp_path / "killed"
    command = [
        sys.executable,
        "-m",
        "keydyn.cli",
        "collect",
        "--out",
        str(out),
        "--episodes",
        "3",
        "--steps",
        "12",
        "--seed",
        "7",
        "--width",
        "96",
        "--height",
        "72",
        "--no-progress",
    ]
    process = subprocess.Popen(command, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill it as soon as the first episode is committed
        try:
            if EpisodeStore.open(out).num_episodes >= 1:
                break
        except StoreError:
            pass
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    interrupted = EpisodeStore.open(out).num_episodes
    assert 1 <= interrupted <= 3
    with pytest.raises(StoreError, match="already exists"):
        collect(small_collect_config(out))
    collect(small_collect_config(out, resume=True))
    _assert_same_store(small_dataset, out)


def test_rows_reserved_for_episodes_cut_short_are_given_back(tmp_path):
    out = tmp_path / "long"
    store = collect(small_collect_config(out, episodes=2, steps=40))
    assert store.num_frames < 2 * 41  # the box left the table before 40 steps: fewer rows than reserved
    root = zarr.open_group(str(out), mode="r")
    assert {root[f"data/{name}"].shape[0] for name in store.frame_fields} == {store.num_frames}
    assert {root[f"meta/{name}"].shape[0] for name in store.episode_fields} == {2}


def test_resume_with_other_settings_is_refused(small_dataset, tmp_path):
    with pytest.raises(StoreError, match="seed differ"):
        collect(small_collect_config(small_dataset, resume=True, seed=8))
    with pytest.raises(StoreError, match="does not exist"):
        collect(small_collect_config(tmp_path / "absent", resume=True))


def test_a_resume_under_another_mujoco_version_is_refused(small_dataset, tmp_path):
    import mujoco

    out = tmp_path / "data"
    collect(small_collect_config(out, episodes=1))
    assert EpisodeStore.open(out).attrs["mujoco_version"] == mujoco.__version__
    store = EpisodeStore.open(out, mode="a")
    store.update_attrs({"mujoco_version": "2.3.7"})
    store.close()
    with pytest.raises(StoreError, match=r"simulated by MuJoCo 2\.3\.7, this is .*install mujoco==2\.3\.7"):
        collect(small_collect_config(out, episodes=2, resume=True))
    assert EpisodeStore.open(out).num_episodes == 1


def test_the_stored_action_is_the_velocity_the_pusher_was_given(tmp_path):
    """A policy faster than the task's pusher (max_speed 0.3 m/s per axis): the dataset holds the clipped velocity
    that was applied, never the command, so dynamics never learn from actions that did not happen."""
    from keydyn.sim.policy import RandomPushConfig

    fast = RandomPushConfig(min_speed=0.4, max_speed=0.5)
    store = collect(small_collect_config(tmp_path / "fast", episodes=1, policy=fast))
    action = store.frames("action")[:-1]
    assert np.abs(action).max() == pytest.approx(0.3) and (np.abs(action) == np.float32(0.3)).sum() >= 3
    velocity = store.frames("pusher_velocity")[1:]  # what the pusher did after each action, m/s
    assert np.abs(velocity).max() < 0.3 + 0.02


class _EndsStrangely(PushingEnv):
    def step(self, action):
        observation, reward, _, truncated, info = super().step(action)
        return observation, reward, True, truncated, {**info, "termination": "fell_asleep"}


def test_an_unknown_termination_is_named_with_the_known_ones():
    from keydyn.data.collect import collect_episode

    config = small_collect_config(Path("unused"), episodes=1)
    env = _EndsStrangely(config.task_config(), images=False)
    try:
        with pytest.raises(
            ValueError,
            match=r"_EndsStrangely ended an episode with termination 'fell_asleep'.*out_of_bounds, tipped_over",
        ):
            collect_episode(env, config, 0)
    finally:
        env.close()


def test_cli_collect_info_and_video(tmp_path, capsys):
    out = tmp_path / "angled"
    argv = [
        "collect",
        "--task",
        "angled",
        "--out",
        str(out),
        "--episodes",
        "1",
        "--steps",
        "10",
        "--width",
        "64",
        "--height",
        "48",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert main(["dataset", "info", str(out), "--json"]) == 0
    printed = capsys.readouterr().out
    assert '"task": "angled"' in printed
    assert main(["dataset", "info", str(out)]) == 0
    assert "angled_side: 64x48 px" in capsys.readouterr().out
    video = tmp_path / "episode.mp4"
    assert main(["dataset", "video", str(out), "--episode", "0", "--out", str(video)]) == 0
    frames = iio.imread(video)
    store = EpisodeStore.open(out)
    assert frames.shape[0] == store.num_frames and frames.shape[1:3] == (48, 128)
    assert main(["dataset", "video", str(out), "--episode", "4", "--out", str(video)]) == 2
    assert "out of range" in capsys.readouterr().err


def test_cli_rejects_bad_input_with_a_message(tmp_path, capsys):
    assert main(["dataset", "info", str(tmp_path / "none")]) == 2
    assert "not a keydyn dataset" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["collect", "--out", str(tmp_path / "x"), "--steps", "5"])
    assert exited.value.code == 2
    assert "--filter.min-steps (10) exceeds --steps (5)" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(SystemExit):
        main(["collect", "--out", str(tmp_path / "x"), "--task", "sideways"])
    assert "sideways" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_mug_collection_records_instance_and_appearance(tmp_path):
    """Only training mugs are in a training store, and only held-out ones in a `mugs_unseen` store: each episode's
    recorded instance and look, put back in the simulator at the episode's first state as a tracked demonstration's
    start is, renders exactly the stored mask and image."""
    held_out = collect(small_collect_config(tmp_path / "unseen", task="mugs_unseen", episodes=2))
    assert set(held_out.episode_meta("mug_instance")) <= set(mug_instances(task_config("mugs_unseen")))
    store = collect(small_collect_config(tmp_path / "mugs", task="mugs", episodes=4))
    instances = store.episode_meta("mug_instance")
    assert set(instances) <= set(mug_instances(task_config("mugs"))) and len(set(instances)) > 1
    rgba = store.episode_meta("mug_rgba")
    assert not np.array_equal(rgba[0], rgba[1])
    env = PushingEnv(store_task(store))
    camera = env.task.camera_names[0]
    for episode in range(len(instances)):
        begin, _ = store.episode_range(episode)
        options, _ = DemonstrationConfig(dataset=store.path, episode=episode).demonstration_push(env)
        observation, _ = env.reset(options=options)
        np.testing.assert_array_equal(
            observation[f"{camera}/mask"], store.frames(f"{camera}/mask", begin, begin + 1)[0]
        )
        np.testing.assert_array_equal(observation[f"{camera}/rgb"], store.frames(f"{camera}/rgb", begin, begin + 1)[0])
    env.close()


def test_collection_workers_do_not_import_torch():
    """A collection worker imports what collecting needs, not torch (2 s of start-up per worker process)."""
    code = "import sys, keydyn.data.collect, keydyn.sim.harness; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"

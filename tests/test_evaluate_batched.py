"""Batched goal reaching (`keydyn evaluate --batch B`): B episodes in lockstep, planned in one planner call, give
each episode the results it gets alone."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from keydyn.cli import main
from keydyn.control.run import control_setup
from keydyn.evaluation.episodes import reach_goal, reach_goals
from keydyn.evaluation.evaluate import episode_seed
from keydyn.evaluation.goals import GoalPairConfig, goal_pair
from keydyn.latents.base import BatchLatentEncoder
from keydyn.models import shipped_run
from keydyn.sim.env import PushingEnv
from keydyn.sim.observations import ObservationError

from .test_evaluate import FAST_MPC, rows
from .test_guards import FAST_MPC as FAST_CONTROL
from .test_guards import FaultyEnv

PLANNERS = {
    "mppi": ["planner:mppi", "--num-samples", "64", "--iterations", "2"],
    "cem": ["planner:cem", "--num-samples", "64", "--num-elites", "8", "--iterations", "2"],
}


def assert_same_episodes(measured: list[dict], expected: list[dict]) -> None:
    """Every episode's steps, termination, executed actions (1e-4 m/s) and errors (1e-3 cm, 1e-3 deg) agree."""
    assert [row["index"] for row in measured] == [row["index"] for row in expected]
    for got, want in zip(measured, expected, strict=True):
        assert (got["steps"], got["termination"], got["fault"]) == (want["steps"], want["termination"], want["fault"])
        np.testing.assert_allclose(got["actions"], want["actions"], rtol=0, atol=1e-4)
        for key in ("initial_position_error_cm", "final_position_error_cm"):
            assert got[key] == pytest.approx(want[key], abs=1e-3), key
        for key in ("initial_angle_error_deg", "final_angle_error_deg"):
            assert got[key] == pytest.approx(want[key], abs=1e-3), key


@pytest.mark.parametrize("planner", ["mppi", "cem"])
def test_batched_evaluation_equals_unbatched_with_the_shipped_model(planner, tmp_path):
    """The shipped GT 3D model moves the box over 4 pairs of 10 and 15 steps (the 10-step ones drop out of their
    batch first); batches of 4 and of 3 (uneven: 3 + 1) give every episode's actions and errors of batch 1."""
    base = ["evaluate", "--run", str(shipped_run("top_down", "gt3d")), "--episodes", "4", "--workers", "0"]
    base += ["--videos", "0", "--no-progress", "--mpc.grid-headings", "36", *PLANNERS[planner]]
    results = {}
    for batch in (1, 4, 3):
        assert main([*base, "--out", str(tmp_path / str(batch)), "--batch", str(batch)]) == 0
        results[batch] = rows(tmp_path / str(batch))
    unbatched = results[1]
    assert {row["push_steps"] for row in unbatched} == {10, 15}
    for row in unbatched:  # the box moved: the final errors are not the initial ones
        assert abs(row["final_position_error_cm"] - row["initial_position_error_cm"]) > 2
    assert_same_episodes(results[4], unbatched)
    assert_same_episodes(results[3], unbatched)


def test_episodes_stopped_early_drop_out_of_their_batch(small_run):
    """In one lockstep batch, an episode whose goal is refused, one stopped by a refused observation after its
    second step, and two that run to the end each equal that episode run alone."""
    setup = control_setup(small_run, None, "best", FAST_CONTROL)
    task = setup.env.task
    pairs = [goal_pair(setup.env, GoalPairConfig(), index) for index in range(4)]
    seeds = [episode_seed(0, index) for index in range(4)]

    def environments():  # observation 0 is the goal's, 1 the start's, 1 + t the one after step t
        faulty = [FaultyEnv(task, fault_at=3), FaultyEnv(task, fault_at=0)]
        return [PushingEnv(task, images=False), *faulty, PushingEnv(task, images=False)]

    encoders = [copy.deepcopy(setup.encoder) for _ in pairs]
    batched = reach_goals(environments(), encoders, setup.controller, pairs, seeds)
    alone = [
        reach_goal(env, setup.encoder, setup.controller, pair, seed)
        for env, pair, seed in zip(environments(), pairs, seeds, strict=True)
    ]
    assert [result.steps for result in batched][1:3] == [3, 0]  # the others run their pair's steps or terminate
    assert batched[1].fault and batched[2].fault.startswith("the goal:")
    for got, want in zip(batched, alone, strict=True):
        assert (got.steps, got.termination, got.fault) == (want.steps, want.termination, want.fault)
        np.testing.assert_allclose(got.actions, want.actions, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.latents, want.latents, rtol=0, atol=1e-6)
        assert got.final_position_error == pytest.approx(want.final_position_error, abs=1e-5)
        assert got.final_angle_error == pytest.approx(want.final_angle_error, abs=1e-5)
    np.testing.assert_array_equal(batched[1].actions[-1], 0.0)  # the zero-velocity stop


@pytest.mark.slow
def test_batched_pool_and_resume_give_the_unbatched_rows(small_run, tmp_path, capsys):
    """--batch 2 over 2 worker processes equals --batch 1 in this process; an evaluation cut after its first
    episode resumes in batches of 2 and equals them too; --batch 0 is refused, and so is --encoder-device for the
    GT 3D encoder, which has no network to move."""
    base = ["evaluate", "--run", str(small_run), "--videos", "0", "--episodes", "3", *FAST_MPC, "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "one"), "--workers", "0"]) == 0
    assert main([*base, "--out", str(tmp_path / "pool"), "--workers", "2", "--batch", "2"]) == 0
    assert_same_episodes(rows(tmp_path / "pool"), rows(tmp_path / "one"))
    log = tmp_path / "one" / "episodes.jsonl"
    first = [line for line in log.read_text().splitlines() if json.loads(line)["index"] == 0]
    log.write_text(first[0] + "\n")
    assert main([*base, "--out", str(tmp_path / "one"), "--workers", "0", "--batch", "2", "--resume"]) == 0
    assert_same_episodes(rows(tmp_path / "one"), rows(tmp_path / "pool"))
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--out", str(tmp_path / "zero"), "--batch", "0"])
    assert exit_info.value.code == 2
    assert main([*base, "--out", str(tmp_path / "device"), "--encoder-device", "meta"]) == 2
    assert "--encoder-device meta: the gt3d latent's encoder runs on the CPU only" in capsys.readouterr().err
    assert not (tmp_path / "device").exists()  # refused before anything is written


def start_scenes(env: PushingEnv, count: int) -> tuple[list[dict], list[dict]]:
    """The observations and infos of the start scenes of goal pairs 0 to count - 1."""
    observations, infos = [], []
    for index in range(count):
        pair = goal_pair(env, GoalPairConfig(), index)
        observation, info = env.reset(options=pair.reset_options(pair.start_state))
        observations.append(observation)
        infos.append(info)
    return observations, infos


def test_descriptor_keypoints_of_a_batch_are_each_frames_own_and_a_refused_frame_stays_alone():
    """The shipped SDS encoder locates 3 scenes in one network call where it locates each alone (to 0.1 mm); a frame
    with a missing depth image in the batch is refused with the error `encode` gives it, the others encoded."""
    setup = control_setup(shipped_run("top_down", "sds"), None, "best", FAST_CONTROL)
    assert isinstance(setup.encoder, BatchLatentEncoder)
    observations, infos = start_scenes(setup.env, 3)
    camera = setup.encoder.references.camera
    broken = {key: value for key, value in observations[0].items() if key != f"{camera}/depth"}
    batch = setup.encoder.encode_batch([*observations, broken], [*infos, infos[0]])
    for latent, observation, info in zip(batch[:3], observations, infos, strict=True):
        np.testing.assert_allclose(latent, setup.encoder.encode(observation, info), rtol=0, atol=1e-4)
    assert not np.allclose(batch[0], batch[1], atol=1e-2)  # different scenes
    assert isinstance(batch[3], ObservationError)
    with pytest.raises(ObservationError) as alone:
        setup.encoder.encode(broken, infos[0])
    assert str(batch[3]) == str(alone.value)


def test_batched_sds_evaluation_equals_unbatched():
    """Three SDS episodes in lockstep (images through the network together) give each one's actions and errors
    alone."""
    setup = control_setup(shipped_run("top_down", "sds"), None, "best", FAST_CONTROL)
    pairs = [goal_pair(setup.env, GoalPairConfig(), index) for index in range(3)]
    seeds = [episode_seed(0, index) for index in range(3)]
    envs = [setup.env, *(PushingEnv(setup.env.task) for _ in pairs[1:])]
    batched = reach_goals(envs, [setup.encoder] * 3, setup.controller, pairs, seeds, steps=4)
    for pair, seed, got in zip(pairs, seeds, batched, strict=True):
        want = reach_goal(setup.env, setup.encoder, setup.controller, pair, seed, steps=4)
        assert (got.steps, got.termination, got.fault) == (want.steps, want.termination, want.fault) == (4, "", "")
        np.testing.assert_allclose(got.actions, want.actions, rtol=0, atol=1e-4)
        np.testing.assert_allclose(got.latents, want.latents, rtol=0, atol=1e-4)

"""Goal-reaching evaluation and trajectory tracking, end to end through the CLI with the real simulator."""

from __future__ import annotations

import json
import shutil

import mujoco
import numpy as np
import pytest
import tyro

from keydyn.cli import command_type, main
from keydyn.control.run import load_run
from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics
from keydyn.evaluation.goals import GoalPairConfig, goal_pair
from keydyn.evaluation.report import summarize
from keydyn.evaluation.tracking import pair_push, perturbed_start, record_demonstration, reference_window
from keydyn.files import file_sha256
from keydyn.models import shipped_run
from keydyn.planning import CEMConfig, GradientShootingConfig, MPPIConfig, RandomShootingConfig
from keydyn.sim.env import PushingEnv, object_yaw

FAST_MPC = ["--mpc.grid-headings", "36", "planner:mppi", "--num-samples", "64", "--iterations", "2"]


def rows(path) -> list[dict]:
    """Episode rows with executed actions, sorted by episode, without wall-clock times."""
    lines = [json.loads(line) for line in (path / "episodes.jsonl").read_text().splitlines()]
    return sorted(
        ({k: v for k, v in row.items() if k != "mean_plan_time_s"} for row in lines), key=lambda r: r["index"]
    )


def rotation_angle_deg(quaternion_a, quaternion_b) -> float:
    """Angle (degrees) of the rotation taking orientation a to b, from their matrices: arccos((tr(Ra^T Rb) - 1) / 2)."""
    matrices = []
    for quaternion in (quaternion_a, quaternion_b):
        matrix = np.empty(9)
        mujoco.mju_quat2Mat(matrix, np.asarray(quaternion, dtype=float))
        matrices.append(matrix.reshape(3, 3))
    cosine = (np.trace(matrices[0].T @ matrices[1]) - 1) / 2
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def assert_errors_are_those_of_the_replayed_episodes(out) -> None:
    """Replay each logged episode's actions from its pair's start in the simulator and recompute its initial and final
    errors (cm, degrees) from the object and goal poses; they, and the summary of them, are the reported ones."""
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    goals = GoalPairConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["goals"].items()})
    env = PushingEnv(results["task"], images=False)
    logged = {row["index"]: row["actions"] for row in rows(out)}
    recomputed = []
    for row in results["episodes"]:
        pair = goal_pair(env, goals, row["index"])
        _, info = env.reset(options=pair.reset_options(pair.start_state))
        start_position, start_quaternion = info["object_position"], info["object_quaternion"]
        for action in logged[row["index"]]:
            _, _, terminated, _, info = env.step(np.asarray(action, dtype=np.float32))
        assert len(logged[row["index"]]) == row["steps"] and bool(row["termination"]) == terminated
        final = {
            "initial_position_error_cm": 100 * np.linalg.norm(start_position - pair.goal_position),
            "initial_angle_error_deg": rotation_angle_deg(start_quaternion, pair.goal_quaternion),
            "final_position_error_cm": 100 * np.linalg.norm(info["object_position"] - pair.goal_position),
            "final_angle_error_deg": rotation_angle_deg(info["object_quaternion"], pair.goal_quaternion),
        }
        for key, value in final.items():
            assert row[key] == pytest.approx(value, abs=1e-6), key
        recomputed.append(final)
    env.close()
    summary = results["summary"]
    for key in recomputed[0]:
        assert summary[key]["mean"] == pytest.approx(np.mean([r[key] for r in recomputed]), abs=1e-6)
        assert summary[key]["median"] == pytest.approx(np.median([r[key] for r in recomputed]), abs=1e-6)
    position_cm, angle_deg = config["success_position_cm"], config["success_angle_deg"]
    successes = [
        r["final_position_error_cm"] <= position_cm and r["final_angle_error_deg"] <= angle_deg for r in recomputed
    ]
    assert summary["success_rate"] == pytest.approx(np.mean(successes))


@pytest.mark.slow
def test_cli_collect_train_evaluate_end_to_end(tmp_path):
    data, run, out = tmp_path / "data", tmp_path / "run", tmp_path / "eval"
    assert main(["collect", "--out", str(data), "--episodes", "4", "--steps", "14", "--width", "64",
                 "--height", "48", "--workers", "1", "--no-progress"]) == 0  # fmt: skip
    assert main(["train-dynamics", "--dataset", str(data), "--out", str(run), "--epochs", "2", "--horizon", "5",
                 "--hidden", "32", "32", "--no-progress"]) == 0  # fmt: skip
    args = ["evaluate", "--run", str(run), "--out", str(out), "--episodes", "2", "--workers", "1", "--videos", "1"]
    assert main([*args, *FAST_MPC, "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "top_down" and results["latent"] == "gt3d"
    assert [row["index"] for row in results["episodes"]] == [0, 1]
    assert [row["push_steps"] for row in results["episodes"]] == [10, 15]
    for row in results["episodes"]:  # MPC runs as many steps as the pair's push, unless the episode ends early
        assert row["steps"] == row["push_steps"] or (row["termination"] and row["steps"] < row["push_steps"])
    for row in results["episodes"]:
        assert np.isfinite(row["final_position_error_cm"]) and 0 <= row["final_angle_error_deg"] <= 180
        assert row["initial_position_error_cm"] >= 5 or row["initial_angle_error_deg"] >= 15
    summary = results["summary"]
    assert summary["episodes"] == 2 and 0.0 <= summary["success_rate"] <= 1.0
    assert "| GT 3D (MPPI) |" in (out / "results.md").read_text()
    assert "| Avg. trajectory |" in (out / "results.md").read_text()
    assert (out / "errors.png").stat().st_size > 0
    assert (out / "videos" / "episode_000.mp4").stat().st_size > 0
    assert not (out / "videos" / "episode_001.mp4").exists()


@pytest.mark.slow
def test_results_do_not_depend_on_worker_count_and_resume_continues(small_run, tmp_path):
    base = ["evaluate", "--run", str(small_run), "--videos", "0", *FAST_MPC, "--no-progress"]
    assert main([*base, "--out", str(tmp_path / "pool"), "--episodes", "3", "--workers", "2"]) == 0
    assert main([*base, "--out", str(tmp_path / "inline"), "--episodes", "2", "--workers", "0"]) == 0
    pool, inline = rows(tmp_path / "pool"), rows(tmp_path / "inline")
    assert pool[:2] == inline  # the same actions and errors, bit for bit
    # An evaluation cut short resumes: it keeps the finished episodes and runs only the missing ones.
    episodes_log = tmp_path / "inline" / "episodes.jsonl"
    episodes_log.write_text(episodes_log.read_text() + '{"index": 7, "fin')  # a torn last line
    # ... also one started by an older keydyn: its config.json names the planner beside every planner's settings,
    # each with a horizon and a seed, and holds goals.pairs.
    config_json = tmp_path / "inline" / "config.json"
    saved = json.loads(config_json.read_text())
    planner = saved["mpc"].pop("planner")
    name = planner.pop("type")
    legacy = {name: {**planner, "horizon": 10, "seed": 0}, "cem": {"num_samples": 500, "horizon": 10, "seed": 0}}
    saved["mpc"] = {"planner": name, **legacy, **saved["mpc"]}
    saved["goals"]["pairs"] = 200
    config_json.write_text(json.dumps(saved))
    assert main([*base, "--out", str(tmp_path / "inline"), "--episodes", "3", "--workers", "0", "--resume"]) == 0
    assert rows(tmp_path / "inline") == pool
    assert main([*base, "--out", str(tmp_path / "inline"), "--episodes", "3", "--workers", "0"]) == 2  # exists
    other = [*base, "--out", str(tmp_path / "inline"), "--episodes", "3", "--resume", "--seed", "1"]
    assert main(other) == 2  # different settings cannot resume
    # The two evaluations side by side in one table; evaluations of other pairs are refused.
    assert main(["table", str(tmp_path / "pool"), str(tmp_path / "inline"), "--out", str(tmp_path / "t.md")]) == 0
    table = (tmp_path / "t.md").read_text()
    assert "| GT 3D (MPPI) [pool] |" in table and "| GT 3D (MPPI) [inline] |" in table
    older = json.loads((tmp_path / "pool" / "results.json").read_text())
    older["config"]["goals"]["pairs"] = 200  # results of an older keydyn, whose goals had an unused `pairs`
    (tmp_path / "older").mkdir()
    (tmp_path / "older" / "results.json").write_text(json.dumps(older))
    assert main(["table", str(tmp_path / "pool"), str(tmp_path / "older")]) == 0
    other_pairs = json.loads((tmp_path / "pool" / "results.json").read_text())
    other_pairs["config"]["goals"]["seed"] += 1
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "results.json").write_text(json.dumps(other_pairs))
    assert main(["table", str(tmp_path / "pool"), str(tmp_path / "other")]) == 2


def test_a_resumed_evaluation_refuses_a_checkpoint_trained_on_since(small_dataset, tmp_path, capsys):
    settings = {"dataset": small_dataset, "horizon": 5, "hidden": (64, 64), "val_fraction": 0.34, "progress": False}
    run = train_dynamics(TrainDynamicsConfig(out=tmp_path / "run", epochs=2, **settings))
    out = tmp_path / "eval"
    base = ["evaluate", "--run", str(run), "--out", str(out), "--checkpoint", "last", "--videos", "0", *FAST_MPC]
    assert main([*base, "--episodes", "1", "--workers", "0", "--no-progress"]) == 0
    measured = json.loads((out / "results.json").read_text())["checkpoint_sha256"]
    assert measured == file_sha256(run / "last.safetensors")
    train_dynamics(TrainDynamicsConfig(out=run, epochs=3, resume=True, **settings))  # trained on: a new `last`
    capsys.readouterr()
    assert main([*base, "--episodes", "2", "--workers", "0", "--resume", "--no-progress"]) == 2
    assert "holds episodes of another last.safetensors" in capsys.readouterr().err
    assert len(rows(out)) == 1  # nothing of the new checkpoint was added to the old one's episodes
    # An evaluation started before keydyn recorded its checkpoint resumes, saying what it takes its episodes as.
    (out / "checkpoint.json").unlink()
    assert main([*base, "--episodes", "2", "--workers", "0", "--resume", "--no-progress"]) == 0
    assert "was started before keydyn recorded the checkpoint" in capsys.readouterr().err
    assert json.loads((out / "results.json").read_text())["checkpoint_sha256"] == file_sha256(run / "last.safetensors")


def test_evaluations_of_pairs_drawn_otherwise_are_not_resumed_or_compared(small_run, tmp_path, capsys):
    """Each row records its pair's digest (start and goal states, mug): a resumed evaluation whose settings now
    draw other pairs (keydyn, MuJoCo or the task changed) is refused, as is a table or Table row mixing them."""
    from keydyn.evaluation.goals import GoalPairConfig, goal_pair
    from keydyn.evaluation.reproduce import method_row

    base = ["evaluate", "--run", str(small_run), "--videos", "0", *FAST_MPC, "--workers", "0", "--no-progress"]
    out, other = tmp_path / "eval", tmp_path / "other"
    assert main([*base, "--out", str(out), "--episodes", "2"]) == 0
    env = PushingEnv(load_run(small_run).task, images=False)
    assert [row["pair_sha256"] for row in rows(out)] == [goal_pair(env, GoalPairConfig(), k).sha256 for k in (0, 1)]
    env.close()
    shutil.copytree(out, other)
    log = other / "episodes.jsonl"
    changed = [{**row, "pair_sha256": "0" * 64} for row in rows(other)]  # as if drawn by another keydyn
    log.write_text("".join(json.dumps(row) + "\n" for row in changed))
    capsys.readouterr()
    assert main([*base, "--out", str(other), "--episodes", "3", "--resume"]) == 2
    assert "holds episodes of other start/goal pairs than --goals.* give now" in capsys.readouterr().err
    results = json.loads((other / "results.json").read_text())
    results["episodes"] = [{**row, "pair_sha256": "0" * 64} for row in results["episodes"]]
    (other / "results.json").write_text(json.dumps(results))
    assert main(["table", str(out), str(other)]) == 2
    with pytest.raises(ValueError, match="holds other start/goal pairs"):
        method_row([out, other])
    older = json.loads((out / "results.json").read_text())  # rows of a keydyn before 2026-11-30: no digests
    older["episodes"] = [{k: v for k, v in row.items() if k != "pair_sha256"} for row in older["episodes"]]
    (other / "results.json").write_text(json.dumps(older))
    assert main(["table", str(out), str(other)]) == 0 and method_row([out, other])["pairs"] == 2


def test_reported_errors_are_those_of_the_replayed_episodes(tmp_path):
    """The shipped GT 3D model moves the box; each episode's reported errors, the summary of them and the successes
    (within 1 cm: some episodes fail one threshold and meet the other) are recomputed from a replay."""
    out = tmp_path / "eval"
    args = ["evaluate", "--run", str(shipped_run("top_down", "gt3d")), "--out", str(out), "--episodes", "3"]
    settings = ["--success-position-cm", "1", "--workers", "0", "--videos", "0", "--no-progress"]
    assert main([*args, *settings, *FAST_MPC]) == 0
    assert_errors_are_those_of_the_replayed_episodes(out)
    results = json.loads((out / "results.json").read_text())
    for row in results["episodes"]:  # the box moved: the final errors are not the initial ones
        assert abs(row["final_position_error_cm"] - row["initial_position_error_cm"]) > 2
    assert 0 < results["summary"]["success_rate"] < 1


@pytest.mark.parametrize("command", ["evaluate", "track"])
def test_command_line_picks_the_planner_and_shows_only_its_options(command, capsys):
    def parsed(*extra: str):
        args = [command, "--run", "r", "--out", "o", *extra]
        config = (tyro.conf.OmitSubcommandPrefixes,)  # as keydyn.cli.main
        return tyro.cli(command_type(command, "default"), args=args, prog="keydyn", config=config)

    assert parsed().mpc.planner == MPPIConfig()
    assert parsed("--num-samples", "7").mpc.planner == MPPIConfig(num_samples=7)  # MPPI's, without naming it
    cem = parsed("planner:cem", "--num-samples", "500", "--seed", "3", "--mpc.horizon", "6")
    assert (cem.mpc.planner, cem.seed, cem.mpc.horizon) == (CEMConfig(num_samples=500), 3, 6)
    assert parsed("planner:random", "--sampling", "iid").mpc.planner == RandomShootingConfig(sampling="iid")
    assert parsed("planner:gradient").mpc.planner == GradientShootingConfig()

    def help_text(*extra: str) -> str:
        with pytest.raises(SystemExit):
            main([command, *extra, "--help"])
        return capsys.readouterr().out

    default = help_text()
    assert "--noise-std" in default and "planner:cem" in default and "--num-elites" not in default
    cem_help = help_text("planner:cem")
    assert "--num-elites" in cem_help and "--noise-std" not in cem_help
    assert "--mpc.mppi" not in default and "--mpc.planner" not in default and "--goals.pairs" not in default


def test_summary_and_success_thresholds():
    episodes = [
        {"final_position_error_cm": 1.0, "final_angle_error_deg": 10.0, "initial_position_error_cm": 10.0,
         "initial_angle_error_deg": 20.0, "termination": "", "mean_plan_time_s": 0.1},
        {"final_position_error_cm": 4.0, "final_angle_error_deg": 5.0, "initial_position_error_cm": 12.0,
         "initial_angle_error_deg": 40.0, "termination": "out_of_bounds", "mean_plan_time_s": 0.1},
        {"final_position_error_cm": 2.0, "final_angle_error_deg": 31.0, "initial_position_error_cm": 14.0,
         "initial_angle_error_deg": 30.0, "termination": "", "mean_plan_time_s": 0.1},
    ]  # fmt: skip
    summary = summarize(episodes, success_cm=3.0, success_deg=30.0)
    assert summary["success_rate"] == pytest.approx(1 / 3)
    assert summary["final_position_error_cm"] == {"mean": pytest.approx(7 / 3), "median": 2.0}
    assert summary["initial_angle_error_deg"]["mean"] == pytest.approx(30.0)
    assert summary["terminated_early"] == 1
    with pytest.raises(ValueError, match="no episodes"):
        summarize([])


def test_demonstration_replays_its_pair_and_offsets_move_the_start(small_run):
    trained = load_run(small_run)
    env = PushingEnv(trained.task, images=False)
    pair = goal_pair(env, GoalPairConfig(push_steps=(15,)), 0)
    demo = record_demonstration(env, trained.encoder, *pair_push(pair))
    assert demo.steps == 15 and demo.latents.shape == (16, 14)
    np.testing.assert_array_equal(demo.positions[-1], pair.goal_position)  # the replay is exact
    reference = reference_window(demo.latents, 12, 5)
    np.testing.assert_array_equal(reference[:3], demo.latents[13:16])
    np.testing.assert_array_equal(reference[3:], demo.latents[[15, 15]])  # padded with the last latent
    env.reset(options=perturbed_start(demo, 0.03, -0.02, np.radians(20)))
    position, quaternion = env.object_pose()
    np.testing.assert_allclose(position[:2], demo.positions[0, :2] + [0.03, -0.02], atol=2e-3)
    turned = (object_yaw(quaternion) - object_yaw(demo.quaternions[0]) + np.pi) % (2 * np.pi) - np.pi
    assert np.degrees(turned) == pytest.approx(20.0, abs=1.0)
    env.close()


def test_a_perturbed_mug_turns_about_its_centre_where_errors_are_measured():
    """A mug's frame sits at its base: turning it about that point would also move its centre (2.3 cm at 30 deg
    for mug 0), so a pure turn of the region-of-attraction grid would pass for a move. It turns about its centre."""
    from keydyn.evaluation.metrics import pose_errors
    from keydyn.evaluation.tracking import Demonstration

    env = PushingEnv("mugs", images=False, width=64, height=48)
    observation, info = env.reset(seed=3)
    start = {"sim_state": info["sim_state"], **{k: info[k] for k in ("mug_instance", "mug_material", "mug_rgba")}}
    latent = np.concatenate([np.zeros(12), observation["pusher_position"]])[None]
    pose = [np.asarray(info[key])[None] for key in ("object_position", "object_quaternion")]
    demo = Demonstration(
        start, np.zeros((0, 2)), latent, *pose, np.array([info["object_yaw"]]), np.asarray(info["object_centre_offset"])
    )
    assert np.linalg.norm(demo.centre_offset) > 0.03  # half the mug's length
    for dx, dyaw_deg in ((0.0, 30.0), (0.02, -60.0)):
        env.reset(options=perturbed_start(demo, dx, 0.0, np.radians(dyaw_deg)))
        position, quaternion = env.object_pose()
        moved, turned = pose_errors(position, quaternion, pose[0][0], pose[1][0], demo.centre_offset)
        assert moved == pytest.approx(abs(dx), abs=1e-3) and np.degrees(turned) == pytest.approx(abs(dyaw_deg), abs=2.0)
    env.close()


@pytest.mark.slow
def test_cli_track_writes_region_of_attraction(small_run, tmp_path):
    out = tmp_path / "track"
    args = ["track", "--run", str(small_run), "--out", str(out), "--demo-steps", "6", "--workers", "0"]
    assert main([*args, "--offsets-cm", "0", "3", "--yaw-offsets-deg", "0", "30", *FAST_MPC]) == 0
    track = json.loads((out / "track.json").read_text())
    offsets = {(r["dx_cm"], r["dy_cm"], round(r["dyaw_deg"])) for r in track["runs"]}
    assert offsets == {(0, 0, 0), (3, 0, 0), (0, 3, 0), (0, 0, 30), (3, 0, 30), (0, 3, 30)}
    assert all(r["steps"] == 6 or (r["termination"] and r["steps"] < 6) for r in track["runs"])
    assert (out / "region_of_attraction.png").stat().st_size > 0
    assert (out / "videos" / "track.mp4").stat().st_size > 0


def test_bounds_draws_and_seed_figures_that_cannot_mean_anything_are_refused(tmp_path):
    from keydyn.evaluation.evaluate import EvaluateConfig
    from keydyn.evaluation.statistics import spread

    with pytest.raises(ValueError, match=r"--success-position-cm and --success-angle-deg .* must be positive"):
        EvaluateConfig(run=tmp_path / "run", out=tmp_path / "eval", success_angle_deg=0.0)
    with pytest.raises(ValueError, match=r"--goals\.max-attempts must be at least 1"):
        GoalPairConfig(max_attempts=0)
    with pytest.raises(ValueError, match="no per-seed figures to spread"):
        spread([])

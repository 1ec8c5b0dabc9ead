"""`keydyn reproduce`: every stage at toy sizes, its table, and resumption after a kill in each stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from keydyn.cluster import ClusterConfig
from keydyn.evaluation.reproduce import (
    ReproduceConfig,
    format_table,
    method_preset,
    method_row,
    results_table,
    task_overlay,
)
from keydyn.evaluation.statistics import bootstrap_mean_interval, spread
from keydyn.files import file_sha256
from keydyn.presets import from_preset, load_preset, merge, preset_names, stated_settings, without
from keydyn.sim.config import TASK_NAMES, held_out_task

ARGS = ["reproduce", "table1", "--task", "top_down", "--preset", "tiny", "--methods", "gt3d", "sds", "--no-progress"]
STAGE_MARKERS = (
    "data/seed0/zarr.json",  # collection under way
    "visual/seed0/last.json",  # descriptor training checkpointed
    "runs/sds/seed0/last.json",  # dynamics training checkpointed
    "eval/sds/seed0/config.json",  # evaluation under way
)
TRAINED_STAGES = ("visual/seed0", "runs/gt3d/seed0", "runs/sds/seed0")


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "keydyn.cli", *ARGS, "--out", str(out)]


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _kill_when(out: Path, marker: str, timeout_s: float = 240.0) -> None:
    """Start the reproduction and kill -9 its whole process group as soon as `marker` appears (or it ends)."""
    process = subprocess.Popen(
        _command(out), env=_environment(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and not (out / marker).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_reproduce_writes_the_table_and_resumes_after_a_kill_in_each_stage(tmp_path):
    reference = tmp_path / "reference"
    finished = subprocess.run(_command(reference), env=_environment(), capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    table = json.loads((reference / "table.json").read_text())
    assert list(table["rows"]) == ["gt3d", "sds"]
    gt3d, sds = table["rows"]["gt3d"], table["rows"]["sds"]
    assert gt3d["pairs"] == sds["pairs"] == 2 and gt3d["ratio_to_gt3d"] == 1.0
    assert sds["ratio_to_gt3d"] == pytest.approx(sds["position_mean_cm"] / gt3d["position_mean_cm"])
    assert tuple(sds["paper"]) == (1.19, 3.88) and tuple(table["paper_trajectory"]) == (11.32, 32.05)
    low, high = sds["position_interval_cm"]
    assert low <= sds["position_mean_cm"] <= high
    # The stages are ordinary runs, made from the named presets, which their config.json names.
    assert json.loads((reference / "runs/sds/seed0/config.json").read_text())["horizon"] == 5
    for stage in (*TRAINED_STAGES, "eval/sds/seed0"):
        assert json.loads((reference / stage / "config.json").read_text())["preset"] == "tiny", stage
    assert json.loads((reference / "visual/seed0/last.json").read_text())["step"] == 4
    assert len(list((reference / "keypoint_cache/seed0").glob("keypoints-*.safetensors"))) == 1  # shared cache
    markdown = (reference / "table.md").read_text()
    sds_line = next(line for line in markdown.splitlines() if line.startswith("| SDS |"))
    assert sds_line.split(" | ")[2:6:3] == ["1.19", "3.88"]  # the paper's beside the position and the angle
    assert "| Avg. trajectory |" in markdown and "| 11.32 |" in markdown

    # Run again over finished stages: each trainer sees its run finished before it loads any data.
    weights = {stage: (reference / stage / "last.safetensors").read_bytes() for stage in TRAINED_STAGES}
    configs = {stage: (reference / stage / "config.json").read_bytes() for stage in TRAINED_STAGES}
    again = subprocess.run(_command(reference), env=_environment(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    for stage in TRAINED_STAGES:
        assert f"{reference / stage} has finished its" in again.stderr, stage
        assert (reference / stage / "last.safetensors").read_bytes() == weights[stage], stage
        assert (reference / stage / "config.json").read_bytes() == configs[stage], stage
    assert json.loads((reference / "table.json").read_text()) == table

    interrupted = tmp_path / "interrupted"
    for marker in STAGE_MARKERS:
        _kill_when(interrupted, marker)
    resumed = subprocess.run(_command(interrupted), env=_environment(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    again = json.loads((interrupted / "table.json").read_text())
    for method in ("gt3d", "sds"):
        for key in ("position_mean_cm", "angle_mean_deg", "success_rate", "position_interval_cm"):
            assert again["rows"][method][key] == table["rows"][method][key], (method, key)


def _evaluation(
    directory: Path, positions: list[float], angles: list[float], stopped: tuple[int, ...] = (), bounds=(3.0, 30.0)
) -> Path:
    """An evaluation's results.json: its episodes' final errors, `stopped` those stopped by a refused observation."""
    rows = [
        {"index": i, "final_position_error_cm": p, "final_angle_error_deg": a}
        | ({"fault": "ObservationError: no depth"} if i in stopped else {})
        for i, (p, a) in enumerate(zip(positions, angles, strict=True))
    ]
    summary = {
        "success_threshold": {"position_cm": bounds[0], "angle_deg": bounds[1]},
        "initial_position_error_cm": {"mean": 10.0},
        "initial_angle_error_deg": {"mean": 30.0},
    }
    directory.mkdir(parents=True)
    (directory / "results.json").write_text(json.dumps({"episodes": rows, "summary": summary}))
    return directory


def test_reproduce_evaluates_anew_a_run_that_changed_since_its_evaluation(tmp_path, capsys):
    from keydyn.cli import main

    out = tmp_path / "repro"
    args = ["reproduce", "table1", "--preset", "tiny", "--methods", "gt3d", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    table = (out / "table.json").read_text()
    record = out / "eval" / "gt3d" / "seed0" / "checkpoint.json"
    measured = json.loads(record.read_text())
    assert measured["sha256"] == file_sha256(out / "runs" / "gt3d" / "seed0" / "best.safetensors")
    record.write_text(json.dumps({**measured, "sha256": "0" * 64}))  # as if made with an earlier checkpoint
    capsys.readouterr()
    assert main(args) == 0
    assert "has changed since" in capsys.readouterr().err  # said, and evaluated anew
    assert json.loads(record.read_text()) == measured  # evaluated anew, with the run's checkpoint
    assert (out / "table.json").read_text() == table  # the same checkpoint gives the same rows


def test_method_row_averages_seeds_and_reports_their_spread(tmp_path):
    one = _evaluation(tmp_path / "s0", [1.0, 2.0, 4.0], [5.0, 40.0, 10.0])
    two = _evaluation(tmp_path / "s1", [3.0, 2.0, 1.0], [5.0, 5.0, 5.0], stopped=(2,))
    row = method_row([one, two])
    assert row["position_mean_cm"] == pytest.approx(np.mean([7 / 3, 2.0]))  # a stopped episode counts where it is
    assert row["success_rate"] == pytest.approx(np.mean([1 / 3, 2 / 3]))  # 40 deg, 4 cm and stopped fail; 3 cm not
    assert row["stopped_episodes"] == 1 and row["success_threshold"] == {"position_cm": 3.0, "angle_deg": 30.0}
    text = format_table(results_table("table1", "top_down", {"gt3d": [one, two]}))
    assert "success within 3 cm and 30 deg" in text
    assert "Episodes stopped by a refused observation (at their last pose, failures; over the seeds): GT 3D 1" in text
    with pytest.raises(ValueError, match="other bounds"):
        method_row([one, _evaluation(tmp_path / "s2", [1.0, 2.0, 4.0], [5.0, 40.0, 10.0], bounds=(2.0, 30.0))])
    assert row["position_mean_over_seeds_cm"] == pytest.approx(spread([7 / 3, 2.0]))
    assert row["position_interval_cm"] == bootstrap_mean_interval([2.0, 2.0, 2.5])  # per-pair means over seeds
    other_pairs = tmp_path / "other"
    _evaluation(other_pairs, [1.0, 2.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="other start/goal pairs"):
        method_row([one, other_pairs])


def test_bootstrap_interval_brackets_the_mean_and_narrows_with_more_pairs():
    generator = np.random.default_rng(3)
    few, many = generator.exponential(1.0, 20), generator.exponential(1.0, 2000)
    few_low, few_high = bootstrap_mean_interval(few)
    many_low, many_high = bootstrap_mean_interval(many)
    assert few_low < few.mean() < few_high and many_low < many.mean() < many_high
    assert many_high - many_low < (few_high - few_low) / 5
    assert bootstrap_mean_interval([2.5]) == (2.5, 2.5)
    assert spread([1.0]) == {"mean": 1.0, "std": 0.0, "min": 1.0, "max": 1.0}


def test_reproduce_refuses_unknown_methods_tasks_and_presets(tmp_path):
    with pytest.raises(ValueError, match="has no method transporter"):
        ReproduceConfig(out=tmp_path, methods=("sds", "transporter"))
    with pytest.raises(ValueError, match="unknown task"):
        ReproduceConfig(out=tmp_path, task="kitchen")
    with pytest.raises(ValueError, match="no preset 'fastest' for `keydyn train-visual`"):
        ReproduceConfig(out=tmp_path, visual="fastest")
    with pytest.raises(ValueError, match="names 'auto', which is no latent method"):
        ReproduceConfig(out=tmp_path, dynamics_by_method={"auto": "default"})
    with pytest.raises(ValueError, match="--dynamics-by-method sds fastest: no preset 'fastest'"):
        ReproduceConfig(out=tmp_path, dynamics_by_method={"sds": "fastest"})
    with pytest.raises(ValueError, match="'gpu' is not a torch device"):
        ReproduceConfig(out=tmp_path, device="gpu")
    with pytest.raises(ValueError, match="each stage's task gets one GPU"):
        ReproduceConfig(out=tmp_path, device="cuda:1", cluster=ClusterConfig(backend="ray"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ReproduceConfig(out=tmp_path, device="cuda")
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_a_stage_runs_its_methods_recipe_and_its_tasks_recipe_is_laid_over_any_preset():
    assert method_preset("train-dynamics", "default", "autoencoder") == "autoencoder"
    assert method_preset("train-dynamics", "default", "sds") == "default"
    assert method_preset("train-dynamics", "paper", "autoencoder") == "paper"  # a chosen preset wins
    assert method_preset("train-dynamics", "default", "autoencoder", {"autoencoder": "paper"}) == "paper"  # over both
    assert method_preset("train-dynamics", "paper", "sds", {"autoencoder": "default"}) == "paper"
    original = from_preset(ReproduceConfig, "reproduce", "original", out=Path("x"))
    original_autoencoder = method_preset(
        "train-dynamics", original.dynamics, "autoencoder", original.dynamics_by_method
    )
    assert original_autoencoder == "autoencoder-original"
    recipe = load_preset("train-dynamics", original_autoencoder)  # the autoencoder's recipe, in float32
    assert recipe["autoencoder"] == {"z_dim": 64, "precision": "fp32"} and recipe["epochs"] == 500
    assert load_preset("train-dynamics", "autoencoder")["autoencoder"] == {"z_dim": 64}  # bf16 by default
    budget = from_preset(ReproduceConfig, "reproduce", "cpu-budget", out=Path("x"))
    assert (budget.table, budget.transporter) == ("table2", "fast") and "autoencoder" in budget.methods
    budget_autoencoder = method_preset("train-dynamics", budget.dynamics, "autoencoder", budget.dynamics_by_method)
    recipe = load_preset("train-dynamics", budget_autoencoder)  # the original's recipe, cut to 10 epochs
    assert recipe == {**load_preset("train-dynamics", "autoencoder"), "epochs": 10}
    assert method_preset("train-dynamics", budget.dynamics, "sds", budget.dynamics_by_method) == "default"
    for task in ("occlusions", "mugs"):  # K* = 4 over the default recipe, the paper's and the original's
        for preset in ("default", "paper", "original"):
            recipe = merge(load_preset("train-dynamics", preset), task_overlay("train-dynamics", task, preset))
            assert recipe["keypoints"]["num_selected"] == 4
            assert recipe["epochs"] == load_preset("train-dynamics", preset)["epochs"]
        assert merge(load_preset("train-dynamics"), task_overlay("train-dynamics", task, "default")) == load_preset(
            "train-dynamics", task
        )  # `keydyn train-dynamics --preset occlusions` is the default recipe with the task's change
    mugs = {"task": "mugs", "episodes": 600, "steps": 20}
    assert task_overlay("collect", "mugs", "default") == mugs
    assert task_overlay("collect", "mugs", "paper") == mugs  # paper sets the image size only
    assert task_overlay("collect", "mugs", "tiny") == {"task": "mugs"}  # a preset keeps what it sets itself
    assert task_overlay("train-dynamics", "top_down", "default", keypoints={"seed": 1}) == {"keypoints": {"seed": 1}}
    # occlusions' descriptors (D = 16, the hidden-point loss) over the default recipe, not over the original's D = 3
    occlusions = merge(load_preset("train-visual"), task_overlay("train-visual", "occlusions", "default"))
    assert occlusions == load_preset("train-visual", "occlusions")
    assert occlusions["network"]["descriptor_dim"] == 16 and occlusions["loss"]["hidden_weight"] == 0.1
    original = merge(load_preset("train-visual", "original"), task_overlay("train-visual", "occlusions", "original"))
    assert original["network"]["descriptor_dim"] == 3 and original["loss"]["hidden_weight"] == 0.0
    for preset in preset_names("reproduce"):  # every recipe builds on every task (ReproduceConfig checks it)
        for task in TASK_NAMES:
            from_preset(ReproduceConfig, "reproduce", preset, out=Path("x"), task=task)
    assert without({"a": 1, "b": {"c": 2, "d": 3}, "e": {"f": 4}}, {"a": 0, "b": {"c": 0}, "e": {"f": 0}}) == {
        "b": {"d": 3}
    }
    # What a preset states includes what it inherits from the presets it extends, up to default.
    assert stated_settings("train-dynamics", "mugs") == {
        "keypoints": {
            "num_selected": 4,
            "min_distance_px": 11.0,
            "rigid_outlier_mm": 0.0,
            "rigid_project": False,
        }
    }  # one rigid shape does not hold for mugs of several sizes
    assert stated_settings("collect", "paper") == {"width": 640, "height": 480}
    assert stated_settings("collect", "default") == {}


def test_mugs_have_their_held_out_instances_as_a_task_and_no_other_task_has():
    assert held_out_task("mugs") == "mugs_unseen"
    for task in ("mugs_unseen", "top_down", "angled", "occlusions", "harness"):
        assert held_out_task(task) is None


@pytest.mark.slow
def test_reproduce_table2_trains_every_baseline_and_writes_the_papers_numbers(tmp_path):
    from keydyn.cli import main

    out = tmp_path / "table2"
    assert main(["reproduce", "table2", "--preset", "tiny", "--no-progress", "--out", str(out)]) == 0
    table = json.loads((out / "table.json").read_text())
    rows = table["rows"]
    assert list(rows) == [
        "transporter3d@mask",
        "transporter3d@full",
        "transporter2d@mask",
        "transporter2d@full",
        "autoencoder",
        "sds",
        "gt3d",
    ]
    assert rows["transporter3d@mask"]["label"] == "Transporter 3D (mask crop)"
    assert rows["transporter3d@full"]["paper"] == [2.01, 15.95]  # top_down, Table 2
    assert rows["transporter2d@mask"]["paper"] == [2.08, 13.59]
    assert rows["autoencoder"]["paper"] == [2.18, 14.79] and rows["sds"]["paper"] == [1.19, 3.88]
    assert rows["gt3d"]["paper"] == [1.14, 4.01]
    for crop in ("mask", "full"):
        assert json.loads((out / "transporter" / crop / "seed0" / "best.json").read_text())["crop"] == crop
    for latent in ("transporter3d", "transporter2d"):
        config = json.loads((out / "runs" / f"{latent}@mask" / "seed0" / "config.json").read_text())
        assert Path(config["transporter_run"]) == out / "transporter" / "mask" / "seed0"  # one network per crop
    assert json.loads((out / "runs/autoencoder/seed0/config.json").read_text())["latent"] == "autoencoder"
    assert (out / "runs/autoencoder/seed0/reconstructions.png").stat().st_size > 0
    assert all(row["pairs"] == rows["gt3d"]["pairs"] for row in rows.values())  # the same pairs for every row
    lines = {line.split(" | ")[0]: line.split(" | ") for line in (out / "table.md").read_text().splitlines()}
    assert lines["| Transporter 2D (full crop)"][2:6:3] == ["2.08", "13.59"]
    assert lines["| Autoencoder"][2:6:3] == ["2.18", "14.79"]


@pytest.mark.slow
def test_reproduce_on_mugs_also_evaluates_the_held_out_mugs_and_keeps_the_tiny_presets_size(tmp_path):
    from keydyn.cli import main
    from keydyn.data.store import EpisodeStore
    from keydyn.sim import task_config
    from keydyn.sim.env import mug_instances

    out = tmp_path / "mugs"
    args = ["reproduce", "table1", "--task", "mugs", "--preset", "tiny", "--methods", "gt3d", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    store = EpisodeStore.open(out / "data" / "seed0")
    assert store.num_episodes == 4  # tiny's own size, not mugs' 600 episodes
    assert set(store.episode_meta("mug_instance")) <= set(mug_instances(task_config("mugs")))
    held_out = json.loads((out / "eval_mugs_unseen" / "gt3d" / "seed0" / "results.json").read_text())
    assert held_out["config"]["task"] == "mugs_unseen"
    assert json.loads((out / "eval" / "gt3d" / "seed0" / "results.json").read_text())["config"]["task"] is None
    table = json.loads((out / "table.json").read_text())
    assert table["task"] == "mugs" and table["held_out"]["task"] == "mugs_unseen"
    assert table["held_out"]["rows"]["gt3d"]["pairs"] == table["rows"]["gt3d"]["pairs"]
    assert table["held_out"]["rows"]["gt3d"]["paper"] is None  # the paper never tested unseen mugs
    assert "on `mugs_unseen`, the instances they never trained on" in (out / "table.md").read_text()

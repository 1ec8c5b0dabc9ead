"""The README's main job, `keydyn demo`, end to end at toy sizes."""

from __future__ import annotations

import json

import imageio.v3 as iio

from keydyn.cli import main
from keydyn.data.store import EpisodeStore

from .vision_fixtures import one_thread


def test_demo_main_job_runs_the_pixel_pipeline_and_resumes(tmp_path, capsys):
    """The demo from pixels at toy sizes: descriptors, SDS keypoints, their dynamics, goal reaching, GT 3D row."""
    out = tmp_path / "demo"
    size = ["--episodes", "4", "--steps", "14", "--width", "96", "--height", "72", "--visual-steps", "3"]
    size += ["--epochs", "2", "--horizon", "5"]
    args = ["demo", "--out", str(out), *size, "--goals", "1", "--videos", "1", "--workers", "1", "--no-progress"]
    with one_thread():
        assert main(args) == 0
    assert EpisodeStore.open(out / "dataset").num_episodes == 4
    assert '"episodes": 4' in (out / "dataset_info.json").read_text()
    assert iio.imread(out / "dataset_episode_0.mp4").shape[0] >= 2
    assert json.loads((out / "visual" / "last.json").read_text())["step"] == 3
    assert (out / "visual" / "descriptors.png").exists() and (out / "dynamics" / "keypoints.png").exists()
    assert json.loads((out / "dynamics" / "config.json").read_text())["latent"] == "sds"
    results = json.loads((out / "results.json").read_text())["results"]
    assert set(results) == {"SDS (MPPI)", "GT 3D (MPPI)"}
    assert all(summary["episodes"] == 1 for summary in results.values())
    assert (out / "goal_reaching" / "videos" / "episode_000.mp4").exists()
    printed = capsys.readouterr().out
    assert "| SDS (MPPI) |" in printed and "| GT 3D (MPPI) |" in printed
    assert (out / "results.md").read_text() in printed
    # Run again with more goals: the dataset and the models are reused, only the new episodes run.
    with one_thread():
        assert main([*args[:-7], "--goals", "2", "--videos", "1", "--workers", "1", "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())["results"]
    assert all(summary["episodes"] == 2 for summary in results.values())
    assert json.loads((out / "dynamics" / "last.json").read_text())["epoch"] == 2
    assert json.loads((out / "visual" / "last.json").read_text())["step"] == 3
    assert not list(tmp_path.glob(".*.creating"))

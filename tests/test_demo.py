"""The README's main job, `keydyn demo`: the shipped models from pixels, and the whole pipeline at toy sizes."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest

from keydyn.cli import main
from keydyn.data.store import EpisodeStore

from .vision_fixtures import one_thread


@pytest.mark.slow
def test_demo_from_scratch_runs_the_pixel_pipeline_and_resumes(tmp_path, capsys):
    """--from-scratch at toy sizes: dataset, descriptors, SDS keypoints, their dynamics, goal reaching, GT 3D row."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--from-scratch", "--recipe", "tiny", "--workers", "0", "--no-progress"]
    with one_thread():
        assert main(args) == 0
    assert EpisodeStore.open(out / "data" / "seed0").num_episodes == 4
    assert json.loads((out / "visual" / "seed0" / "last.json").read_text())["step"] == 4
    assert (out / "visual" / "seed0" / "descriptors.png").exists()
    assert (out / "runs" / "sds" / "seed0" / "keypoints.png").exists()
    table = json.loads((out / "table.json").read_text())
    assert set(table["rows"]) == {"gt3d", "ds", "sds", "wds", "wsds"}  # the tiny recipe reproduces all of table 1
    printed = capsys.readouterr().out
    assert "| SDS |" in printed and "| GT 3D |" in printed
    assert (out / "table.md").read_text() in printed
    # Run again: every stage is found finished and reused.
    with one_thread():
        assert main(args) == 0
    assert json.loads((out / "table.json").read_text()) == table


@pytest.mark.slow
def test_demo_drives_the_box_with_the_shipped_models(tmp_path, capsys):
    """The README's main job: the shipped SDS and GT 3D models from pixels, a table and a video, resumable."""
    out = tmp_path / "demo"
    args = ["demo", "--out", str(out), "--pairs", "1", "--videos", "1", "--workers", "0", "--no-progress"]
    with one_thread():
        assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"sds", "gt3d"} and results["models"]["task"] == "top_down"
    assert all(outcome["summary"]["episodes"] == 1 for outcome in results["results"].values())
    video = iio.imread(out / "sds" / "videos" / "episode_000.mp4")
    assert video.shape[1] >= 480 and video.shape[2] >= 2 * video.shape[1]  # both cameras at display size
    printed = capsys.readouterr().out
    assert "| SDS (MPPI) |" in printed and "| GT 3D (MPPI) |" in printed and (out / "results.md").read_text() in printed
    with one_thread():  # again: both evaluations are found finished
        assert main(args) == 0
    assert json.loads((out / "results.json").read_text())["results"] == results["results"]


def test_demo_from_scratch_refuses_settings_its_recipe_makes(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # refused while the command line is parsed
        main(["demo", "--out", str(tmp_path / "d"), "--from-scratch", "--pairs", "3"])
    assert exit_.value.code == 2
    assert "with --from-scratch the recipe sets the pairs" in " ".join(capsys.readouterr().err.split())

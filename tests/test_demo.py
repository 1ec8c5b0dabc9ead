"""The README's main job, `keydyn demo`: the shipped models from pixels, and the whole pipeline at toy sizes."""

from __future__ import annotations

import json

from keydyn.cli import main
from keydyn.data.store import EpisodeStore

from .vision_fixtures import one_thread


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

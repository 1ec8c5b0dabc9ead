"""`keydyn category-correspondence`: named mug parts on rendered mugs, and the measurement end to end with a
briefly trained descriptor network."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from keydyn.cli import main
from keydyn.data.collect import collect
from keydyn.evaluation.category_correspondence import part_names, render_part_scene
from keydyn.sim import PushingEnv, task_config
from keydyn.sim.env import mug_instances

from .conftest import small_collect_config
from .vision_fixtures import one_thread


def test_named_parts_are_on_each_mugs_surface_where_the_camera_sees_them():
    """Every mug's parts lie on its outer surface: in a scene of each of the 15 mugs many are seen (inside the
    object mask, at the rendered depth within 5 mm), from every ring, and the handle in several. A part off the
    surface (a wrong body frame, a wrong radius) would be seen nowhere."""
    names = part_names()
    seen_handle = 0
    for task in (task_config("mugs"), task_config("mugs_unseen")):
        env = PushingEnv(task)
        for instance in mug_instances(task):
            parts = render_part_scene(env, "top_down", instance, seed=instance, tolerance=0.005)
            seen = [names[k] for k in torch.nonzero(parts.visible).flatten()]
            assert len(seen) >= 8, (instance, seen)
            assert {name.split()[0] for name in seen} >= {"base", "body", "rim"}, (instance, seen)
            seen_handle += "handle" in seen
        env.close()
    assert seen_handle >= 3


@pytest.mark.slow
def test_category_correspondence_measures_parts_on_the_same_and_on_held_out_mugs(tmp_path, capsys):
    dataset, visual, out = tmp_path / "mugs", tmp_path / "visual", tmp_path / "parts.json"
    with one_thread():
        collect(small_collect_config(dataset, task="mugs", episodes=3))
        train = ["train-visual", "--dataset", str(dataset), "--out", str(visual), "--preset", "tiny"]
        assert main([*train, "--steps", "6", "--no-progress"]) == 0
        capsys.readouterr()
        measure = ["category-correspondence", "--visual-run", str(visual), "--checkpoint", "last"]
        assert main([*measure, "--task", "mugs_unseen", "--scenes", "3", "--pictures", "2", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed["other_mug"] == written["other_mug"] and printed["image_size"] == [96, 72]
    held_out, training = set(mug_instances(task_config("mugs_unseen"))), set(mug_instances(task_config("mugs")))
    for comparison in ("same_mug", "other_mug"):
        figures = written[comparison]
        assert figures["sightings"] > 0 and 0.0 <= figures["nearest_part_rate"] <= 1.0
        assert 0.0 <= figures["error_cm_median"] < 115.0  # a network of 6 steps: somewhere on the 80 cm table
    for row in written["sightings"]:
        assert row["reference_instance"] in training
        if row["comparison"] == "same_mug":
            assert row["target_instance"] == row["reference_instance"]
        else:
            assert row["target_instance"] in held_out
    assert out.with_suffix(".png").stat().st_size > 10_000
    # The same command again gives the same sightings (seeded scenes, a deterministic network), into a new folder.
    again = tmp_path / "new" / "again.json"
    with one_thread():
        assert main([*measure, "--task", "mugs_unseen", "--scenes", "3", "--out", str(again)]) == 0
    assert json.loads(again.read_text())["sightings"] == written["sightings"]
    # A network trained on another object is refused by name.
    boxes = tmp_path / "boxes"
    shutil.copytree(visual, boxes)
    (boxes / "task.json").write_text(json.dumps(task_config("top_down").to_dict()))
    assert main(["category-correspondence", "--visual-run", str(boxes)]) == 2
    assert "needs a network trained on the training mugs" in capsys.readouterr().err
    (boxes / "task.json").write_text(json.dumps(task_config("mugs_unseen").to_dict()))  # held-out mugs: not either
    assert main(["category-correspondence", "--visual-run", str(boxes)]) == 2

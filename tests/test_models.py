"""The models shipped with keydyn: they load, are checked on load, and reach their documented error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from keydyn.control.run import load_run
from keydyn.dynamics.train import load_dynamics
from keydyn.evaluation.evaluate import EvaluateConfig, evaluate
from keydyn.models import FORMAT_VERSION, manifest, models_root, shipped_run, shipped_tasks
from keydyn.presets import from_preset

from .vision_fixtures import one_thread

CHECKED_PAIRS = 3  # the first pairs of the 200, re-run and compared with the manifest's figures for them


@pytest.mark.parametrize("task", ["top_down", "angled"])
def test_models_ship_with_their_provenance(task):
    assert task in shipped_tasks()
    content = manifest(task)
    assert content["format"] == FORMAT_VERSION
    assert {"sds", "gt3d"} <= set(content["runs"])
    assert {"commit", "commands"} <= set(content["provenance"])
    for method in ("sds", "gt3d"):
        evaluation = content["runs"][method]["evaluation"]
        assert evaluation["pairs"] == 200 and len(evaluation["first_pairs_position_cm"]) >= CHECKED_PAIRS
    size = sum(path.stat().st_size for path in (models_root() / task).rglob("*") if path.is_file())
    assert size < 20e6


@pytest.mark.parametrize(("task", "method"), [(task, method) for task in shipped_tasks() for method in ("sds", "gt3d")])
def test_shipped_models_reach_their_documented_error_on_the_first_pairs(task, method, tmp_path):
    """The shipped run, evaluated on its first pairs here, gives the errors its manifest documents for them."""
    documented = manifest(task)["runs"][method]["evaluation"]
    with one_thread():
        outcome = evaluate(
            from_preset(
                EvaluateConfig,
                "evaluate",
                overrides={"episodes": CHECKED_PAIRS, "videos": 0, "workers": 0},
                run=shipped_run(task, method),
                out=tmp_path / method,
                progress=False,
            )
        )
    measured = [row["final_position_error_cm"] for row in outcome["episodes"]]
    expected = documented["first_pairs_position_cm"][:CHECKED_PAIRS]
    # Bit-identical on the machine that made them; other CPUs' float kernels may move a closed loop a little.
    assert np.mean(measured) == pytest.approx(np.mean(expected), abs=max(0.5, 0.25 * np.mean(expected)))


def test_a_corrupt_or_foreign_shipped_model_is_refused_with_a_clear_error(tmp_path):
    root = tmp_path / "models"
    shutil.copytree(models_root() / "top_down", root / "top_down")
    with open(root / "top_down" / "sds" / "best.safetensors", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))
    with pytest.raises(ValueError, match=r"sds/best.safetensors differs from the one shipped"):
        shipped_run("top_down", "sds", root)
    shutil.copy(models_root() / "top_down" / "sds" / "best.safetensors", root / "top_down" / "sds" / "best.safetensors")
    (root / "top_down" / "sds" / "last.json").write_text("{}")  # not shipped: `--checkpoint last` would read it
    with pytest.raises(ValueError, match=r"does not list \(sds/last.json\)"):
        shipped_run("top_down", "sds", root)
    (root / "top_down" / "sds" / "last.json").unlink()
    assert shipped_run("top_down", "sds", root) == root / "top_down" / "sds"
    content = json.loads((root / "top_down" / "manifest.json").read_text())
    (root / "top_down" / "manifest.json").write_text(json.dumps({**content, "format": FORMAT_VERSION + 1}))
    with pytest.raises(ValueError, match=f"format {FORMAT_VERSION + 1}"):
        manifest("top_down", root)
    with pytest.raises(ValueError, match="no shipped models for task 'kitchen'"):
        manifest("kitchen")


def test_a_checkpoint_of_another_shape_names_the_mismatch(tmp_path):
    run = tmp_path / "gt3d"
    shutil.copytree(shipped_run("top_down", "gt3d"), run)
    info = json.loads((run / "best.json").read_text())
    info["model"]["hidden"] = [h + 1 for h in info["model"]["hidden"]]
    (run / "best.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"best.safetensors does not fit its model configuration: .*size mismatch"):
        load_dynamics(run)


def test_shipped_descriptor_run_loads_from_the_package_like_any_run():
    trained = load_run(shipped_run("top_down", "sds"))
    assert trained.latent == "sds" and trained.encoder.needs_images

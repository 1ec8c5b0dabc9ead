"""Latent methods as plug-ins: the registry, a latent registered here going through training and evaluation
untouched, and the import layering of the package."""

from __future__ import annotations

import ast
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.torch import load_file

import keydyn
from keydyn.control.mpc import MPCConfig
from keydyn.control.run import control_setup
from keydyn.data.store import EpisodeStore
from keydyn.dynamics.train import TrainDynamicsConfig, load_dynamics, train_dynamics
from keydyn.evaluation.evaluate import EvaluateConfig, evaluate
from keydyn.latents import LatentMethod, get_latent, latent_names, register_latent
from keydyn.latents.descriptor import KeypointWeights
from keydyn.planning import CEMConfig
from keydyn.sim.config import TaskConfig
from keydyn.sim.env import object_yaw

BUILT_IN = ("gt3d", "ds", "sds", "wds", "wsds")


# -- the registry ---------------------------------------------------------------------------------------
def test_built_in_methods_are_registered_with_their_labels():
    assert latent_names()[: len(BUILT_IN)] == BUILT_IN
    labels = [get_latent(name).label for name in BUILT_IN]
    assert labels == ["GT 3D", "DS", "SDS", "WDS", "WSDS"]
    assert all(get_latent(name).augmentable for name in BUILT_IN)  # keypoint latents: SE(2) augmentation applies
    assert get_latent("gt3d").trainable(14) is None and get_latent("sds").trainable(17) is None
    weights = get_latent("wsds").trainable(17)  # 5 keypoints
    assert isinstance(weights, KeypointWeights) and weights.alpha.shape == (5, 5)
    assert set(get_latent("wsds").trainable_tensors(weights)) == {"keypoint_weights.alpha"}  # as runs store it
    assert get_latent("gt3d").cost_part(14) == slice(0, 12)  # the 4 keypoints; the pusher is free
    assert get_latent("gt3d").video_points(np.arange(14.0)).shape == (4, 3)


def test_unknown_and_taken_names_are_refused(small_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"unknown latent 'no_such_latent'.*gt3d, ds, sds, wds, wsds"):
        get_latent("no_such_latent")
    with pytest.raises(ValueError, match="unknown latent 'no_such_latent'"):
        TrainDynamicsConfig(dataset=small_dataset, out=tmp_path / "run", latent="no_such_latent")
    with pytest.raises(ValueError, match="already registered"):
        register_latent(get_latent("sds"))
    with pytest.raises(ValueError, match="--visual-run is only used by the latents ds, sds, wds, wsds"):
        TrainDynamicsConfig(dataset=small_dataset, out=tmp_path / "run", visual_run=tmp_path)


# -- a latent method defined and registered here ----------------------------------------------------------
def planar_pose(position: np.ndarray, quaternion: np.ndarray, pusher: np.ndarray) -> np.ndarray:
    """(N, 3) positions, (N, 4) quaternions, (N, 2) pusher xy -> (N, 6) float32 [x, y, cos yaw, sin yaw, pusher]."""
    yaw = np.array([object_yaw(q) for q in quaternion])
    return np.column_stack([position[:, :2], np.cos(yaw), np.sin(yaw), pusher]).astype(np.float32)


class PlanarPoseEncoder:
    """Reads the true pose from `info`, like GT 3D, but as a planar pose."""

    needs_images = False

    def reset(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Nothing to prepare."""

    def encode(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> np.ndarray:
        pusher = np.asarray(observation["pusher_position"])[None]
        return planar_pose(info["object_position"][None], info["object_quaternion"][None], pusher)[0]


class PlanarPose(LatentMethod):
    """A 6-d latent that is no keypoint layout (6 != 3 K + 2): every other hook keeps its default."""

    name = "test_planar_pose"
    label = "Planar pose"

    def dataset_latents(self, store: EpisodeStore, config: Any, out: Path) -> np.ndarray:
        frames = [np.asarray(store.frames(key)) for key in ("object_position", "object_quaternion", "pusher_position")]
        return planar_pose(*frames)

    def make_encoder(self, run_dir: Path, task: TaskConfig, which: str) -> PlanarPoseEncoder:
        return PlanarPoseEncoder()


def test_a_latent_registered_here_trains_and_evaluates(small_dataset, tmp_path):
    method = register_latent(PlanarPose())
    assert get_latent("test_planar_pose") is method and "test_planar_pose" in latent_names()
    settings = {"dataset": small_dataset, "latent": method.name, "horizon": 4, "epochs": 3, "hidden": (32, 32)}
    settings.update(val_fraction=0.34, lr=1e-3, progress=False)
    config = TrainDynamicsConfig(out=tmp_path / "run", **settings)
    assert config.augment and not config.augments  # asked for, but the method is not augmentable
    run = train_dynamics(config)
    unaugmented = train_dynamics(TrainDynamicsConfig(out=tmp_path / "unaugmented", augment=False, **settings))
    a, b = load_file(str(run / "last.safetensors")), load_file(str(unaugmented / "last.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    model = load_dynamics(run)
    assert model.latent_dim == 6

    mpc = MPCConfig(planner=CEMConfig(num_samples=64, num_elites=8, iterations=2), grid_headings=36)
    setup = control_setup(run, None, "best", mpc)
    assert isinstance(setup.encoder, PlanarPoseEncoder) and setup.method is method
    assert setup.controller.latent_part == slice(0, 4)  # object xy, cos and sin of its yaw
    assert setup.controller.state_part == slice(6, 10)  # those of the newest of n = 2 latents
    setup.env.close()
    out = tmp_path / "eval"
    results = evaluate(EvaluateConfig(run=run, out=out, episodes=2, workers=0, videos=1, mpc=mpc, progress=False))
    assert results["latent"] == method.name and results["label"] == "Planar pose (CEM)"
    assert [row["index"] for row in results["episodes"]] == [0, 1]
    assert all(row["steps"] > 0 and np.isfinite(row["final_position_error_cm"]) for row in results["episodes"])
    assert (out / "videos" / "episode_000.mp4").stat().st_size > 0  # recorded, with nothing drawn on it


class HalfUnreadable(PlanarPose):
    """The planar pose with every other frame unreadable (NaN): no window of n + H frames is whole."""

    name = "test_half_unreadable"

    def dataset_latents(self, store: EpisodeStore, config: Any, out: Path) -> np.ndarray:
        latents = super().dataset_latents(store, config, out)
        latents[::2] = np.nan
        return latents


def test_windows_lost_to_frames_the_latent_cannot_encode_are_named(small_dataset, tmp_path, monkeypatch):
    from keydyn.latents import registry

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    method = register_latent(HalfUnreadable())
    config = TrainDynamicsConfig(
        dataset=small_dataset, out=tmp_path / "run", latent=method.name, horizon=4, epochs=1, progress=False
    )
    with pytest.raises(ValueError, match=r"every training window .* could not encode \(\d+ of \d+ frames have no"):
        train_dynamics(config)
    assert not (tmp_path / "run" / "last.json").exists()


# -- import layering --------------------------------------------------------------------------------------
LAYERS = (
    {"sim"},
    {"data"},
    {"vision"},
    {"latents"},
    {"dynamics"},
    {"planning"},
    {"control"},
    {"evaluation"},
    {"remote"},
    {"cli", "demo"},
)
UTILITIES = {
    "runs",
    "files",
    "plots",
    "video",
    "machine",
    "presets",
    "models",
    "locks",
    "workers",
    "cluster",
    "distributed",
}
"""Shared modules any layer may import; they import only each other, sim and data."""
UTILITY_IMPORTS = UTILITIES | {"sim", "data"}
SOURCE = Path(keydyn.__file__).parent


def imported_parts(path: Path) -> set[str]:
    """The keydyn subpackages and top-level modules (e.g. "sim", "runs") that the module at `path` imports,
    anywhere in it (also inside functions); "" for the keydyn package itself."""
    package = path.relative_to(SOURCE.parent).parts[:-1]  # ("keydyn", "sim") for keydyn/sim/env.py
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name.split(".") for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            targets = [base + (node.module.split(".") if node.module else [])]
        else:
            continue
        found.update([*target, ""][1] for target in targets if target[0] == "keydyn")
    return found


def layer_of(part: str) -> int:
    ranks = [rank for rank, names in enumerate(LAYERS) if part in names]
    assert ranks, f"keydyn.{part} belongs to no layer: add it to LAYERS or UTILITIES in {__file__}"
    return ranks[0]


def test_each_layer_imports_only_its_own_and_earlier_layers():
    violations = []
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        if parts == ("__init__",):
            continue
        own = parts[0]
        imported = imported_parts(path) - {own, ""}
        if own in UTILITIES:
            violations += [f"{path}: utility imports keydyn.{part}" for part in imported - UTILITY_IMPORTS]
            continue
        rank = layer_of(own)
        violations += [
            f"{path}: keydyn.{own} imports the later keydyn.{part}"
            for part in imported - UTILITIES
            if layer_of(part) > rank
        ]
    assert not violations, "\n".join(violations)

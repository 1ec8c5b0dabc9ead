"""Load what a trained run needs at control time: its dynamics model, its latent encoder and its task."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from keydyn.control.encoders import GroundTruthEncoder, LatentEncoder
from keydyn.control.mpc import MPCConfig, MPCController
from keydyn.dynamics.model import DynamicsMLP
from keydyn.dynamics.train import load_dynamics, load_keypoint_weights
from keydyn.keypoints.latents import DESCRIPTOR_LATENTS, load_descriptor_encoder
from keydyn.sim.config import TASK_NAMES, TaskConfig, task_config
from keydyn.sim.env import PushingEnv


@dataclass
class TrainedRun:
    """A dynamics training run loaded for control."""

    path: Path
    model: DynamicsMLP
    encoder: LatentEncoder
    task: TaskConfig
    latent: str


def run_task(run_dir: Path, task: str | None = None) -> TaskConfig:
    """The task a run was trained on (its task.json), or the named task at that run's camera resolution."""
    path = Path(run_dir) / "task.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no task.json; is it a run directory written by keydyn train-dynamics?")
    trained = TaskConfig.from_dict(json.loads(path.read_text()))
    if task is None or task == trained.name:
        return trained
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASK_NAMES)}")
    return replace(task_config(task), width=trained.width, height=trained.height)


def make_encoder(
    latent: str, task: TaskConfig, run_dir: Path | None = None, which: Literal["best", "last"] = "best"
) -> LatentEncoder:
    """The encoder of a latent kind: "gt3d", or a descriptor latent ("ds", "sds", "wds", "wsds"), which is
    rebuilt from the run directory `run_dir` (references, visual network, and the `which` checkpoint's
    keypoint weights for wds / wsds)."""
    if latent == "gt3d":
        return GroundTruthEncoder(task)
    if latent in DESCRIPTOR_LATENTS:
        if run_dir is None:
            raise ValueError(f"latent {latent!r} is rebuilt from its dynamics run: pass run_dir")
        return load_descriptor_encoder(run_dir, load_keypoint_weights(run_dir, which))
    raise ValueError(f"latent {latent!r} has no encoder; supported: gt3d, {', '.join(DESCRIPTOR_LATENTS)}")


def load_run(
    run_dir: str | Path, task: str | None = None, which: Literal["best", "last"] = "best", device: str = "cpu"
) -> TrainedRun:
    """Load a run's model (`which` checkpoint), encoder and task (`task` overrides the trained task's name)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{run_dir} is not a training run (no config.json); train one with keydyn train-dynamics"
        )
    latent = json.loads((run_dir / "config.json").read_text())["latent"]
    resolved = run_task(run_dir, task)
    model = load_dynamics(run_dir, which, device)
    return TrainedRun(run_dir, model, make_encoder(latent, resolved, run_dir, which), resolved, latent)


@dataclass
class ControlSetup:
    """An environment of a run's task with the run's encoder and an MPC controller over its dynamics."""

    env: PushingEnv
    encoder: LatentEncoder
    controller: MPCController


def control_setup(
    run_dir: str | Path, task: str | None, which: Literal["best", "last"], mpc: MPCConfig
) -> ControlSetup:
    """Load a run and build what a closed-loop episode needs (rendering only if the encoder reads images)."""
    trained = load_run(run_dir, task, which)
    env = PushingEnv(trained.task, images=trained.encoder.needs_images)
    return ControlSetup(env, trained.encoder, MPCController(trained.model, mpc))

"""Load what a trained run needs at control time: its dynamics model, its latent method and encoder, its task."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from keydyn.control.mpc import MPCConfig, MPCController
from keydyn.dynamics.model import DynamicsMLP
from keydyn.dynamics.train import load_dynamics
from keydyn.files import read_json
from keydyn.latents import LatentEncoder, LatentMethod, get_latent
from keydyn.sim.config import TaskConfig, task_config
from keydyn.sim.environment import PushingEnvironment, make_environment


@dataclass
class TrainedRun:
    """A dynamics training run loaded for control: `latent` names its `method` (keydyn.latents)."""

    path: Path
    model: DynamicsMLP
    encoder: LatentEncoder
    task: TaskConfig
    latent: str
    method: LatentMethod


def run_task(run_dir: Path, task: str | None = None) -> TaskConfig:
    """The task a run was trained on (its task.json), or the named task at that run's camera resolution."""
    path = Path(run_dir) / "task.json"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} has no task.json; is it a run directory written by keydyn train-dynamics?")
    trained = TaskConfig.from_dict(read_json(path))
    if task is None or task == trained.name:
        return trained
    return replace(task_config(task), width=trained.width, height=trained.height)


def load_run(
    run_dir: str | Path, task: str | None = None, which: Literal["best", "last"] = "best", device: str = "cpu"
) -> TrainedRun:
    """Load a run's model (`which` checkpoint), encoder and task (`task` overrides the trained task's name)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise FileNotFoundError(
            f"{run_dir} is not a training run (no config.json); train one with keydyn train-dynamics"
        )
    settings = read_json(run_dir / "config.json")
    if not isinstance(settings, dict) or "latent" not in settings:
        raise ValueError(
            f"{run_dir} is not a dynamics run (its config.json names no latent; a run of keydyn train-visual?); "
            "pass a run directory of keydyn train-dynamics"
        )
    latent = settings["latent"]
    method = get_latent(latent)
    resolved = run_task(run_dir, task)
    model = load_dynamics(run_dir, which, device)
    return TrainedRun(run_dir, model, method.make_encoder(run_dir, resolved, which), resolved, latent, method)


@dataclass
class ControlSetup:
    """An environment of a run's task with the run's encoder and an MPC controller over its dynamics, whose costs
    compare the entries of the latent the run's `method` names."""

    env: PushingEnvironment
    encoder: LatentEncoder
    controller: MPCController
    method: LatentMethod


def control_setup(
    run_dir: str | Path, task: str | None, which: Literal["best", "last"], mpc: MPCConfig
) -> ControlSetup:
    """Load a run and build what a closed-loop episode needs (rendering only if the encoder reads images)."""
    trained = load_run(run_dir, task, which)
    env = make_environment(trained.task, images=trained.encoder.needs_images)
    return ControlSetup(env, trained.encoder, run_controller(trained, mpc), trained.method)


def run_controller(trained: TrainedRun, mpc: MPCConfig) -> MPCController:
    """An MPC controller over a loaded run's dynamics, its costs comparing the entries its latent method names.
    It plans within min(mpc.action_limit, the task's max_speed) per axis: a velocity the task's pusher would clip
    is never planned (keydyn's tasks: both 0.3 m/s; gymnasium_pusher's limit is 0.2 m/s)."""
    if trained.task.max_speed < mpc.action_limit:
        mpc = replace(mpc, action_limit=trained.task.max_speed)
    return MPCController(trained.model, mpc, trained.method.cost_part(trained.model.latent_dim))

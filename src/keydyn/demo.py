"""`keydyn demo`: the control pipeline end to end on CPU-friendly defaults.

collect a small dataset -> train GT 3D keypoint dynamics -> MPC goal reaching on a few start/goal pairs, writing
the dataset summary, an episode video, the training run, results.json / results.md, plots and goal-reaching
videos under `out`. Every stage resumes where it stopped when the demo is run again with the same settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from keydyn.data.collect import CollectConfig, collect
from keydyn.data.inspect import dataset_summary, format_summary, write_episode_video
from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics
from keydyn.evaluation.evaluate import EvaluateConfig, evaluate
from keydyn.files import write_json_atomic


@dataclass(frozen=True)
class DemoConfig:
    """The pipeline on CPU-friendly defaults (about 2 minutes on 2 cores)."""

    out: Path = Path("demo_out")
    task: str = "top_down"
    episodes: int = 150
    """Random-push episodes to collect."""
    steps: int = 40
    width: int = 160
    """Camera width in pixels (GT 3D dynamics read no pixels; a smaller image collects faster)."""
    height: int = 120
    epochs: int = 200
    """Dynamics training epochs (learning rate 1e-3, then 1e-4 for the second half)."""
    val_fraction: float = 0.2
    """Episodes held out to pick the best model."""
    horizon: int = 10
    """Rollout steps of the dynamics loss."""
    goals: int = 8
    """Start/goal pairs to drive the object to."""
    videos: int = 2
    workers: int = 2
    seed: int = 0
    progress: bool = True


def run_demo(config: DemoConfig) -> dict:
    """Run (or resume) every stage; returns the evaluation results."""
    dataset, run, evaluation = config.out / "dataset", config.out / "dynamics", config.out / "goal_reaching"
    store = collect(
        CollectConfig(
            out=dataset,
            task=config.task,
            episodes=config.episodes,
            steps=config.steps,
            width=config.width,
            height=config.height,
            workers=config.workers,
            seed=config.seed,
            resume=dataset.exists(),
            progress=config.progress,
        )
    )
    summary = dataset_summary(store)
    write_json_atomic(config.out / "dataset_info.json", summary)
    write_episode_video(store, 0, config.out / "dataset_episode_0.mp4")
    print(format_summary(summary))
    train_dynamics(
        TrainDynamicsConfig(
            dataset=dataset,
            out=run,
            epochs=config.epochs,
            horizon=config.horizon,
            val_fraction=config.val_fraction,
            lr=1e-3,
            lr_decay_epochs=max(1, config.epochs // 2),
            seed=config.seed,
            resume=(run / "last.json").exists(),
            progress=config.progress,
        )
    )
    return evaluate(
        EvaluateConfig(
            run=run,
            out=evaluation,
            episodes=config.goals,
            videos=config.videos,
            workers=config.workers,
            seed=config.seed,
            resume=(evaluation / "config.json").exists(),
            progress=config.progress,
        )
    )

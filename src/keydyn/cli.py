"""The `keydyn` command line: one subcommand per capability.

keydyn collect --task top_down --episodes 500 --steps 40 --out data/top_down --workers 2
keydyn dataset info data/top_down [--json]
keydyn dataset video data/top_down --episode 0 --out episode0.mp4
keydyn train-dynamics --dataset data/top_down --out runs/gt3d_top_down
keydyn train-visual --dataset data/top_down --out runs/descriptors_top_down
keydyn evaluate --run runs/gt3d_top_down --episodes 200 --out eval/gt3d_top_down
keydyn track --run runs/gt3d_top_down --out track/gt3d_top_down
keydyn table eval/gt3d_top_down eval/sds_top_down --out table1.md
keydyn preview --task angled --out angled.png
keydyn demo --out demo_out
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from keydyn.data.collect import CollectConfig, collect
from keydyn.data.inspect import dataset_summary, format_summary, write_episode_video
from keydyn.data.store import EpisodeStore, StoreError
from keydyn.demo import DemoConfig, run_demo
from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics
from keydyn.evaluation.evaluate import EvaluateConfig, evaluate
from keydyn.evaluation.imitation import TrackConfig, run_track
from keydyn.evaluation.report import comparison_table
from keydyn.files import write_text_atomic
from keydyn.sim.preview import write_task_picture
from keydyn.vision.train import TrainVisualConfig, train_visual


@dataclass(frozen=True)
class DatasetInfo:
    """Summarise a dataset: episodes, lengths, cameras, configuration."""

    path: tyro.conf.Positional[Path]
    json: bool = False
    """Print JSON instead of text."""

    def execute(self) -> None:
        summary = dataset_summary(EpisodeStore.open(self.path))
        print(json.dumps(summary, indent=2) if self.json else format_summary(summary))


@dataclass(frozen=True)
class DatasetVideo:
    """Write a video of one episode: every camera side by side, the object mask outlined."""

    path: tyro.conf.Positional[Path]
    out: Path
    """Output .mp4 (or .gif)."""
    episode: int = 0
    fps: float = 10.0

    def execute(self) -> None:
        written = write_episode_video(EpisodeStore.open(self.path), self.episode, self.out, self.fps)
        print(f"wrote {written}")


@dataclass(frozen=True)
class Dataset:
    """Inspect a dataset."""

    command: tyro.conf.OmitSubcommandPrefixes[
        Annotated[DatasetInfo, tyro.conf.subcommand("info")] | Annotated[DatasetVideo, tyro.conf.subcommand("video")]
    ]

    def execute(self) -> None:
        self.command.execute()


@dataclass(frozen=True)
class Collect(CollectConfig):
    """Collect random-push episodes of a task into a zarr dataset (resumable, parallel, deterministic)."""

    def execute(self) -> None:
        store = collect(self)
        print(format_summary(dataset_summary(store)))


@dataclass(frozen=True)
class TrainDynamics(TrainDynamicsConfig):
    """Train a latent dynamics model (multi-step rollout loss, SE(2) augmentation) on a dataset."""

    def execute(self) -> None:
        print(f"wrote {train_dynamics(self)}")


@dataclass(frozen=True)
class TrainVisual(TrainVisualConfig):
    """Train a dense descriptor network (heatmap + spatial expectation losses) on a dataset's camera views."""

    def execute(self) -> None:
        print(f"wrote {train_visual(self)}")


@dataclass(frozen=True)
class Evaluate(EvaluateConfig):
    """Goal reaching with MPC on fixed start/goal pairs: results.json, results.md, plots and videos."""

    def execute(self) -> None:
        evaluate(self)
        print((self.out / "results.md").read_text())
        print(f"wrote {self.out}/results.json, results.md, errors.png and videos/")


@dataclass(frozen=True)
class Track(TrackConfig):
    """Track a demonstrated trajectory with MPC from its start and offset starts (region of attraction)."""

    def execute(self) -> None:
        summary = run_track(self)["summary"]
        start = summary["demonstration_start"]
        print(
            f"from the demonstration's start: {start['final_position_error_cm']:.2f} cm, "
            f"{start['final_angle_error_deg']:.1f} deg; over {summary['runs']} starts: "
            f"{100 * summary['success_rate']:.0f}% within 3 cm and 30 deg"
        )
        print(f"wrote {self.out}/track.json, region_of_attraction.png and videos/track.mp4")


@dataclass(frozen=True)
class Table:
    """Compare evaluations (directories of `keydyn evaluate`) in one Markdown table per task, like Table 1."""

    evaluations: tyro.conf.Positional[tuple[Path, ...]]
    out: Path | None = None
    """Also write the table to this Markdown file."""

    def execute(self) -> None:
        table = comparison_table(self.evaluations)
        if self.out is not None:
            write_text_atomic(self.out, table)
        print(table)


@dataclass(frozen=True)
class Preview:
    """Save a picture of a task: RGB, depth and object mask from every camera."""

    task: Literal["top_down", "angled", "occlusions", "mugs"] = "top_down"
    out: Path = Path("task.png")
    seed: int = 0
    width: int = 320
    height: int = 240

    def execute(self) -> None:
        print(f"wrote {write_task_picture(self.task, self.out, self.seed, width=self.width, height=self.height)}")


@dataclass(frozen=True)
class Demo(DemoConfig):
    """The pipeline from pixels on CPU-friendly defaults: collect, train descriptors, choose SDS keypoints, train
    their dynamics, drive the object to goals with MPC, and compare with GT 3D keypoints."""

    def execute(self) -> None:
        print(run_demo(self)["table"])
        print(f"wrote {self.out}: results.md and one directory per stage (see `keydyn.demo`)")


Command = (
    Annotated[Collect, tyro.conf.subcommand("collect")]
    | Annotated[Dataset, tyro.conf.subcommand("dataset")]
    | Annotated[TrainDynamics, tyro.conf.subcommand("train-dynamics")]
    | Annotated[TrainVisual, tyro.conf.subcommand("train-visual")]
    | Annotated[Evaluate, tyro.conf.subcommand("evaluate")]
    | Annotated[Track, tyro.conf.subcommand("track")]
    | Annotated[Table, tyro.conf.subcommand("table")]
    | Annotated[Preview, tyro.conf.subcommand("preview")]
    | Annotated[Demo, tyro.conf.subcommand("demo")]
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `keydyn` console script; returns the exit status."""
    try:
        command = tyro.cli(Command, args=argv, prog="keydyn", config=(tyro.conf.OmitSubcommandPrefixes,))
        command.execute()
    except (StoreError, ValueError, FileNotFoundError) as error:
        print(f"keydyn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("keydyn: interrupted; rerun the same command with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

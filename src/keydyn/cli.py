"""The `keydyn` command line: one subcommand per capability.

keydyn collect --task top_down --episodes 500 --steps 40 --out data/top_down --workers 2
keydyn dataset info data/top_down [--json]
keydyn dataset video data/top_down --episode 0 --out episode0.mp4
keydyn dataset verify data/top_down
keydyn train-dynamics --dataset data/top_down --out runs/gt3d_top_down
keydyn train-visual --dataset data/top_down --out runs/descriptors_top_down
keydyn train-transporter --dataset data/top_down --out runs/transporter_top_down --crop mask
keydyn evaluate --run runs/gt3d_top_down --episodes 200 --out eval/gt3d_top_down
keydyn track --run runs/gt3d_top_down --out track/gt3d_top_down
keydyn keypoint-accuracy --dataset data/top_down --run runs/sds_top_down
keydyn category-correspondence --visual-run runs/descriptors_mugs --task mugs_unseen --out parts.json
keydyn table eval/gt3d_top_down eval/sds_top_down --out table1.md
keydyn reproduce table1 --task angled --seeds 3 --out repro/angled
keydyn reproduce table2 --task top_down --out repro/table2_top_down
keydyn preview --task angled --out angled.png
keydyn serve --run runs/sds_top_down --address tcp://0.0.0.0:5555
keydyn robot --address tcp://127.0.0.1:5555 --out robot/harness
keydyn demo --out demo_out

collect, train-visual, train-transporter, train-dynamics, evaluate and reproduce start from their `default` preset
(the best recipe measured; `keydyn/presets/<command>/default.yaml`); `--preset NAME` starts from another (each command's
`--help` lists its own: `paper`, `original`, ...); flags given override the preset.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import tyro
from tqdm import tqdm

from keydyn.data.collect import CollectConfig, collect
from keydyn.data.inspect import dataset_summary, format_summary, write_episode_video
from keydyn.data.store import EpisodeStore, StoreError
from keydyn.demo import DemoConfig, run_demo
from keydyn.distributed import writes_files
from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics
from keydyn.evaluation.category_correspondence import CategoryCorrespondenceConfig, category_correspondence
from keydyn.evaluation.evaluate import EvaluateConfig, evaluate
from keydyn.evaluation.imitation import TrackConfig, run_track
from keydyn.evaluation.keypoint_accuracy import KeypointAccuracyConfig, keypoint_accuracy
from keydyn.evaluation.report import comparison_table
from keydyn.evaluation.reproduce import ReproduceConfig, format_table, run_reproduce
from keydyn.files import write_text_atomic
from keydyn.locks import DirectoryBusyError
from keydyn.presets import DEFAULT, cli_default, preset_names
from keydyn.remote.robot import RobotConfig, run_robot
from keydyn.remote.session import ServeConfig
from keydyn.sim.config import check_seed, task_config
from keydyn.sim.preview import check_picture_path, write_task_picture
from keydyn.vision.train import TrainVisualConfig, train_visual
from keydyn.vision.transporter_train import TrainTransporterConfig, train_transporter


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
class DatasetVerify:
    """Check a whole dataset: every chunk file present and passing its checksum, every episode's contents equal
    to the SHA-256 written when it was collected. Lists each damaged episode; exit status 2 when there is one."""

    path: tyro.conf.Positional[Path]
    progress: bool = True

    def execute(self) -> None:
        store = EpisodeStore.open(self.path, check_chunks=False)
        damage = store.verify(lambda items: tqdm(items, desc="verify", unit="episode", disable=not self.progress))
        if damage:
            print(damage.report(limit=store.num_episodes))
            raise StoreError(
                f"{self.path}: {len(damage.episodes)} of {store.num_episodes} episodes are damaged "
                f"({len(damage.chunks)} damaged chunk files); `keydyn collect --resume --out {self.path}` with the "
                "settings it was collected with re-collects them"
            )
        print(f"{self.path}: all {store.num_episodes} episodes ({store.num_frames} frames) verified intact")


def preset_choice(command: str, help: str | None = None) -> Any:
    """The type of a command-line setting that names one of `command`'s presets: --help lists them; `help`, when
    given, replaces the field's docstring there."""
    return Annotated[str, tyro.conf.arg(metavar="{" + ",".join(preset_names(command)) + "}", help=help)]


def preset_flag(command: str) -> Any:
    """The type of subcommand `command`'s own --preset. `split_preset` takes the flag off the command line before
    tyro parses the rest; the field is there for --help."""
    return preset_choice(
        command,
        help=f"The recipe these settings start from (keydyn/presets/{command}/<NAME>.yaml; `default` is the best "
        "measured); flags given override it.",
    )


CollectPreset = preset_flag("collect")
TrainDynamicsPreset = preset_flag("train-dynamics")
TrainVisualPreset = preset_flag("train-visual")
TrainTransporterPreset = preset_flag("train-transporter")
EvaluatePreset = preset_flag("evaluate")
ReproducePreset = preset_flag("reproduce")
CollectPresetName = preset_choice("collect")
TrainDynamicsPresetName = preset_choice("train-dynamics")
TrainVisualPresetName = preset_choice("train-visual")
TrainTransporterPresetName = preset_choice("train-transporter")
EvaluatePresetName = preset_choice("evaluate")


@dataclass(frozen=True)
class Dataset:
    """Inspect or verify a dataset."""

    command: tyro.conf.OmitSubcommandPrefixes[
        Annotated[DatasetInfo, tyro.conf.subcommand("info")]
        | Annotated[DatasetVideo, tyro.conf.subcommand("video")]
        | Annotated[DatasetVerify, tyro.conf.subcommand("verify")]
    ]

    def execute(self) -> None:
        self.command.execute()


@dataclass(frozen=True)
class Collect(CollectConfig):
    """Collect random-push episodes of a task into a zarr dataset (resumable, parallel, deterministic)."""

    preset: CollectPreset = DEFAULT

    def execute(self) -> None:
        store = collect(self)
        print(format_summary(dataset_summary(store)))


@dataclass(frozen=True)
class TrainDynamics(TrainDynamicsConfig):
    """Train a latent dynamics model (multi-step rollout loss, SE(2) augmentation) on a dataset."""

    preset: TrainDynamicsPreset = DEFAULT

    def execute(self) -> None:
        written = train_dynamics(self)
        if writes_files():  # rank 0 of a torchrun run
            print(f"wrote {written}")


@dataclass(frozen=True)
class TrainVisual(TrainVisualConfig):
    """Train a dense descriptor network (heatmap + spatial expectation losses) on a dataset's camera views."""

    preset: TrainVisualPreset = DEFAULT

    def execute(self) -> None:
        written = train_visual(self)
        if writes_files():  # rank 0 of a torchrun run
            print(f"wrote {written}")


@dataclass(frozen=True)
class TrainTransporter(TrainTransporterConfig):
    """Train a Transporter keypoint network (feature transport, L2 reconstruction) on one camera's frames: the
    Transporter 2D / 3D baselines' visual model."""

    preset: TrainTransporterPreset = DEFAULT

    def execute(self) -> None:
        print(f"wrote {train_transporter(self)}")


@dataclass(frozen=True)
class Evaluate(EvaluateConfig):
    """Goal reaching with MPC on fixed start/goal pairs: results.json, results.md, plots and videos."""

    preset: EvaluatePreset = DEFAULT

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
class KeypointAccuracy(KeypointAccuracyConfig):
    """Measure descriptor keypoints on a dataset's held-out episodes against the true object points: 3D error of
    visible points, confidence of visible against occluded ones (JSON on standard output)."""

    def execute(self) -> None:
        print(json.dumps(keypoint_accuracy(self), indent=2))


@dataclass(frozen=True)
class CategoryCorrespondence(CategoryCorrespondenceConfig):
    """Locate named parts of a mug (rim, body, base, handle) on the same mug and on another one with a descriptor
    network trained on mugs: how far each lands from the same part (JSON on standard output; --out also writes
    every sighting and a picture)."""

    def execute(self) -> None:
        print(json.dumps(category_correspondence(self), indent=2))


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

    task: str = "top_down"
    """A task: top_down, angled, occlusions, mugs, or another registered one (keydyn.sim.task_names())."""
    out: Path = Path("task.png")
    seed: int = 0
    width: int = 320
    height: int = 240

    def __post_init__(self) -> None:
        task_config(self.task)  # an unknown task is named with the known ones
        check_seed(self.seed)
        check_picture_path(self.out)

    def execute(self) -> None:
        print(f"wrote {write_task_picture(self.task, self.out, self.seed, width=self.width, height=self.height)}")


@dataclass(frozen=True)
class Reproduce(ReproduceConfig):
    """Reproduce a table of the paper on one task: every stage (collect, train-visual or train-transporter,
    train-dynamics, evaluate) for every method and seed, sharing the data and visual networks of a seed; rerun to
    resume. Writes table.md."""

    table: tyro.conf.Positional[Literal["table1", "table2"]] = "table1"
    preset: ReproducePreset = DEFAULT
    collect: CollectPresetName = DEFAULT
    visual: TrainVisualPresetName = DEFAULT
    transporter: TrainTransporterPresetName = DEFAULT
    dynamics: TrainDynamicsPresetName = DEFAULT
    evaluation: EvaluatePresetName = DEFAULT

    def execute(self) -> None:
        print(format_table(run_reproduce(self)))
        print(f"wrote {self.out}/table.md and table.json")


@dataclass(frozen=True)
class Serve(ServeConfig):
    """Serve a run's controller to a robot whose software lives elsewhere: reset / act / plan / save / info requests
    over ZMQ from keydyn.remote.client (needs the `robot` extra: pip install -e ".[robot]")."""

    def execute(self) -> None:
        try:
            from keydyn.remote.server import serve
        except ModuleNotFoundError as error:
            raise ValueError(
                f'keydyn serve needs {error.name}: install keydyn\'s robot extra (pip install -e ".[robot]")'
            ) from error
        serve(self)


@dataclass(frozen=True)
class Robot(RobotConfig):
    """Be the robot for `keydyn serve`: drive a simulated task (the harness: an iiwa arm and a D415-like camera)
    through the client, track a demonstration from its start and offset starts (track.json, the region of
    attraction), or with --sweep measure the error's growth with depth noise, latency and calibration error."""

    def execute(self) -> None:
        results = run_robot(self)
        if self.sweep:
            for row in results["runs"]:
                print(
                    f"{row['factor']} {row['value']:g}: {row['final_position_error_cm']:.2f} cm, "
                    f"{row['final_angle_error_deg']:.1f} deg"
                )
            print(f"wrote {self.out}/degradation.json and degradation.png")
            return
        summary = results["summary"]
        start, loop = summary["demonstration_start"], summary["loop"]
        print(
            f"from the demonstration's start: {start['final_position_error_cm']:.2f} cm, "
            f"{start['final_angle_error_deg']:.1f} deg; over {summary['runs']} starts: "
            f"{100 * summary['success_rate']:.0f}% within 3 cm and 30 deg"
        )
        if loop["acts"]:
            print(
                f"act round trip {1000 * loop['act_round_trip_mean_s']:.0f} ms mean (server "
                f"{1000 * loop['server_time_mean_s']:.0f} ms), max {1000 * loop['act_round_trip_max_s']:.0f} ms; "
                f"{100 * loop['within_control_period']:.0f}% of acts ready within the {loop['control_dt_s']:g} s "
                f"control period after the camera's {1000 * loop['camera_latency_s']:.0f} ms"
            )
        print(f"wrote {self.out}/track.json and region_of_attraction.png")


@dataclass(frozen=True)
class Demo(DemoConfig):
    """Goal reaching from pixels with the shipped models (SDS beside GT 3D), in a few minutes on 2 CPU cores; with
    --from-scratch the whole pipeline: collect, train descriptors, choose SDS keypoints, train dynamics, evaluate."""

    def execute(self) -> None:
        print(run_demo(self)["table"])
        written = "table.md" if self.from_scratch else "results.md"
        print(f"wrote {self.out}: {written} and one directory per stage (see `keydyn.demo`)")


PRESET_COMMANDS: dict[str, type] = {
    "collect": Collect,
    "train-visual": TrainVisual,
    "train-transporter": TrainTransporter,
    "train-dynamics": TrainDynamics,
    "evaluate": Evaluate,
    "reproduce": Reproduce,
}
"""The subcommands whose settings start from a preset (keydyn/presets/<command>/)."""


def split_preset(argv: list[str]) -> tuple[str | None, str, list[str]]:
    """(subcommand, preset name, argv without --preset) of a command line; the preset is "default" unless
    `--preset NAME` or `--preset=NAME` is given.

    Raises:
        ValueError: --preset without a name, or for a subcommand that has no presets.
    """
    preset, rest, index = DEFAULT, [], 0
    while index < len(argv):
        arg = argv[index]
        if arg == "--preset":
            if index + 1 >= len(argv) or argv[index + 1].startswith("-"):
                raise ValueError("--preset needs a name, e.g. --preset paper")
            preset, index = argv[index + 1], index + 2
            continue
        if arg.startswith("--preset="):
            preset = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        index += 1
    command = next((arg for arg in rest if not arg.startswith("-")), None)
    if preset != DEFAULT and command not in PRESET_COMMANDS:
        raise ValueError(f"`keydyn {command}` has no presets; --preset works with {', '.join(PRESET_COMMANDS)}")
    if command in PRESET_COMMANDS and preset not in preset_names(command):
        known = ", ".join(preset_names(command))
        raise ValueError(f"no preset {preset!r} for `keydyn {command}`; its presets: {known}")
    return command, preset, rest


def command_type(command: str | None, preset: str) -> Any:
    """The union of subcommands, `command`'s settings starting from `preset` and the others' from their default."""

    def entry(name: str) -> Any:
        cls = PRESET_COMMANDS[name]
        chosen = preset if name == command else DEFAULT
        default = cli_default(cls, name, chosen)
        object.__setattr__(default, "preset", chosen)
        return Annotated[cls, tyro.conf.subcommand(name, default=default)]

    return (
        entry("collect")
        | Annotated[Dataset, tyro.conf.subcommand("dataset")]
        | entry("train-dynamics")
        | entry("train-visual")
        | entry("train-transporter")
        | entry("evaluate")
        | Annotated[Track, tyro.conf.subcommand("track")]
        | Annotated[KeypointAccuracy, tyro.conf.subcommand("keypoint-accuracy")]
        | Annotated[CategoryCorrespondence, tyro.conf.subcommand("category-correspondence")]
        | Annotated[Table, tyro.conf.subcommand("table")]
        | entry("reproduce")
        | Annotated[Preview, tyro.conf.subcommand("preview")]
        | Annotated[Serve, tyro.conf.subcommand("serve")]
        | Annotated[Robot, tyro.conf.subcommand("robot")]
        | Annotated[Demo, tyro.conf.subcommand("demo")]
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `keydyn` console script; returns the exit status."""
    try:
        name, preset, args = split_preset(list(sys.argv[1:] if argv is None else argv))
        command = tyro.cli(
            command_type(name, preset), args=args, prog="keydyn", config=(tyro.conf.OmitSubcommandPrefixes,)
        )
        command.execute()
    except (StoreError, DirectoryBusyError, ValueError, OSError) as error:  # OSError: files (a full disk, permissions)
        print(f"keydyn: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "keydyn: interrupted; rerun the same command to continue (collect, train-visual, train-transporter, "
            "train-dynamics and "
            "evaluate with --resume)",
            file=sys.stderr,
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

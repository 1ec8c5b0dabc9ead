"""`keydyn track`: one-shot imitation of a demonstration, and its region of attraction (paper figure 7).

The output directory holds:
    config.json               the resolved TrackConfig
    track.json                the demonstration, one row per start offset (final errors against the
                              demonstration's final pose), and the summary
    region_of_attraction.png  final error per start offset: x vs yaw and y vs yaw, as the paper's figure 7
    videos/track.mp4          tracking from the demonstration's own start: demonstration keypoints green
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro

from keydyn.cluster import ClusterConfig, map_units
from keydyn.control.mpc import MPCConfig
from keydyn.control.run import control_setup
from keydyn.data.store import EpisodeStore
from keydyn.evaluation.evaluate import episode_seed
from keydyn.evaluation.goals import GoalPairConfig, goal_pair
from keydyn.evaluation.report import stops
from keydyn.evaluation.scene import draw_frame
from keydyn.evaluation.tracking import Demonstration, pair_push, perturbed_start, record_demonstration, track
from keydyn.evaluation.viewer import ViewerConfig, open_recording
from keydyn.files import write_json_atomic
from keydyn.locks import holds_files, one_writer
from keydyn.plots import pyplot, save_figure
from keydyn.sim.config import check_seed
from keydyn.sim.environment import PushingEnvironment
from keydyn.video import write_video


@dataclass(frozen=True)
class DemonstrationConfig:
    """Which demonstration to track and from which starts (`keydyn track`'s, and `keydyn robot`'s)."""

    demo_steps: int = 15
    """Length of a generated demonstration: a constant push held this many steps (the original code's 15)."""
    demo_index: int = 0
    """Which generated demonstration (the push of start/goal pair `demo_index` drawn with --demo-steps)."""
    dataset: Path | None = None
    """Take the demonstration from this dataset instead (replaying --episode's actions from its first state)."""
    episode: int = 0
    goals: GoalPairConfig = field(default_factory=GoalPairConfig)
    """How generated demonstrations are drawn (push_steps is replaced by --demo-steps)."""
    offsets_cm: tuple[float, ...] = (-4.0, -2.0, 0.0, 2.0, 4.0)
    """Start offsets along world x and along world y, centimetres."""
    yaw_offsets_deg: tuple[float, ...] = (-60.0, -30.0, 0.0, 30.0, 60.0)
    """Start yaw offsets, degrees."""
    region: bool = True
    """Run the region-of-attraction grid (x vs yaw with y = 0, y vs yaw with x = 0); else only the demo start."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset is not None:
            object.__setattr__(self, "dataset", Path(self.dataset))
        if self.demo_steps < 1:
            raise ValueError(f"--demo-steps must be at least 1, got {self.demo_steps}")
        check_seed(self.seed)

    def start_offsets(self) -> list[tuple[float, float, float]]:
        """(dx, dy, dyaw) in metres and radians: the demonstration's start first, then the grid."""
        offsets = [(0.0, 0.0, 0.0)]
        if self.region:
            for yaw in self.yaw_offsets_deg:
                for offset in self.offsets_cm:
                    for candidate in ((offset / 100, 0.0, math.radians(yaw)), (0.0, offset / 100, math.radians(yaw))):
                        if candidate not in offsets:
                            offsets.append(candidate)
        return offsets

    def demonstration_push(self, env: PushingEnvironment) -> tuple[dict[str, Any], np.ndarray]:
        """The demonstration's start (`env.reset` options) and (T, 2) pusher velocities (m/s): a dataset
        episode's, or a generated constant push's (drawn in `env`)."""
        if self.dataset is None:
            return pair_push(
                goal_pair(env, dataclasses.replace(self.goals, push_steps=(self.demo_steps,)), self.demo_index)
            )
        store = EpisodeStore.open(self.dataset)
        if not 0 <= self.episode < store.num_episodes:
            raise ValueError(f"--episode {self.episode} is out of range: {self.dataset} has {store.num_episodes}")
        start, stop = store.episode_range(self.episode)
        options: dict[str, Any] = {"sim_state": np.asarray(store.frames("sim_state", start, start + 1)[0])}
        if "mug_instance" in store.episode_fields:  # the demonstration's mug, as it looked
            options["mug_instance"] = int(store.episode_meta("mug_instance")[self.episode])
            options["mug_material"] = int(store.episode_meta("mug_material")[self.episode])
            options["mug_rgba"] = np.asarray(store.episode_meta("mug_rgba")[self.episode], dtype=float)
        return options, np.asarray(store.frames("action", start, stop - 1))


@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)  # the planner's options (MPPI's by default) show in --help
@dataclass(frozen=True, kw_only=True)
class TrackConfig(DemonstrationConfig):
    """Track a demonstrated trajectory with MPC from its start and from offset starts."""

    run: Path
    """Run directory written by `keydyn train-dynamics`."""
    out: Path
    """Output directory (created)."""
    task: str | None = None
    """Task; default the run's training task."""
    checkpoint: Literal["best", "last"] = "best"
    mpc: MPCConfig = field(default_factory=lambda: MPCConfig(shrinking_horizon=False, horizon=10))
    workers: int = 2
    """Worker processes (0: run in this process); with --cluster.backend ray, Ray actors."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the workers run: this machine, or a Ray cluster (--run, --out and --dataset on a file system every
    node sees: the workers read the run and write the video)."""
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    """The tracking from the demonstration's start in 3D (rerun; videos/track.rrd), saved or live."""

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "out", Path(self.out))

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        for key in ("run", "out", "dataset"):
            values[key] = None if values[key] is None else str(values[key])
        values["mpc"] = self.mpc.to_json()
        return values


def load_demonstration(config: DemonstrationConfig, env: PushingEnvironment, encoder) -> Demonstration:
    """The demonstration `config` names: a dataset episode replayed, or a generated constant push."""
    return record_demonstration(env, encoder, *config.demonstration_push(env))


class TrackingWorker:
    """Builds the run's controller and the demonstration once per process; tracks from one start offset."""

    def __init__(self, config: TrackConfig) -> None:
        self.config = config
        self.setup = control_setup(config.run, config.task, config.checkpoint, config.mpc)
        self.demo = load_demonstration(config, self.setup.env, self.setup.encoder)

    def __call__(self, item: tuple[int, tuple[float, float, float]]) -> dict[str, Any]:
        index, (dx, dy, dyaw) = item
        options = None if index == 0 else perturbed_start(self.demo, dx, dy, dyaw)
        record = index == 0
        setup = self.setup
        seed = episode_seed(self.config.seed, index)
        points = setup.method.video_points if record else None
        videos = self.config.out / "videos"
        recording = None
        if record:
            recording = open_recording(self.config.viewer, "track", setup.env.task.control_dt, videos / "track.rrd")
        try:
            on_frame = None if recording is None else recording.log
            result = track(setup.env, setup.encoder, setup.controller, self.demo, seed, options, points, on_frame)
        finally:
            if recording is not None:
                recording.close()
        if record:
            write_video([draw_frame(frame) for frame in result.frames], videos / "track.mp4", fps=5)
        return {**result.row(), "index": index, "dx_cm": 100 * dx, "dy_cm": 100 * dy, "dyaw_deg": math.degrees(dyaw)}


def figure7_cost(row: dict[str, Any]) -> float:
    """The paper's figure 7 colour: final position error / 3 cm + final angle error / 30 degrees."""
    return row["final_position_error_cm"] / 3.0 + row["final_angle_error_deg"] / 30.0


def plot_region_of_attraction(rows: list[dict[str, Any]], out: Path) -> Path:
    """Two scatter panels (x offset vs yaw offset at y = 0; y offset vs yaw offset at x = 0), coloured by cost."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    costs = [figure7_cost(row) for row in rows]
    vmax = max(2.0, max(costs))
    scatter = None
    for axis, along, other in ((axes[0], "dx_cm", "dy_cm"), (axes[1], "dy_cm", "dx_cm")):
        chosen = [row for row in rows if abs(row[other]) < 1e-9]
        scatter = axis.scatter(
            [row[along] for row in chosen],
            [row["dyaw_deg"] for row in chosen],
            c=[figure7_cost(row) for row in chosen],
            cmap="viridis",
            vmin=0.0,
            vmax=vmax,
            s=120,
            edgecolors=["red" if not _success(row) else "none" for row in chosen],
        )
        axis.set_xlabel(f"start offset {along[1]} (cm)")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("start yaw offset (deg)")
    figure.suptitle("final error per start offset (red edge: not within 3 cm and 30 deg)")
    figure.colorbar(scatter, ax=axes, label="position (cm) / 3 + angle (deg) / 30")
    return save_figure(figure, out, dpi=110)


def _success(row: dict[str, Any]) -> bool:
    """Within 3 cm and 30 degrees, and not stopped by a refused observation."""
    return row["final_position_error_cm"] <= 3.0 and row["final_angle_error_deg"] <= 30.0 and not row["fault"]


@one_writer("keydyn track")
def run_track(config: TrackConfig) -> dict[str, Any]:
    """Track the demonstration from every start offset; write track.json, the plot and the video."""
    if config.out.exists() and holds_files(config.out):
        raise ValueError(f"{config.out} already exists; pick a new --out")
    config.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(config.out / "config.json", config.to_json())
    items = list(enumerate(config.start_offsets()))
    finished = map_units(TrackingWorker, config, items, config.workers, config.cluster)
    rows = sorted(finished, key=lambda row: row["index"])
    return write_track_results(config.out, rows, config.to_json())


def write_track_results(out: Path, rows: list[dict[str, Any]], config: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """Summarise tracking rows (the demonstration's start first, then the offset starts: `TrackingWorker`'s), write
    them with `config` (JSON) and `extra` summary entries to out/track.json, and plot the region of attraction
    (out/region_of_attraction.png) when there are offset starts; returns what track.json holds."""
    summary = {
        "demonstration_start": rows[0],
        "runs": len(rows),
        "success_rate": float(np.mean([_success(row) for row in rows])),
        "mean_final_position_error_cm": float(np.mean([row["final_position_error_cm"] for row in rows])),
        "mean_final_angle_error_deg": float(np.mean([row["final_angle_error_deg"] for row in rows])),
        **stops(rows),
        **extra,
    }
    results = {"summary": summary, "config": config, "runs": rows}
    write_json_atomic(out / "track.json", results)
    if len(rows) > 1:
        plot_region_of_attraction(rows, out / "region_of_attraction.png")
    return results

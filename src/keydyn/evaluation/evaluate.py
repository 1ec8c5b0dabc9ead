"""`keydyn evaluate`: closed-loop goal reaching of a trained run on the fixed, seeded start/goal pairs.

The output directory holds:
    config.json     the resolved EvaluateConfig
    checkpoint.json the dynamics checkpoint evaluated and its SHA-256: a resumption of another refuses to continue
    episodes.jsonl  one row per finished episode, appended as episodes finish (what --resume continues from)
    results.json    config, summary (mean/median errors, success rate, Avg. trajectory) and every episode row
    results.md      the summary as a Markdown table like the paper's Table 1
    errors.png      error distributions and final-versus-initial error
    videos/episode_NNN.mp4  the first `videos` episodes: target keypoints green, current keypoints red (keypoint
                            latents; others draw what their method's `video_points` gives)

Episodes run in a pool of `workers` processes (local, or Ray actors: `--cluster.backend ray`), each planning with
one thread; an episode's planner is seeded
from (seed, episode index), so results do not depend on the number of workers. With `batch` B > 1 each process
runs groups of B episodes in lockstep, B environments planned in one planner call of B x N rollouts per step
(`keydyn.evaluation.episodes.reach_goals`); each episode's results equal its unbatched ones to float tolerance.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tyro
from tqdm import tqdm

from keydyn.cluster import ClusterConfig, map_units
from keydyn.control.mpc import MPCConfig, planner_name, upgrade_mpc_json
from keydyn.control.run import control_setup, load_run
from keydyn.evaluation.episodes import reach_goals
from keydyn.evaluation.goals import GoalPairConfig, goal_pair
from keydyn.evaluation.report import markdown_table, plot_errors, summarize
from keydyn.evaluation.scene import draw_frame
from keydyn.evaluation.viewer import ViewerConfig, open_recording
from keydyn.files import (
    file_sha256,
    read_json,
    read_lines,
    write_json_atomic,
    write_lines_atomic,
    write_text_atomic,
)
from keydyn.latents.base import BatchLatentEncoder
from keydyn.locks import one_writer
from keydyn.runs import prepare_run_dir, resolve_device
from keydyn.sim.config import TaskConfig, check_seed
from keydyn.sim.environment import make_environment
from keydyn.video import write_video

_RESUMABLE_FIELDS = ("episodes", "workers", "cluster", "batch", "resume", "progress", "videos", "viewer")
MEASURED = "checkpoint.json"
"""In an evaluation directory: the dynamics checkpoint its episodes were run with (`measured_checkpoint`)."""


@tyro.conf.configure(tyro.conf.CascadeSubcommandArgs)  # the planner's options (MPPI's by default) show in --help
@dataclass(frozen=True)
class EvaluateConfig:
    """Goal-reaching evaluation of a trained dynamics run with MPC."""

    run: Path
    """Run directory written by `keydyn train-dynamics`."""
    out: Path
    """Output directory (created; continue an interrupted evaluation with --resume)."""
    task: str | None = None
    """Task to evaluate on; default the run's training task (its camera resolution is kept)."""
    episodes: int = 200
    """Start/goal pairs; pair k is the same for every run with the same --goals.seed."""
    checkpoint: Literal["best", "last"] = "best"
    mpc: MPCConfig = field(default_factory=MPCConfig)
    goals: GoalPairConfig = field(default_factory=GoalPairConfig)
    """How start/goal pairs are drawn (--episodes sets how many)."""
    seed: int = 0
    """Planner seed; episode k's planner is seeded from (seed, k)."""
    workers: int = 2
    """Worker processes (0: run in this process); with --cluster.backend ray, Ray actors."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the workers run: this machine, or a Ray cluster (rows come back to this process; videos are written
    by the workers, so --run and --out must be on a file system every node sees)."""
    batch: int = 1
    """Episodes each process runs in lockstep, planned together in one planner call per step (B x N rollouts);
    results do not depend on it beyond float tolerance. 1: one episode at a time."""
    encoder_device: str = "cpu"
    """Torch device of the encoder's network ("auto": cuda when available), for latents whose encoder encodes a
    batch (the descriptor latents); the planner's is --mpc.device."""
    videos: int = 3
    """Episodes (the first ones) to record as videos."""
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    """The recorded episodes in 3D (rerun), saved or live."""
    success_position_cm: float = 3.0
    success_angle_deg: float = 30.0
    resume: bool = False
    progress: bool = True
    preset: str | None = None
    """The recipe these settings start from (keydyn/presets/evaluate/<preset>.yaml), as `--preset` or
    `keydyn reproduce` chose it; None for settings built in code. Flags, and the task's own recipe under
    `keydyn reproduce`, override it. Recorded in config.json; resuming compares the settings, not this name."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "run", Path(self.run))
        object.__setattr__(self, "out", Path(self.out))
        if self.episodes < 1:
            raise ValueError(f"--episodes must be at least 1, got {self.episodes}")
        if self.viewer.enabled and self.videos == 0:
            raise ValueError("--viewer.* records the episodes that have videos; give --videos N (N >= 1)")
        if self.workers < 0 or self.videos < 0:
            raise ValueError("--workers and --videos must be >= 0")
        if self.batch < 1:
            raise ValueError(f"--batch must be at least 1 (episodes planned together), got {self.batch}")
        if not (self.success_position_cm > 0 and self.success_angle_deg > 0):
            raise ValueError(
                "--success-position-cm and --success-angle-deg bound a success and must be positive, got "
                f"{self.success_position_cm} and {self.success_angle_deg}"
            )
        check_seed(self.seed)

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["run"], values["out"] = str(self.run), str(self.out)
        values["mpc"] = self.mpc.to_json()
        return values


def _upgrade_stored(values: dict[str, Any]) -> dict[str, Any]:
    """A config.json of an older keydyn in the current layout (the planner's settings)."""
    return {**values, "mpc": upgrade_mpc_json(values["mpc"])} if "mpc" in values else values


def episode_seed(seed: int, index: int) -> int:
    """The planner seed of episode `index` (independent of which worker runs it)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


class GoalReachingWorker:
    """Everything one process needs to run episodes: the task, the controller, and `batch` environments, each with
    its own encoder (a copy of the run's), or all with the run's when it encodes a batch in one call."""

    def __init__(self, config: EvaluateConfig) -> None:
        self.config = config
        self.setup = control_setup(config.run, config.task, config.checkpoint, config.mpc)
        env, encoder = self.setup.env, self.setup.encoder
        extra = range(config.batch - 1)
        self.envs = [env] + [make_environment(env.task, images=encoder.needs_images) for _ in extra]
        if isinstance(encoder, BatchLatentEncoder):  # stateless: one encoder, one network call per camera a step
            encoder.to(resolve_device(config.encoder_device))
            self.encoders = [encoder] * config.batch
        else:
            self.encoders = [encoder] + [copy.deepcopy(encoder) for _ in extra]

    def __call__(self, group: list[int]) -> list[dict[str, Any]]:
        """The rows of episodes `group` (at most `batch`), run in lockstep."""
        config, setup, count = self.config, self.setup, len(group)
        pairs = [goal_pair(self.envs[0], config.goals, index) for index in group]
        seeds = [episode_seed(config.seed, index) for index in group]
        points = [setup.method.video_points if index < config.videos else None for index in group]
        videos = config.out / "videos"
        recordings = [
            open_recording(
                config.viewer, f"episode_{index:03d}", setup.env.task.control_dt, videos / f"episode_{index:03d}.rrd"
            )
            if index < config.videos
            else None
            for index in group
        ]
        try:
            results = reach_goals(
                self.envs[:count],
                self.encoders[:count],
                setup.controller,
                pairs,
                seeds,
                video_points=points,
                on_frames=[None if recording is None else recording.log for recording in recordings],
            )
        finally:
            for recording in recordings:
                if recording is not None:
                    recording.close()
        rows = []
        for index, pair, result in zip(group, pairs, results, strict=True):
            if index < config.videos:
                write_video([draw_frame(frame) for frame in result.frames], videos / f"episode_{index:03d}.mp4", 5)
            row = {**result.row(), "push_steps": pair.push_steps, "pair_sha256": pair.sha256}
            rows.append({**row, "actions": result.actions.tolist()})
        return rows


def measured_checkpoint(run: Path, checkpoint: str) -> dict[str, str]:
    """What an evaluation of `run` measures: its `<checkpoint>.safetensors` (the dynamics, with a jointly trained
    encoder's weights) and that file's SHA-256. The networks it locates its latents with are checked against the
    run as it loads (`load_run`), so the checkpoint's bytes name the whole model."""
    name = f"{checkpoint}.safetensors"
    return {"run": str(run), "checkpoint": name, "sha256": file_sha256(Path(run) / name)}


def _recorded_as(out: Path, measured: dict[str, str]) -> bool:
    """Whether the evaluation in `out` recorded the checkpoint `measured` (True too when it recorded none: a new
    directory, or one made before keydyn recorded the checkpoint)."""
    recorded = out / MEASURED
    return not recorded.exists() or read_json(recorded, ("sha256",))["sha256"] == measured["sha256"]


def measures_the_run(config: EvaluateConfig) -> bool:
    """Whether the evaluation in config.out was run with config.run's current checkpoint (see `_recorded_as`)."""
    return _recorded_as(config.out, measured_checkpoint(config.run, config.checkpoint))


def _prepare_out(config: EvaluateConfig, measured: dict[str, str]) -> list[dict[str, Any]]:
    """Create the output directory, or check it against a resumed one (its settings and the checkpoint it
    measured, `measured` now); return the episodes already done.

    Raises:
        ValueError: a resumed evaluation's checkpoint has changed since (trained on, or trained anew).
    """
    if not prepare_run_dir(config.out, config, _RESUMABLE_FIELDS, "config.json", _upgrade_stored):
        return []
    if not _recorded_as(config.out, measured):
        raise ValueError(
            f"{config.out} holds episodes of another {measured['checkpoint']} of {config.run} than it holds now "
            "(the run was trained on or trained anew since); evaluate it into a new --out, or delete "
            f"{config.out} to evaluate it anew"
        )
    rows = read_lines(config.out / "episodes.jsonl")
    if rows and not (config.out / MEASURED).exists():
        print(
            f"keydyn evaluate: {config.out} was started before keydyn recorded the checkpoint it measures; its "
            f"{len(rows)} episodes are taken as of {config.run}'s current {measured['checkpoint']}",
            file=sys.stderr,
        )
    write_lines_atomic(config.out / "episodes.jsonl", rows)  # without a torn last line: appends start afresh
    return rows


def _check_same_pairs(config: EvaluateConfig, task: TaskConfig, done: list[dict[str, Any]]) -> None:
    """Refuse to resume an evaluation whose episodes ran other start/goal pairs than its settings give now (keydyn,
    MuJoCo or the run's task changed since): its first recorded pair is drawn again and compared."""
    recorded = min((row for row in done if "pair_sha256" in row), key=lambda row: row["index"], default=None)
    if recorded is None:  # nothing done yet, or episodes of a keydyn before 2026-11-30
        return
    env = make_environment(task, images=False)
    try:
        drawn = goal_pair(env, config.goals, recorded["index"])
    finally:
        env.close()
    if drawn.sha256 != recorded["pair_sha256"]:
        raise ValueError(
            f"{config.out} holds episodes of other start/goal pairs than --goals.* give now (pair "
            f"{recorded['index']}'s start or goal differs: keydyn, MuJoCo or the run's task changed since); evaluate "
            f"into a new --out, or delete {config.out} to evaluate anew"
        )


@one_writer("keydyn evaluate")
def evaluate(config: EvaluateConfig) -> dict[str, Any]:
    """Run (or resume) the evaluation; returns the results written to results.json."""
    trained = load_run(config.run, config.task, config.checkpoint)  # fail early, before any worker starts
    encoder_device = resolve_device(config.encoder_device)  # a bad name or a missing GPU: here, before any file
    if encoder_device.type != "cpu" and not isinstance(trained.encoder, BatchLatentEncoder):
        raise ValueError(
            f"--encoder-device {config.encoder_device}: the {trained.latent} latent's encoder runs on the CPU only "
            "(the descriptor latents' encoders move to a device); drop the flag"
        )
    measured = measured_checkpoint(config.run, config.checkpoint)
    done = _prepare_out(config, measured)
    _check_same_pairs(config, trained.task, done)
    write_json_atomic(config.out / "config.json", config.to_json())
    # After config.json: a directory cut between the two resumes as one of an older keydyn.
    write_json_atomic(config.out / MEASURED, measured)
    finished = {row["index"] for row in done}
    todo = [index for index in range(config.episodes) if index not in finished]
    rows = [row for row in done if row["index"] < config.episodes]
    with open(config.out / "episodes.jsonl", "a") as log:
        bar = tqdm(total=len(todo), desc="episodes", disable=not config.progress)
        groups = [todo[start : start + config.batch] for start in range(0, len(todo), config.batch)]
        for group in map_units(GoalReachingWorker, config, groups, config.workers, config.cluster):
            log.write("".join(json.dumps(row) + "\n" for row in group))
            log.flush()
            os.fsync(log.fileno())
            rows.extend(group)
            bar.update(len(group))
            bar.set_postfix(err_cm=f"{np.mean([r['final_position_error_cm'] for r in rows]):.2f}")
        bar.close()
    rows.sort(key=lambda row: row["index"])
    summary = summarize(rows, config.success_position_cm, config.success_angle_deg)
    label = f"{trained.method.label} ({planner_name(config.mpc.planner).upper()})"
    results = {
        "run": str(config.run),
        "task": trained.task.name,
        "latent": trained.latent,
        "label": label,
        "summary": summary,
        "checkpoint_sha256": measured["sha256"],
        "config": config.to_json(),
        "episodes": [{k: v for k, v in row.items() if k != "actions"} for row in rows],
    }
    write_json_atomic(config.out / "results.json", results)
    table = markdown_table([(label, summary)])
    write_text_atomic(config.out / "results.md", f"Goal reaching on `{trained.task.name}`\n\n{table}")
    plot_errors(
        rows,
        config.out / "errors.png",
        f"{label} on {trained.task.name}: {len(rows)} episodes",
        config.success_position_cm,
        config.success_angle_deg,
    )
    return results

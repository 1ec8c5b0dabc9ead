"""`keydyn reproduce TABLE --task T`: a table of the paper, every stage from data to goal reaching, resumable.

For each seed s (0 .. seeds - 1) it collects one dataset and trains one descriptor network (when a method
needs one) and one Transporter per crop mode (table2), shared by every method; then trains each method's dynamics
and evaluates it on the same fixed start/goal pairs (the goal pairs do not depend on s; the data, the networks and
the planner do). A Transporter method gives one row per crop mode (`transporter_crops`), named
`<method>@<crop>`. Under `out`:

    data/seed<s>/                  `keydyn collect` (preset `collect`)
    visual/seed<s>/                `keydyn train-visual` (preset `visual`)
    transporter/<crop>/seed<s>/    `keydyn train-transporter --crop <crop>` (preset `transporter`)
    runs/<row>/seed<s>/            `keydyn train-dynamics` (preset `dynamics`)
    eval/<row>/seed<s>/            `keydyn evaluate` (preset `evaluation`)
    eval_<held-out task>/<row>/seed<s>/  the same run evaluated on the task's held-out instances (`mugs` ->
                                   `mugs_unseen`, beyond the paper; `keydyn.sim.config.held_out_task`)
    table.md, table.json           the table: per method, mean (95% bootstrap interval over the pairs) and
                                   median errors, success, ratio to GT 3D, spread over seeds, the paper's figure;
                                   then the same for the held-out instances, where the task has them

Each stage is the command of the same name with the named preset, so its directory is an ordinary run. Run
the same command again to resume: finished stages are reused, a cut one continues from its last checkpoint.

The local backend runs the stages one after another in this process. With `--cluster.backend ray` each seed's
dataset and networks are one Ray task, and each (row, seed) cell's dynamics training and evaluation another, which
starts once its seed's task has finished: the seeds run side by side, and so do the cells. `out` must then be a
directory every node sees (NFS, say). Collection and evaluation inside a task send their episodes to Ray actors
(`--workers`). The stages' results do not depend on the backend, given the same torch threads (`stage_threads`).
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from keydyn.cluster import ClusterConfig, RayTasks
from keydyn.data.collect import CollectConfig, collect
from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics
from keydyn.evaluation.evaluate import EvaluateConfig, evaluate, measures_the_run
from keydyn.evaluation.goals import pair_identity, same_pairs
from keydyn.evaluation.paper import TABLES
from keydyn.evaluation.statistics import bootstrap_mean_interval, spread
from keydyn.files import read_json, write_json_atomic, write_text_atomic
from keydyn.latents import SourceChangedError, get_latent, latent_names
from keydyn.locks import one_writer
from keydyn.presets import DEFAULT, from_preset, merge, preset_names, preset_overlay, stated_settings, without
from keydyn.runs import resolve_device
from keydyn.sim.config import TASK_NAMES, held_out_task
from keydyn.vision.train import TrainVisualConfig, train_visual
from keydyn.vision.transporter import CROP_MODES
from keydyn.vision.transporter_train import TrainTransporterConfig, train_transporter

TABLE_METHODS = {
    "table1": ("gt3d", "ds", "sds", "wds", "wsds"),
    "table2": ("transporter3d", "transporter2d", "autoencoder", "sds", "gt3d"),
}
REFERENCE = "gt3d"  # the method every ratio is taken against


@dataclass(frozen=True)
class ReproduceConfig:
    """Reproduce a table of the paper on one task: collect, train descriptors, train dynamics, evaluate."""

    table: Literal["table1", "table2"] = "table1"
    """Which table: table1 = GT 3D and the descriptor latents DS, SDS, WDS, WSDS; table2 = the baselines
    Transporter 3D, Transporter 2D and the autoencoder beside SDS and GT 3D."""
    task: str = "top_down"
    out: Path = Path("repro")
    """Directory of every stage's runs and of table.md / table.json (rerun the command to resume)."""
    methods: tuple[str, ...] = ()
    """Rows of the table (default: all of the table's methods in the paper's order: table1 gt3d ds sds wds wsds; table2
    transporter3d transporter2d autoencoder sds gt3d)."""
    seeds: int = 1
    """Seeds 0 .. seeds-1: one dataset, one descriptor network and one dynamics run per method and seed."""
    collect: str = "default"
    """Preset of the data collection (`keydyn collect --preset`). A task with a preset of its own name has its
    settings laid over it (`mugs`: the original's 600 episodes of 20 steps), but for those the chosen preset sets
    itself (`tiny`'s 4 episodes); likewise for every stage (`task_overlay`)."""
    visual: str = "default"
    """Preset of the descriptor training (`keydyn train-visual --preset`)."""
    transporter: str = "default"
    """Preset of the Transporter training (`keydyn train-transporter --preset`)."""
    transporter_crops: tuple[str, ...] = CROP_MODES
    """Crop modes of the Transporter rows, one row each: mask (the original's privileged crop around the object's
    mask) and full (the whole image)."""
    dynamics: str = "default"
    """Preset of the dynamics training (`keydyn train-dynamics --preset`). With `default`, a method that has a
    preset of its own name (`autoencoder`: the original's joint training) trains with that one. A task's own
    (`occlusions`, `mugs`: K* = 4 SDS keypoints) is laid over it, as for --collect."""
    dynamics_by_method: dict[str, str] = field(default_factory=dict)
    """Presets of the dynamics training of single methods, over --dynamics and a method's own preset (`original`:
    `autoencoder: autoencoder-original`, the autoencoder's own joint training beside the original's keypoint
    dynamics)."""
    evaluation: str = "default"
    """Preset of the goal-reaching evaluation (`keydyn evaluate --preset`)."""
    workers: int = 2
    """Worker processes for collection and evaluation (0: evaluate in this process, collect with one)."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """Where the stages run: one after another in this process (local), or side by side as Ray tasks (ray; --out
    on a file system every node sees)."""
    stage_threads: int = 1
    """With --cluster.backend ray: torch threads of each stage's task (it reserves as many CPUs of the cluster)."""
    device: str = "cpu"
    """Torch device of the training stages (descriptors, Transporters, dynamics and the autoencoder): cpu, cuda,
    cuda:N or auto (cuda when available). The evaluation plans on the CPU whatever this is, as --evaluation's
    preset says; a finished stage is not retrained, and one cut short resumes on this device. With
    --cluster.backend ray, cuda reserves one GPU for each stage's task (auto there means cpu)."""
    progress: bool = True
    preset: str | None = None
    """The recipe these settings start from (keydyn/presets/reproduce/<preset>.yaml), as `--preset` chose it;
    None for settings built in code. Recorded in reproduce.json."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.table not in TABLE_METHODS:
            raise ValueError(f"unknown table {self.table!r}; choose {', '.join(TABLE_METHODS)}")
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASK_NAMES)}")
        methods = self.methods or TABLE_METHODS[self.table]
        unknown = [m for m in methods if m not in TABLE_METHODS[self.table]]
        if unknown:
            raise ValueError(
                f"{self.table} has no method {', '.join(unknown)}; its methods: {', '.join(TABLE_METHODS[self.table])}"
            )
        object.__setattr__(self, "methods", tuple(dict.fromkeys(methods)))
        object.__setattr__(self, "transporter_crops", tuple(dict.fromkeys(self.transporter_crops)))
        bad_crops = [crop for crop in self.transporter_crops if crop not in CROP_MODES]
        if bad_crops or not self.transporter_crops:
            raise ValueError(f"--transporter-crops {bad_crops or '()'}: use one or more of {', '.join(CROP_MODES)}")
        if self.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, got {self.seeds}")
        if self.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {self.workers}")
        if self.stage_threads < 1:
            raise ValueError(f"--stage-threads must be at least 1, got {self.stage_threads}")
        if self.cluster.backend == "local":
            resolve_device(self.device)  # a bad name or a missing GPU: here, before the collection
        elif self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(
                f"--device {self.device} with --cluster.backend ray: each stage's task gets one GPU of its node "
                "(Ray shows it as cuda); use --device cuda or cpu"
            )
        if self.stage_threads != 1 and self.cluster.backend != "ray":
            raise ValueError("--stage-threads sets the threads of Ray tasks; add --cluster.backend ray or leave it out")
        for command, name in (
            ("collect", self.collect),
            ("train-visual", self.visual),
            ("train-transporter", self.transporter),
            ("train-dynamics", self.dynamics),
            ("evaluate", self.evaluation),
        ):
            if name not in preset_names(command):
                raise ValueError(f"no preset {name!r} for `keydyn {command}`; its presets: {preset_names(command)}")
        for method, name in self.dynamics_by_method.items():
            if method not in latent_names():
                raise ValueError(
                    f"--dynamics-by-method names {method!r}, which is no latent method; the methods: "
                    f"{', '.join(latent_names())}"
                )
            if name not in preset_names("train-dynamics"):
                raise ValueError(
                    f"--dynamics-by-method {method} {name}: no preset {name!r} for `keydyn train-dynamics`; "
                    f"its presets: {preset_names('train-dynamics')}"
                )
        self._check_task_recipes()

    def _check_task_recipes(self) -> None:
        """Build each training stage's config, the task's recipe laid over the chosen preset (`task_overlay`), so
        that a combination that does not hold together fails here, not after the collection."""
        placeholder = Path("reproduce-check")
        stages = (
            (CollectConfig, "collect", self.collect, {"out": placeholder, "task": self.task}),
            (TrainVisualConfig, "train-visual", self.visual, {"dataset": placeholder, "out": placeholder}),
            *(
                (TrainDynamicsConfig, "train-dynamics", name, {"dataset": placeholder, "out": placeholder})
                for name in dict.fromkeys((self.dynamics, *self.dynamics_by_method.values()))
            ),
        )
        for cls, command, name, paths in stages:
            try:
                from_preset(cls, command, name, overrides=task_overlay(command, self.task, name), **paths)
            except ValueError as error:
                raise ValueError(
                    f"`keydyn {command}` preset {name!r} with the {self.task} task's recipe "
                    f"({command}/{self.task}.yaml) does not hold together: {error}; choose another preset"
                ) from error


def _needs_visual(method: str) -> bool:
    """Whether a latent method locates its latents with a descriptor network (`--visual-run`)."""
    return "visual_run" in get_latent(method).settings


def _needs_transporter(method: str) -> bool:
    """Whether a latent method reads the keypoints of a trained Transporter (`--transporter-run`)."""
    return "transporter_run" in get_latent(method).settings


def table_rows(config: ReproduceConfig) -> dict[str, tuple[str, str | None]]:
    """The table's rows: name -> (latent method, Transporter crop mode or None); a Transporter method gives a row
    `<method>@<crop>` per crop mode, every other method one row named after it."""
    rows: dict[str, tuple[str, str | None]] = {}
    for method in config.methods:
        if _needs_transporter(method):
            rows.update({f"{method}@{crop}": (method, crop) for crop in config.transporter_crops})
        else:
            rows[method] = (method, None)
    return rows


def method_of(row: str) -> str:
    """The latent method of a table row (`transporter3d@mask` -> `transporter3d`)."""
    return row.split("@", 1)[0]


def method_preset(command: str, chosen: str, method: str, by_method: dict[str, str] | None = None) -> str:
    """The preset a method's stage runs: the one `by_method` names for it; else `chosen`, unless that is `default`
    and `command` ships a preset named after the method (`autoencoder`: the original's joint training)."""
    if by_method and method in by_method:
        return by_method[method]
    return method if chosen == DEFAULT and method in preset_names(command) else chosen


def task_overlay(command: str, task: str, chosen: str, **overrides: Any) -> dict[str, Any]:
    """What a task's own recipe changes in preset `chosen` of `command`, with `overrides` laid over it.

    The task's recipe is the settings of `<command>/<task>.yaml` itself (`mugs`' 600 episodes of 20 steps, K* = 4 on
    `occlusions` and `mugs`), less those that `chosen` states beyond `default` (`stated_settings`): a preset that
    states a setting keeps it (`tiny` keeps its 4 episodes of 14 steps on `mugs`; `paper` and `original`, which set
    no K*, get the task's)."""
    return merge(without(preset_overlay(command, task), stated_settings(command, chosen)), overrides)


def _fresh_or_resumed(run: Path, marker: str) -> bool:
    """Whether to resume the stage in `run`: yes when its `marker` exists. A directory without it was cut
    before its first checkpoint; it belongs to this reproduction, so it is cleared and started afresh."""
    if (run / marker).exists():
        return True
    if run.exists():
        shutil.rmtree(run)
    return False


def stage_dataset(config: ReproduceConfig, seed: int) -> Path:
    """Collect (or finish collecting) the dataset of `seed`."""
    out = config.out / "data" / f"seed{seed}"
    collect(
        from_preset(
            CollectConfig,
            "collect",
            config.collect,
            overrides=task_overlay("collect", config.task, config.collect),
            out=out,
            task=config.task,
            seed=seed,
            workers=max(config.workers, 1),
            cluster=config.cluster,
            resume=out.exists(),
            progress=config.progress,
        )
    )
    return out


def stage_visual(config: ReproduceConfig, seed: int, dataset: Path) -> Path:
    """Train (or finish training) the descriptor network of `seed`."""
    out = config.out / "visual" / f"seed{seed}"
    resume = _fresh_or_resumed(out, "last.json")
    train_visual(
        from_preset(
            TrainVisualConfig,
            "train-visual",
            config.visual,
            overrides=task_overlay("train-visual", config.task, config.visual),
            dataset=dataset,
            out=out,
            seed=seed,
            device=config.device,
            resume=resume,
            progress=config.progress,
        )
    )
    return out


def stage_transporter(config: ReproduceConfig, seed: int, dataset: Path, crop: str) -> Path:
    """Train (or finish training) the Transporter of `seed` on `crop` inputs."""
    out = config.out / "transporter" / crop / f"seed{seed}"
    resume = _fresh_or_resumed(out, "last.json")
    train_transporter(
        from_preset(
            TrainTransporterConfig,
            "train-transporter",
            config.transporter,
            dataset=dataset,
            out=out,
            crop=crop,
            seed=seed,
            device=config.device,
            resume=resume,
            progress=config.progress,
        )
    )
    return out


def stage_dynamics(
    config: ReproduceConfig, row: str, seed: int, dataset: Path, visual: Path | None, transporter: Path | None = None
) -> Path:
    """Train (or finish training) the dynamics of table row `row` on the dataset of `seed`; a run whose descriptor
    or Transporter network was trained on since (another preset for that stage) is cleared and trained anew."""
    method = method_of(row)
    out = config.out / "runs" / row / f"seed{seed}"
    resume = _fresh_or_resumed(out, "last.json")
    preset = method_preset("train-dynamics", config.dynamics, method, config.dynamics_by_method)
    settings = from_preset(
        TrainDynamicsConfig,
        "train-dynamics",
        preset,
        # DS and WDS (SDS and WSDS) of one network share their references, so their located keypoints too.
        overrides=task_overlay(
            "train-dynamics",
            config.task,
            preset,
            keypoints={"seed": seed, "cache_dir": str(config.out / "keypoint_cache" / f"seed{seed}")},
        ),
        dataset=dataset,
        out=out,
        latent=method,
        visual_run=visual if _needs_visual(method) else None,
        transporter_run=transporter if _needs_transporter(method) else None,
        seed=seed,
        device=config.device,
        resume=resume,
        progress=config.progress,
    )
    try:
        train_dynamics(settings)
    except SourceChangedError as error:
        print(f"keydyn reproduce: {error}; training {out} anew", file=sys.stderr)
        shutil.rmtree(out)
        train_dynamics(dataclasses.replace(settings, resume=False))
    return out


def evaluation_dir(config: ReproduceConfig, row: str, seed: int, task: str | None = None) -> Path:
    """Where table row `row`'s evaluation of `seed` is written: on the reproduction's task, or on `task` (its
    held-out instances)."""
    return config.out / ("eval" if task is None else f"eval_{task}") / row / f"seed{seed}"


def stage_evaluation(config: ReproduceConfig, row: str, seed: int, run: Path, task: str | None = None) -> Path:
    """Evaluate (or finish evaluating) a dynamics run on the fixed start/goal pairs, its planner seeded by `seed`,
    on its training task or on `task`; an evaluation of another checkpoint of the run (trained on since) is
    cleared and made anew."""
    out = evaluation_dir(config, row, seed, task)
    settings = from_preset(
        EvaluateConfig,
        "evaluate",
        config.evaluation,
        run=run,
        out=out,
        task=task,
        seed=seed,
        workers=config.workers,
        cluster=config.cluster,
        resume=(out / "config.json").exists(),
        progress=config.progress,
    )
    if settings.resume and not measures_the_run(settings):
        print(f"keydyn reproduce: {run} has changed since {out} evaluated it; evaluating it anew", file=sys.stderr)
        shutil.rmtree(out)
        settings = dataclasses.replace(settings, resume=False)
    evaluate(settings)
    return out


@dataclass(frozen=True)
class SeedRuns:
    """What the cells of one seed share: its dataset, descriptor network (or None) and Transporters by crop mode."""

    dataset: Path
    visual: Path | None
    transporters: dict[str, Path]


def seed_stages(config: ReproduceConfig, seed: int) -> SeedRuns:
    """Collect the dataset of `seed` and train the networks its rows need (or finish doing so)."""
    dataset = stage_dataset(config, seed)
    needs_visual = any(_needs_visual(method) for method in config.methods)
    visual = stage_visual(config, seed, dataset) if needs_visual else None
    crops = dict.fromkeys(crop for _, crop in table_rows(config).values() if crop is not None)
    return SeedRuns(dataset, visual, {crop: stage_transporter(config, seed, dataset, crop) for crop in crops})


def cell_stages(config: ReproduceConfig, row: str, seed: int, runs: SeedRuns) -> Path:
    """Train and evaluate the dynamics of table row `row` on the runs of `seed` (or finish doing so), also on the
    task's held-out instances where it has them; returns the evaluation on the task itself."""
    crop = table_rows(config)[row][1]
    run = stage_dynamics(config, row, seed, runs.dataset, runs.visual, runs.transporters.get(crop))
    evaluation = stage_evaluation(config, row, seed, run)
    held_out = held_out_task(config.task)
    if held_out is not None:
        stage_evaluation(config, row, seed, run, held_out)
    return evaluation


@one_writer("keydyn reproduce")
def run_reproduce(config: ReproduceConfig) -> dict[str, Any]:
    """Run (or resume) every stage, then write table.md and table.json; returns the table's JSON."""
    config.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(config.out / "reproduce.json", {**dataclasses.asdict(config), "out": str(config.out)})
    rows = table_rows(config)
    evaluations: dict[str, list[Path]] = {row: [] for row in rows}
    if config.cluster.backend == "local":
        for seed in range(config.seeds):
            runs = seed_stages(config, seed)
            for row in rows:
                evaluations[row].append(cell_stages(config, row, seed, runs))
    else:
        tasks = RayTasks(config.cluster, config.stage_threads, gpus=int(config.device == "cuda"))
        seeds = [tasks.submit(seed_stages, config, seed) for seed in range(config.seeds)]
        cells = [tasks.submit(cell_stages, config, row, seed, runs) for seed, runs in enumerate(seeds) for row in rows]
        tasks.results(cells)
        evaluations = {row: [evaluation_dir(config, row, seed) for seed in range(config.seeds)] for row in rows}
    table = results_table(config.table, config.task, evaluations)
    held_out = held_out_task(config.task)
    if held_out is not None:
        table["held_out"] = results_table(
            config.table,
            held_out,
            {row: [evaluation_dir(config, row, seed, held_out) for seed in range(config.seeds)] for row in rows},
        )
    write_json_atomic(config.out / "table.json", table)
    write_text_atomic(config.out / "table.md", format_table(table))
    return table


def _episode_errors(evaluation: Path) -> tuple[np.ndarray, np.ndarray, list, np.ndarray, dict[str, Any]]:
    """(P,) final position errors (cm), angle errors (deg), the pairs (`pair_identity`) and whether each episode was
    stopped by a refused observation, of an evaluation, and its summary."""
    results = read_json(evaluation / "results.json", ("episodes", "summary"))
    rows = sorted(results["episodes"], key=lambda row: row["index"])
    position = np.array([row["final_position_error_cm"] for row in rows])
    angle = np.array([row["final_angle_error_deg"] for row in rows])
    stopped = np.array([bool(row.get("fault")) for row in rows], dtype=bool)
    return position, angle, pair_identity(rows), stopped, results["summary"]


def method_row(evaluations: list[Path]) -> dict[str, Any]:
    """One method's figures over its seeds' evaluations (each on the same start/goal pairs).

    The means and medians are averaged over the seeds (the mean of each seed's mean, of each seed's median); the
    interval is a 95% bootstrap over the pairs of the per-pair error averaged over seeds (so it leaves out the
    seed-to-seed variation, which the spread over the per-seed means gives). Episodes stopped by a refused
    observation count at the pose where they stopped, as failures; `stopped_episodes` counts them over the seeds.

    Raises:
        ValueError: the seeds' evaluations are of different start/goal pairs or success bounds.
    """
    positions, angles, successes, per_seed = [], [], [], []
    pairs, initial, threshold, stopped_episodes = None, None, None, 0
    for evaluation in evaluations:
        position, angle, indices, stopped, summary = _episode_errors(evaluation)
        if pairs is not None and not same_pairs(indices, pairs):
            raise ValueError(f"{evaluation} holds other start/goal pairs than {evaluations[0]}; evaluate them alike")
        if threshold is not None and summary["success_threshold"] != threshold:
            raise ValueError(f"{evaluation} counts success within other bounds than {evaluations[0]}; evaluate alike")
        pairs, initial = indices, initial or summary  # the start-to-goal figures are those of every seed
        threshold = summary["success_threshold"]
        stopped_episodes += int(stopped.sum())
        positions.append(position)
        angles.append(angle)
        successes.append(np.mean((position <= threshold["position_cm"]) & (angle <= threshold["angle_deg"]) & ~stopped))
        per_seed.append({"evaluation": str(evaluation), "position_mean_cm": float(position.mean())})
    position, angle = np.mean(positions, axis=0), np.mean(angles, axis=0)
    return {
        "seeds": len(evaluations),
        "pairs": len(position),
        "position_mean_cm": float(np.mean([p.mean() for p in positions])),
        "position_median_cm": float(np.mean([np.median(p) for p in positions])),
        "position_interval_cm": bootstrap_mean_interval(position),
        "angle_mean_deg": float(np.mean([a.mean() for a in angles])),
        "angle_median_deg": float(np.mean([np.median(a) for a in angles])),
        "angle_interval_deg": bootstrap_mean_interval(angle),
        "success_rate": float(np.mean(successes)),
        "success_threshold": threshold,
        "stopped_episodes": stopped_episodes,
        "position_mean_over_seeds_cm": spread([p.mean() for p in positions]),
        "per_seed": per_seed,
        "trajectory": (
            initial["initial_position_error_cm"]["mean"],
            initial["initial_angle_error_deg"]["mean"],
        ),
    }


def results_table(table: str, task: str, evaluations: dict[str, list[Path]]) -> dict[str, Any]:
    """The table's JSON: a row per table row (a method, or `<method>@<crop>`, see `table_rows`; `method_row`) with
    its ratio to GT 3D and the paper's figures (those of its method)."""
    paper = TABLES[table].get(task, {})
    rows = {method: method_row(paths) for method, paths in evaluations.items()}
    if REFERENCE in evaluations:  # ratios compare errors on the same pairs
        reference_pairs = _episode_errors(evaluations[REFERENCE][0])[2]
        for paths in evaluations.values():
            if not same_pairs(_episode_errors(paths[0])[2], reference_pairs):
                raise ValueError(f"{paths[0]} holds other start/goal pairs than {evaluations[REFERENCE][0]}")
    reference = rows.get(REFERENCE)
    for name, row in rows.items():
        method = method_of(name)
        crop = name.split("@", 1)[1] if "@" in name else None
        row["label"] = get_latent(method).label + ("" if crop is None else f" ({crop} crop)")
        row["paper"] = paper.get(method)
        if reference is not None:
            row["ratio_to_gt3d"] = row["position_mean_cm"] / reference["position_mean_cm"]
            ratios = [
                own["position_mean_cm"] / ref["position_mean_cm"]
                for own, ref in zip(row["per_seed"], reference["per_seed"], strict=True)
            ]
            row["ratio_to_gt3d_over_seeds"] = spread(ratios)
    first = next(iter(rows.values()))
    return {
        "table": table,
        "task": task,
        "rows": rows,
        "trajectory": first["trajectory"],
        "paper_trajectory": paper.get("trajectory"),
    }


def _paper_cells(paper: list[float] | None) -> tuple[str, str]:
    """The paper's (position cm, angle deg) as two table cells; empty where the paper has no figure."""
    return ("", "") if paper is None else (f"{paper[0]:.2f}", f"{paper[1]:.2f}")


def format_table(table: dict[str, Any]) -> str:
    """table.md: the table's rows in Markdown, the paper's figure beside each of keydyn's position and angle."""
    rows = list(table["rows"].values())
    bounds = {(row["success_threshold"]["position_cm"], row["success_threshold"]["angle_deg"]) for row in rows}
    success = (
        "success within {:g} cm and {:g} deg".format(*next(iter(bounds)))
        if len(bounds) == 1
        else "success within each row's own bounds (table.json)"
    )
    lines = [
        f"Goal reaching on `{table['task']}` ({table['table']}): final error of the object against the goal pose, "
        f"mean over the start/goal pairs [95% bootstrap interval], median; {success}; over "
        "seeds, the spread (std, min-max) of the mean position error.",
        "",
        "| method | position (cm) mean [95% CI] | paper | median | angle (deg) mean [95% CI] | paper | median "
        "| success | x GT 3D | seeds: position mean std (min-max) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        low, high = row["position_interval_cm"]
        angle_low, angle_high = row["angle_interval_deg"]
        seeds = row["position_mean_over_seeds_cm"]
        spread_text = (
            f"{seeds['std']:.2f} ({seeds['min']:.2f}-{seeds['max']:.2f}), {row['seeds']} seeds"
            if row["seeds"] > 1
            else "1 seed"
        )
        ratio = f"{row['ratio_to_gt3d']:.2f}x" if "ratio_to_gt3d" in row else ""
        paper_cm, paper_deg = _paper_cells(row["paper"])
        lines.append(
            f"| {row['label']} | {row['position_mean_cm']:.2f} [{low:.2f}, {high:.2f}] | {paper_cm} "
            f"| {row['position_median_cm']:.2f} "
            f"| {row['angle_mean_deg']:.2f} [{angle_low:.2f}, {angle_high:.2f}] | {paper_deg} "
            f"| {row['angle_median_deg']:.2f} | {100 * row['success_rate']:.0f}% | {ratio} | {spread_text} |"
        )
    trajectory, paper_trajectory = table["trajectory"], table["paper_trajectory"]
    paper_cm, paper_deg = _paper_cells(paper_trajectory)
    lines.append(
        f"| Avg. trajectory | {trajectory[0]:.2f} | {paper_cm} | | {trajectory[1]:.2f} | {paper_deg} | | | | |"
    )
    stopped = [f"{row['label']} {row['stopped_episodes']}" for row in rows if row["stopped_episodes"]]
    if stopped:
        lines += [
            "",
            f"Episodes stopped by a refused observation (at their last pose, failures; over the seeds): "
            f"{', '.join(stopped)}; each seed's results.md says why.",
        ]
    if any(name.endswith("@full") for name in table["rows"]) and table["paper_trajectory"] is not None:
        lines += [
            "",
            "The paper's Transporter figures stand beside both crops; the original code trained and "
            "evaluated its Transporters on the mask crop.",
        ]
    if "held_out" in table:
        lines += [
            "",
            f"Beyond the paper, the same runs on `{table['held_out']['task']}`, the instances they never trained on:",
            "",
            *format_table(table["held_out"]).splitlines()[2:],
        ]
    return "\n".join(lines) + "\n"

"""`keydyn demo`: goal reaching from pixels with the models shipped in keydyn, or the whole pipeline.

By default it drives the box to the first `pairs` of the 200 fixed start/goal pairs with the shipped SDS model
(descriptor network + dynamics, `keydyn.models`), locating the keypoints in the camera images, and does the same
with the shipped GT 3D model as the reference row. Writes, under `out`:

    results.md, results.json     the table (the shipped models' 200-pair figures and the paper's beside it)
    sds/, gt3d/                  each evaluation (results, errors.png, videos/ with the goal and current keypoints)

`--from-scratch` runs the pipeline instead, as `keydyn reproduce --preset demo` (collect, train descriptors,
choose SDS keypoints, train dynamics, evaluate beside GT 3D) into `out`. Both resume when run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keydyn.evaluation.evaluate import EvaluateConfig, evaluate
from keydyn.evaluation.paper import TABLE1
from keydyn.evaluation.reproduce import ReproduceConfig, format_table, run_reproduce
from keydyn.files import write_json_atomic, write_text_atomic
from keydyn.models import manifest, shipped_run
from keydyn.presets import from_preset

SHIPPED_METHODS = ("sds", "gt3d")
DEMO_PAIRS, DEMO_VIDEOS = 20, 2


@dataclass(frozen=True)
class DemoConfig:
    """Goal reaching from pixels with the shipped models (a few minutes on 2 CPU cores), or the whole pipeline."""

    out: Path = Path("demo_out")
    task: str = "top_down"
    """Task of the shipped models to run (`keydyn.models.shipped_tasks()`), or with --from-scratch to train on."""
    pairs: int = DEMO_PAIRS
    """Start/goal pairs (the first of the 200 fixed ones) to drive the object to."""
    videos: int = DEMO_VIDEOS
    """Pairs (the first ones) to record as videos."""
    workers: int = 2
    from_scratch: bool = False
    """Run the whole pipeline instead of the shipped models: `keydyn reproduce --preset <recipe>` into --out."""
    recipe: str = "demo"
    """With --from-scratch: the `keydyn reproduce` preset (demo: top_down at 160x120, about 15 min on 2 cores)."""
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.pairs < 1 or self.videos < 0 or self.workers < 0:
            raise ValueError("need --pairs >= 1, --videos >= 0 and --workers >= 0")
        if self.from_scratch and (self.pairs, self.videos) != (DEMO_PAIRS, DEMO_VIDEOS):
            raise ValueError(
                "with --from-scratch the recipe sets the pairs and videos (its `evaluation` preset); drop --pairs "
                "and --videos, or run `keydyn reproduce --preset demo --evaluation NAME` with another preset"
            )


def run_demo(config: DemoConfig) -> dict[str, Any]:
    """Run (or resume) the demo; returns {"table": Markdown, "results": {method: figures}}."""
    if config.from_scratch:
        table = run_reproduce(
            from_preset(
                ReproduceConfig,
                "reproduce",
                config.recipe,
                task=config.task,
                out=config.out,
                workers=config.workers,
                progress=config.progress,
            )
        )
        return {"table": format_table(table), "results": table["rows"]}
    models = manifest(config.task)
    results = {}
    for method in SHIPPED_METHODS:
        out = config.out / method
        outcome = evaluate(
            from_preset(
                EvaluateConfig,
                "evaluate",
                overrides={"episodes": config.pairs, "videos": config.videos},
                run=shipped_run(config.task, method),
                out=out,
                workers=config.workers,
                resume=(out / "config.json").exists(),
                progress=config.progress,
            )
        )
        results[method] = {"label": outcome["label"], "summary": outcome["summary"]}
    table = shipped_table(config.task, results, models)
    write_text_atomic(config.out / "results.md", table)
    write_json_atomic(config.out / "results.json", {"task": config.task, "results": results, "models": models})
    return {"table": table, "results": results}


def shipped_table(task: str, results: dict[str, Any], models: dict[str, Any]) -> str:
    """Markdown: this demo's figures beside the shipped models' documented 200-pair figures and the paper's."""
    lines = [
        f"Goal reaching on `{task}` from the shipped models: final error against the goal pose over the first "
        f"{next(iter(results.values()))['summary']['episodes']} start/goal pairs; beside it the same models on all "
        "200 pairs (their manifest) and the paper (Table 1).",
        "",
        "| method | position (cm) mean | median | angle (deg) mean | success | 200 pairs: position / angle | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for method, outcome in results.items():
        summary = outcome["summary"]
        documented = models["runs"][method].get("evaluation")
        measured = "" if documented is None else f"{documented['position_cm']:.2f} / {documented['angle_deg']:.2f}"
        paper = TABLE1[task].get(method)
        paper_text = "" if paper is None else f"{paper[0]} / {paper[1]}"
        lines.append(
            f"| {outcome['label']} | {summary['final_position_error_cm']['mean']:.2f} "
            f"| {summary['final_position_error_cm']['median']:.2f} | {summary['final_angle_error_deg']['mean']:.2f} "
            f"| {100 * summary['success_rate']:.0f}% | {measured} | {paper_text} |"
        )
    return "\n".join(lines) + "\n"

"""Summaries, Markdown tables and plots of goal-reaching results (cm and degrees, as the paper reports)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from keydyn.evaluation.goals import pair_identity, same_pairs
from keydyn.files import read_json
from keydyn.plots import pyplot, save_figure


def stops(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """How many episode rows were stopped by a refused observation or plan (their `fault`), and why: {reason: count}."""
    reasons = Counter(row["fault"] for row in rows if row.get("fault"))  # rows of older keydyn have no fault
    return {"stopped": sum(reasons.values()), "stop_reasons": dict(reasons.most_common())}


def summarize(rows: Sequence[dict[str, Any]], success_cm: float = 3.0, success_deg: float = 30.0) -> dict[str, Any]:
    """Mean and median final errors, the initial ('Avg. trajectory') errors and the success rate of episode rows.

    A success ends within `success_cm` of the goal position and `success_deg` of its orientation, and was not
    stopped by a refused observation (`stops`: counted, with the reasons).
    """
    if not rows:
        raise ValueError("no episodes to summarise")

    def stats(key: str) -> dict[str, float]:
        values = np.array([row[key] for row in rows], dtype=float)
        return {"mean": float(values.mean()), "median": float(np.median(values))}

    successes = [
        row["final_position_error_cm"] <= success_cm
        and row["final_angle_error_deg"] <= success_deg
        and not row.get("fault")
        for row in rows
    ]
    return {
        "episodes": len(rows),
        "final_position_error_cm": stats("final_position_error_cm"),
        "final_angle_error_deg": stats("final_angle_error_deg"),
        "initial_position_error_cm": stats("initial_position_error_cm"),
        "initial_angle_error_deg": stats("initial_angle_error_deg"),
        "success_rate": float(np.mean(successes)),
        "success_threshold": {"position_cm": success_cm, "angle_deg": success_deg},
        "terminated_early": sum(bool(row["termination"]) for row in rows),
        **stops(rows),
        "mean_plan_time_s": float(np.mean([row["mean_plan_time_s"] for row in rows])),
    }


def markdown_table(results: Sequence[tuple[str, dict[str, Any]]]) -> str:
    """A table like the paper's Table 1 from (label, summary) pairs, ending with the 'Avg. trajectory' row."""
    header = (
        "| method | position error (cm) mean | median | angle error (deg) mean | median | success | episodes |\n"
        "|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for label, s in results:
        p, a = s["final_position_error_cm"], s["final_angle_error_deg"]
        threshold = s["success_threshold"]
        lines.append(
            f"| {label} | {p['mean']:.2f} | {p['median']:.2f} | {a['mean']:.2f} | {a['median']:.2f} | "
            f"{100 * s['success_rate']:.0f}% (<= {threshold['position_cm']:g} cm, {threshold['angle_deg']:g} deg) "
            f"| {s['episodes']} |"
        )
    first = results[0][1]
    p, a = first["initial_position_error_cm"], first["initial_angle_error_deg"]
    lines.append(f"| Avg. trajectory | {p['mean']:.2f} | {p['median']:.2f} | {a['mean']:.2f} | {a['median']:.2f} | | |")
    notes = [stop_note(label, s) for label, s in results if s.get("stopped")]
    return header + "\n".join(lines) + "\n" + "".join(f"\n{note}\n" for note in notes)


def stop_note(label: str, summary: dict[str, Any]) -> str:
    """One line saying how many of a summary's episodes were stopped by a refused observation, and why."""
    reasons = "; ".join(f"{count} x {reason}" for reason, count in summary["stop_reasons"].items())
    return (
        f"{label}: {summary['stopped']} of {summary['episodes']} episodes stopped on a refused observation or "
        f"plan (zero velocity, counted as failures): {reasons}"
    )


def plot_errors(rows: Sequence[dict[str, Any]], out: Path, title: str, success_cm: float, success_deg: float) -> Path:
    """Save cumulative distributions of the final errors and final-versus-initial position error to `out`."""
    plt = pyplot()
    final_cm = np.sort([row["final_position_error_cm"] for row in rows])
    final_deg = np.sort([row["final_angle_error_deg"] for row in rows])
    fraction = np.arange(1, len(rows) + 1) / len(rows)
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for axis, values, threshold, unit in (
        (axes[0], final_cm, success_cm, "final position error (cm)"),
        (axes[1], final_deg, success_deg, "final angle error (deg)"),
    ):
        axis.step(values, fraction, where="post")
        axis.axvline(threshold, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel(unit)
        axis.set_ylabel("fraction of episodes")
        axis.set_ylim(0, 1.02)
        axis.grid(alpha=0.3)
    initial = [row["initial_position_error_cm"] for row in rows]
    axes[2].scatter(initial, [row["final_position_error_cm"] for row in rows], s=10, alpha=0.7)
    axes[2].set_xlabel("initial position error (cm)")
    axes[2].set_ylabel("final position error (cm)")
    axes[2].grid(alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, out, dpi=110)


def comparison_table(evaluations: Sequence[Path]) -> str:
    """A Markdown table per task comparing evaluation directories (each with the results.json of `keydyn evaluate`),
    like the paper's Table 1; rows in the given order, one 'Avg. trajectory' row per task.

    Raises:
        FileNotFoundError: a directory has no results.json.
        ValueError: no directories, or directories of one task evaluated on different start/goal pairs.
    """
    if not evaluations:
        raise ValueError("give one or more evaluation directories written by `keydyn evaluate`")
    by_task: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    pairs: dict[str, tuple[Any, ...]] = {}
    identities: dict[str, list[tuple[int, str | None]]] = {}
    for directory in evaluations:
        path = Path(directory) / "results.json"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; make it with `keydyn evaluate --out {directory}`")
        results = read_json(
            path, ("config", "task", "summary"), f"make it again with `keydyn evaluate --out {directory}`"
        )
        config, task = results["config"], results["task"]
        goals = {key: value for key, value in config["goals"].items() if key != "pairs"}  # older keydyn's, unused
        setting = (json.dumps(goals, sort_keys=True), results["summary"]["episodes"])
        identity = pair_identity(results["episodes"]) if "episodes" in results else None
        first = identities.setdefault(task, identity) if identity is not None else None
        if pairs.setdefault(task, setting) != setting or (first is not None and not same_pairs(first, identity)):
            raise ValueError(
                f"{directory} was evaluated on other start/goal pairs than the first `{task}` evaluation (--goals.* "
                "or --episodes differ, or keydyn, MuJoCo or the task drew them otherwise); compare evaluations of "
                "the same pairs"
            )
        by_task.setdefault(task, []).append((f"{results['label']} [{Path(directory).name}]", results["summary"]))
    return "\n".join(f"Goal reaching on `{task}`\n\n{markdown_table(rows)}" for task, rows in by_task.items())

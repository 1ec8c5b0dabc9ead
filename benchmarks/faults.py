"""Fault injection: kill -9 every stage at random moments, resume it, and compare with an uninterrupted run.

For each stage (collect, train-visual, train-dynamics, evaluate; tiny presets, seconds long), one uninterrupted
reference run is timed; then each trial starts the same command, kills its whole process group with SIGKILL
after a delay drawn uniformly from [0, the reference's duration], and reruns it (`--resume` when it left a
directory) until it finishes. The outcome is compared with the reference:

- identical: every stored array (collect), weights and metrics (trainers) or episode row (evaluate) equal, bit for
  bit (timings aside);
- lost / duplicated: rows (episodes, steps, epochs) missing from or repeated in the result;
- stuck: the rerun failed (its error is reported).

`killed_while_writing` counts the kills that cut a run after it had written into its directory (the others fell
in the interpreter's start-up, before any file, or after the end).

Prints one JSON document with the tallies per stage and the machine. Target: every trial identical, none lost,
duplicated or stuck.

    python benchmarks/faults.py --trials 20 --out /tmp/faults
    python benchmarks/faults.py --trials 2 --stages collect train-visual
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from keydyn.data.store import EpisodeStore
from keydyn.files import read_lines
from keydyn.locks import holds_files
from keydyn.machine import machine

STAGES = ("collect", "train-visual", "train-dynamics", "evaluate")
TIMING = re.compile(r"seconds|time|_s$|hz", re.IGNORECASE)


def stage_command(stage: str, out: Path, references: dict[str, Path], latent: str) -> list[str]:
    """The keydyn command line of `stage` writing `out`, reading the earlier stages' reference outputs; the
    dynamics are of `latent` ("sds": descriptor keypoints, which need train-visual, or "gt3d")."""
    visual = ["--visual-run", str(references.get("train-visual"))] if latent == "sds" else []
    arguments = {
        "collect": ["collect", "--preset", "tiny", "--episodes", "12"],
        "train-visual": [
            "train-visual",
            "--preset",
            "tiny",
            "--steps",
            "30",
            "--dataset",
            str(references.get("collect")),
        ],
        "train-dynamics": [
            "train-dynamics",
            "--preset",
            "tiny",
            "--epochs",
            "15",
            "--latent",
            latent,
            "--dataset",
            str(references.get("collect")),
            *visual,
        ],
        "evaluate": ["evaluate", "--preset", "tiny", "--episodes", "8", "--run", str(references.get("train-dynamics"))],
    }[stage]
    return [sys.executable, "-m", "keydyn.cli", *arguments, "--out", str(out), "--no-progress"]


def _environment() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run_to_end(command: list[str], out: Path) -> subprocess.CompletedProcess:
    """Run `command`, with --resume when `out` already holds something."""
    resume = ["--resume"] if out.exists() and holds_files(out) else []
    return subprocess.run(command + resume, env=_environment(), capture_output=True, text=True, timeout=900)


def run_killed(command: list[str], out: Path, delay_s: float) -> bool:
    """Start `command` and SIGKILL its process group after `delay_s` seconds (unless it ended before). Returns
    whether the kill cut it while it was writing `out` (it had written something there, and had not finished)."""
    process = subprocess.Popen(
        command, env=_environment(), start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        process.wait(timeout=delay_s)
        return False
    except subprocess.TimeoutExpired:
        writing = out.exists() and holds_files(out)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return writing


def _without_timings(row: dict) -> dict:
    return {key: value for key, value in row.items() if not TIMING.search(key)}


def _rows_outcome(reference: list[dict], result: list[dict], key: str) -> dict[str, int | bool]:
    counts = Counter(row[key] for row in result)
    expected = {row[key] for row in reference}
    return {
        "lost": len(expected - set(counts)),
        "duplicated": sum(count - 1 for count in counts.values() if count > 1),
        "identical": [_without_timings(r) for r in reference] == [_without_timings(r) for r in result],
    }


def compare_collect(reference: Path, result: Path) -> dict[str, int | bool]:
    a, b = EpisodeStore.open(reference), EpisodeStore.open(result)
    same = a.num_episodes == b.num_episodes and not b.verify()
    same = same and all(np.array_equal(a.episode_meta(n), b.episode_meta(n)) for n in a.episode_fields)
    same = same and all(np.array_equal(a.frames(n), b.frames(n)) for n in a.frame_fields)
    return {
        "lost": max(0, a.num_episodes - b.num_episodes),
        "duplicated": max(0, b.num_episodes - a.num_episodes),
        "identical": same,
    }


def _compare_trainer(counter: str) -> Callable[[Path, Path], dict[str, int | bool]]:
    def compare(reference: Path, result: Path) -> dict[str, int | bool]:
        outcome = _rows_outcome(read_lines(reference / "metrics.jsonl"), read_lines(result / "metrics.jsonl"), counter)
        for name in ("best.safetensors", "last.safetensors"):
            a, b = load_file(reference / name), load_file(result / name)
            outcome["identical"] = outcome["identical"] and a.keys() == b.keys()
            outcome["identical"] = outcome["identical"] and all(np.array_equal(a[k], b[k]) for k in a)
        return outcome

    return compare


def compare_evaluate(reference: Path, result: Path) -> dict[str, int | bool]:
    rows = [json.loads((path / "results.json").read_text())["episodes"] for path in (reference, result)]
    return _rows_outcome(rows[0], rows[1], "index")


COMPARE = {
    "collect": compare_collect,
    "train-visual": _compare_trainer("step"),
    "train-dynamics": _compare_trainer("epoch"),
    "evaluate": compare_evaluate,
}


def run_stage(
    stage: str, trials: int, work: Path, references: dict[str, Path], latent: str, rng: np.random.Generator
) -> dict:
    """The reference run of `stage` and `trials` killed-and-resumed runs; the tallies."""
    reference = work / stage / "reference"
    start = time.perf_counter()
    finished = run_to_end(stage_command(stage, reference, references, latent), reference)
    duration = time.perf_counter() - start
    if finished.returncode != 0:
        raise RuntimeError(f"the reference {stage} run failed:\n{finished.stderr}")
    references[stage] = reference
    tally = Counter({"trials": 0, "killed_while_writing": 0, "identical": 0, "lost": 0, "duplicated": 0, "stuck": 0})
    failures = []
    for trial in range(trials):
        out = work / stage / f"trial{trial:02d}"
        command = stage_command(stage, out, references, latent)
        delay = float(rng.uniform(0.0, duration))
        tally["killed_while_writing"] += run_killed(command, out, delay)
        tally["trials"] += 1
        resumed = run_to_end(command, out)
        if resumed.returncode != 0:
            tally["stuck"] += 1
            failures.append({"trial": trial, "kill_after_s": round(delay, 2), "error": resumed.stderr.strip()[-400:]})
            continue
        outcome = COMPARE[stage](reference, out)
        tally["identical"] += bool(outcome["identical"])
        tally["lost"] += int(outcome["lost"])
        tally["duplicated"] += int(outcome["duplicated"])
        if not outcome["identical"]:
            failures.append({"trial": trial, "kill_after_s": round(delay, 2), **outcome})
        shutil.rmtree(out, ignore_errors=True)
    return {"reference_s": round(duration, 1), **tally, "failures": failures}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="kills per stage")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--latent", choices=("sds", "gt3d"), default="sds", help="latent of the dynamics stage")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--out", type=Path, default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    needed = [  # the stages asked for and those giving their inputs
        stage
        for stage in STAGES[: max(STAGES.index(stage) for stage in args.stages) + 1]
        if stage in args.stages or stage != "train-visual" or args.latent == "sds"
    ]
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory() as temporary:
        work = args.out or Path(temporary)
        references: dict[str, Path] = {}
        stages = {
            stage: run_stage(stage, args.trials if stage in args.stages else 0, work, references, args.latent, rng)
            for stage in needed
        }
    report = {
        "benchmark": "faults",
        "trials_per_stage": args.trials,
        "latent": args.latent,
        "stages": {stage: stages[stage] for stage in args.stages},
        "all_identical": all(s["identical"] == s["trials"] for name, s in stages.items() if name in args.stages),
        "machine": machine(),
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()

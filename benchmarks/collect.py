"""Collection throughput: environment steps per second with two RGB-D cameras, written to a zarr store.

For each resolution and worker count, collects `--episodes` episodes of `top_down` with `keydyn collect`'s
code path and reports stored transitions per second (wall clock, worker start-up included), beside the
single-process simulate-and-render rate without any storage (the peer the store's overhead is measured
against). Prints one JSON document.

    python benchmarks/collect.py                   # all resolutions, 1 and 2 workers
    python benchmarks/collect.py --sizes 320x240 --workers 2 --episodes 40
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from keydyn.data.collect import CollectConfig, collect
from keydyn.machine import machine
from keydyn.sim.env import PushingEnv

PAPER_STEPS = 500 * 40  # the paper's dataset: 500 episodes of 40 steps


def env_rate(width: int, height: int, steps: int = 200) -> float:
    """Simulate-and-render steps per second in this process, no storage."""
    env = PushingEnv("top_down", width=width, height=height)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    done, start = 0, time.perf_counter()
    while done < steps:
        _, _, terminated, _, _ = env.step(rng.uniform(-0.2, 0.2, size=2))
        done += 1
        if terminated:
            env.reset(seed=done)
    rate = done / (time.perf_counter() - start)
    env.close()
    return rate


def collection_rate(width: int, height: int, workers: int, episodes: int) -> dict:
    with tempfile.TemporaryDirectory() as directory:
        config = CollectConfig(
            out=Path(directory) / "ds",
            episodes=episodes,
            steps=40,
            width=width,
            height=height,
            workers=workers,
            progress=False,
        )
        start, cpu = time.perf_counter(), time.process_time()
        store = collect(config)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        transitions = store.num_frames - store.num_episodes
        size = sum(p.stat().st_size for p in (Path(directory) / "ds").rglob("*") if p.is_file())
    return {
        "workers": workers,
        "episodes": episodes,
        "transitions": int(transitions),
        "seconds": round(seconds, 2),
        "steps_per_s": round(transitions / seconds, 1),
        "paper_dataset_minutes": round(PAPER_STEPS / (transitions / seconds) / 60, 2),
        "bytes_per_frame": int(size / store.num_frames),
        # this process's CPU time (it writes the store; with workers they simulate): what the writer costs
        "main_process_cpu_ms_per_episode": round(1e3 * cpu / episodes, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["160x120", "320x240", "640x480"])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--episodes", type=int, default=24)  # 120+ amortises worker start-up
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        entry = {"resolution": size, "cameras": 2, "env_steps_per_s_no_storage": round(env_rate(width, height), 1)}
        entry["collection"] = [collection_rate(width, height, w, args.episodes) for w in args.workers]
        results.append(entry)
        print(json.dumps(entry), file=sys.stderr)
    target = next(
        (c for r in results if r["resolution"] == "320x240" for c in r["collection"] if c["workers"] == 2), None
    )
    print(
        json.dumps(
            {
                "benchmark": "collect",
                "machine": machine(),
                "results": results,
                "target": {
                    "what": "steps/s at 320x240 with 2 workers",
                    "required": 100,
                    "measured": target["steps_per_s"] if target else None,
                    "met": bool(target and target["steps_per_s"] >= 100),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

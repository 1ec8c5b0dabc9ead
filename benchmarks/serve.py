"""Round trip of `keydyn serve` at 640x480: what the socket adds to a control step.

A `keydyn serve` process (the shipped top_down SDS run by default) and, in this process, the same run's
`ControlSession` are given the same 640x480 observations of top_down (rendered beforehand, one camera or both,
exactly keydyn's observation entries, float32 depth), after the same reset. Per call:
- round trip: `Client.act` over a local TCP socket (encode, send, decode, average down to 320x240, encode the
  latent, plan, reply);
- in process: `ControlSession.act` on the same observation (average down, encode, plan);
- overhead: round trip minus in process, call by call: transport and (de)serialisation;
- refused: the round trip of an `act` that the server refuses before encoding (no episode), the whole observation
  sent and decoded but nothing computed: the transport and (de)serialisation alone, free of the planner's noise.
Every served action is checked to equal the in-process one. Median and 90th percentile over --calls calls.

    python benchmarks/serve.py                       # 1 torch thread in each process, 30 calls
    python benchmarks/serve.py --calls 100 --threads 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from keydyn.machine import machine
from keydyn.models import shipped_run
from keydyn.remote.client import Client, ServerError
from keydyn.remote.protocol import encode, request
from keydyn.remote.session import ControlSession, ServeConfig
from keydyn.sim.environment import make_environment

WIDTH, HEIGHT = 640, 480
WARMUP = 2  # untimed calls after the reset: the first plan also evaluates the constant-velocity grid


def observations(session: ControlSession, cameras: int, count: int) -> list[dict[str, np.ndarray]]:
    """`count` observations of the run's task at 640x480 with the first `cameras` cameras' entries, along pushes
    of the pusher at 0.1 m/s (restarting when one leaves the table)."""
    env = make_environment(dataclasses.replace(session.run.task, width=WIDTH, height=HEIGHT))
    names = session.cameras[:cameras]
    keys = ["pusher_position"] + [
        f"{name}/{entry}" for name in names for entry in ("rgb", "depth", "intrinsics", "pose")
    ]
    observation, _ = env.reset(seed=0)
    found = []
    while len(found) < count:
        found.append({key: observation[key] for key in keys})
        observation, _, terminated, _, _ = env.step(np.array([0.1, 0.0], np.float32))
        if terminated:
            observation, _ = env.reset(seed=len(found))
    env.close()
    return found


def percentiles(values_s: list[float]) -> dict[str, float]:
    """Median and 90th percentile of seconds, in milliseconds."""
    return {
        "median": round(1e3 * float(np.median(values_s)), 2),
        "p90": round(1e3 * float(np.percentile(values_s, 90)), 2),
    }


def timed(call) -> tuple[object, float]:
    """`call()`'s value and the seconds it took."""
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def refusal(call) -> str:
    """The message of the ServerError that `call()` raises."""
    try:
        call()
    except ServerError as error:
        return str(error)
    raise AssertionError("the server accepted a request that it should refuse")


def measure(client: Client, session: ControlSession, cameras: int, calls: int) -> dict:
    """The figures of one camera count (see the module docstring)."""
    found = observations(session, cameras, WARMUP + calls + 1)
    goal, steps = found[0], found[1:]
    assert "exactly one of goal" in refusal(client.reset)  # a refused reset leaves the server with no episode
    refused = [
        timed(lambda observation=observation: refusal(lambda: client.act(observation)))[1]
        for observation in steps[WARMUP:]
    ]
    client.reset(goal=goal, seed=0)
    session.reset(goal=goal, seed=0)
    served, local = [], []
    for index, observation in enumerate(steps):
        action, remote_s = timed(lambda observation=observation: client.act(observation))
        reply, local_s = timed(lambda observation=observation, index=index: session.act(observation, index))
        if not np.array_equal(action, reply["action"]):
            raise AssertionError(f"call {index}: served action {action} differs from in-process {reply['action']}")
        if index >= WARMUP:
            served.append(remote_s)
            local.append(local_s)
    return {
        "cameras": cameras,
        "request_bytes": len(encode(request("act", observation=steps[0], step=0))),
        "round_trip_ms": percentiles(served),
        "in_process_ms": percentiles(local),
        "overhead_ms": percentiles([remote - own for remote, own in zip(served, local, strict=True)]),
        "refused_round_trip_ms": percentiles(refused),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=None, help="dynamics run to serve (default: shipped top_down SDS)")
    parser.add_argument("--calls", type=int, default=30, help="timed calls per camera count")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads in this process and in the server's (one computes at a time)",
    )
    args = parser.parse_args()
    run = args.run or shipped_run("top_down", "sds")
    torch.set_num_threads(args.threads)
    command = [sys.executable, "-m", "keydyn.cli", "serve", "--run", str(run), "--address", "tcp://127.0.0.1:*"]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}  # torch's threads in the server
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=environment)
    try:
        line = server.stdout.readline()
        address = re.search(r" at (tcp://\S+);", line)
        if address is None:
            raise RuntimeError(f"keydyn serve did not start: {line!r}")
        session = ControlSession(ServeConfig(run=run))
        with Client(address.group(1), timeout_s=60) as client:
            results = [measure(client, session, cameras, args.calls) for cameras in (1, 2)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    document = {
        "benchmark": "serve",
        "run": str(run),
        "resolution": f"{WIDTH}x{HEIGHT}",
        "settings": {"calls": args.calls, "threads": args.threads, "transport": "tcp://127.0.0.1"},
        "results": results,
        "machine": machine(),
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()

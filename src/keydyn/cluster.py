"""Where independent units of work run: in this process, in local worker processes, or on a Ray cluster.

A job made of independent units (the episodes of a collection or an evaluation, the starts of a tracking study)
maps a per-process worker over them (`map_units`): `make_worker(config)` is built once in each process, or Ray
actor, and called on each unit it is sent. Every process runs torch with one thread; with per-unit seeds this
makes a unit's result independent of which process, and how many, ran it, so both backends give the same results.

`RayTasks` runs whole functions (the stages of `keydyn reproduce`) as Ray tasks. Ray is optional: `pip install -e
".[cluster]"`; see docs/usage.md, "Clusters (Ray)", for starting a cluster.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from keydyn.workers import capped_count, die_with_parent, worker_count

Worker = Callable[[Any], Any]

RAY_MISSING = 'the Ray backend needs Ray: install keydyn\'s cluster extra (pip install -e ".[cluster]")'


@dataclass(frozen=True)
class ClusterConfig:
    """Where the independent units of a command run. Not part of its results: a run may be resumed on the other
    backend."""

    backend: Literal["local", "ray"] = "local"
    """local: worker processes on this machine; ray: actors on a Ray cluster (the `cluster` extra)."""
    address: str | None = None
    """The Ray cluster to join: none starts one on this machine (`ray.init()`); "auto" joins the one `ray start`
    made here; HOST:PORT joins the cluster whose head is there."""

    def __post_init__(self) -> None:
        if self.backend not in ("local", "ray"):
            raise ValueError(f"unknown --cluster.backend {self.backend!r}; choose local or ray")
        if self.address is not None and self.backend != "ray":
            raise ValueError("--cluster.address names a Ray cluster; add --cluster.backend ray")
        if self.backend == "ray" and importlib.util.find_spec("ray") is None:
            raise ValueError(RAY_MISSING)


LOCAL = ClusterConfig()
"""The default backend: worker processes on this machine."""


def connect(cluster: ClusterConfig) -> Any:
    """The `ray` module, connected to the cluster `cluster.address` names (a process already connected stays so).

    Raises:
        ImportError: Ray is not installed (naming the extra that installs it).
    """
    try:
        import ray
    except ImportError as error:
        raise ImportError(RAY_MISSING) from error
    if not ray.is_initialized():
        ray.init(address=cluster.address)
    return ray


def process_count(workers: int, units: int, cluster: ClusterConfig) -> int:
    """Processes to start for `units` units when `workers` were asked for: locally `keydyn.workers.worker_count`
    (this machine's CPUs and memory); on Ray at most one actor per unit and per CPU of the cluster."""
    if cluster.backend == "local":
        return worker_count(workers, units)
    if workers <= 1:
        return 1  # without asking (or starting) a cluster
    cpus = int(connect(cluster).cluster_resources().get("CPU", 1))
    return capped_count(workers, {"units of work": units, "CPUs of the Ray cluster": cpus}, "Ray actors")


def map_units(
    make_worker: Callable[[Any], Worker],
    config: Any,
    units: Iterable[Any],
    workers: int,
    cluster: ClusterConfig = LOCAL,
    ordered: bool = False,
) -> Iterator[Any]:
    """Yield `make_worker(config)(unit)` for every unit: in the units' order when `ordered`, else as they finish.

    make_worker: a picklable (module-level) factory, called once per process. workers = 0 runs the units in this
    process (either backend); otherwise they run in at most `workers` processes (`process_count`): local ones
    (spawned, dying with this one) or Ray actors, which need `config`'s paths on a file system every node sees.
    """
    units = list(units)
    if workers == 0:
        import torch  # the caller's process has it already: every in-process worker is a keydyn command's

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            worker = make_worker(config)
            for unit in units:
                yield worker(unit)
        finally:
            torch.set_num_threads(threads)
        return
    if not units:
        return
    count = process_count(workers, len(units), cluster)
    if cluster.backend == "ray":
        yield from _ray_map(make_worker, config, units, count, cluster, ordered)
    else:
        yield from _pool_map(make_worker, config, units, count, ordered)


# -- local processes -----------------------------------------------------------------------------------------
_worker: Worker | None = None  # this pool process's worker, built once by _start


def one_torch_thread() -> None:
    """Run torch with one thread in this process: now if it is imported, else from its import on (through
    OMP_NUM_THREADS), so that a worker whose units never use torch (collection) does not pay its ~2 s import."""
    torch = sys.modules.get("torch")
    if torch is None:
        os.environ["OMP_NUM_THREADS"] = "1"
    else:
        torch.set_num_threads(1)


def _start(make_worker: Callable[[Any], Worker], config: Any, parent: int) -> None:
    global _worker
    die_with_parent(parent)
    one_torch_thread()
    _worker = make_worker(config)


def _call(unit: Any) -> Any:
    if _worker is None:
        raise RuntimeError("the pool initializer did not run")
    return _worker(unit)


def _pool_map(
    make_worker: Callable[[Any], Worker], config: Any, units: list[Any], count: int, ordered: bool
) -> Iterator[Any]:
    # Spawned (not forked) workers: an OpenGL context or torch's threads must not be shared with a parent.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(count, context, initializer=_start, initargs=(make_worker, config, os.getpid())) as pool:
        futures: list[Future] = [pool.submit(_call, unit) for unit in units]
        try:
            for future in futures if ordered else as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


# -- Ray -----------------------------------------------------------------------------------------------------
class _Actor:
    """A Ray actor: one worker, built once, run with one torch thread."""

    def __init__(self, make_worker: Callable[[Any], Worker], config: Any) -> None:
        one_torch_thread()
        self.worker = make_worker(config)

    def run(self, unit: Any) -> Any:
        return self.worker(unit)


def _ray_map(
    make_worker: Callable[[Any], Worker],
    config: Any,
    units: list[Any],
    count: int,
    cluster: ClusterConfig,
    ordered: bool,
) -> Iterator[Any]:
    ray = connect(cluster)
    from ray.util import ActorPool

    actor = ray.remote(num_cpus=1)(_Actor)
    shared = ray.put(absolute_paths(config))
    actors = [actor.remote(make_worker, shared) for _ in range(count)]
    try:
        pool = ActorPool(actors)
        send = pool.map if ordered else pool.map_unordered
        yield from send(lambda handle, unit: handle.run.remote(unit), units)
    finally:
        for handle in actors:
            ray.kill(handle)


def _run_task(function: Callable[..., Any], threads: int, *args: Any) -> Any:
    import torch  # a reproduce stage: every one uses torch

    torch.set_num_threads(threads)
    return function(*args)


class RayTasks:
    """Functions run as Ray tasks, each in one process with `threads` torch threads (and as many CPUs reserved),
    and `gpus` GPUs reserved (Ray hides the others from the task: it sees its own as cuda:0).

    `submit(function, *args)` returns a handle at once; an argument may be the handle of an earlier submission
    (the task then starts once that one has finished, and receives its result). `results(handles)` waits for them.
    Dataclass arguments travel with their paths made absolute (see `absolute_paths`).
    """

    def __init__(self, cluster: ClusterConfig, threads: int = 1, gpus: int = 0) -> None:
        self.ray = connect(cluster)
        self.threads = threads
        self._remote = self.ray.remote(num_cpus=threads, num_gpus=gpus)(_run_task)

    def submit(self, function: Callable[..., Any], *args: Any) -> Any:
        return self._remote.remote(function, self.threads, *(absolute_paths(arg) for arg in args))

    def results(self, handles: Iterable[Any]) -> list[Any]:
        return self.ray.get(list(handles))


def absolute_paths(config: Any) -> Any:
    """A copy of dataclass `config` with its Path fields resolved against this process's working directory (a
    process on another node starts elsewhere); anything else unchanged."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return config
    resolved = copy.copy(config)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, Path):
            object.__setattr__(resolved, field.name, value.resolve())
    return resolved

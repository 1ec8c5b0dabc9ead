"""Run independent episodes in a pool of processes (or in this one), each planning with one thread.

One thread per process makes an episode's arithmetic identical whichever process, and however many, run it;
with per-episode seeds this makes results independent of the worker count.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

import torch

from keydyn.workers import die_with_parent, worker_count

Worker = Callable[[Any], Any]

_worker: Worker | None = None  # this pool process's worker, built once by _start


def _start(make_worker: Callable[[Any], Worker], config: Any, parent: int) -> None:
    global _worker
    die_with_parent(parent)
    torch.set_num_threads(1)
    _worker = make_worker(config)


def _call(item: Any) -> Any:
    if _worker is None:
        raise RuntimeError("the pool initializer did not run")
    return _worker(item)


def run_parallel(make_worker: Callable[[Any], Worker], config: Any, items: Iterable[Any], workers: int) -> Iterator:
    """Yield `make_worker(config)(item)` for every item, in the order they finish.

    make_worker: a picklable (module-level) factory, called once per process. workers = 0 runs in this process;
    otherwise at most one process per item and as many as the machine allows (`keydyn.workers.worker_count`).
    """
    items = list(items)
    if workers == 0:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            worker = make_worker(config)
            for item in items:
                yield worker(item)
        finally:
            torch.set_num_threads(threads)
        return
    if not items:
        return
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        worker_count(workers, len(items)), context, initializer=_start, initargs=(make_worker, config, os.getpid())
    ) as pool:
        futures = [pool.submit(_call, item) for item in items]
        try:
            for future in as_completed(futures):
                yield future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise

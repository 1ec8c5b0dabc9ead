"""Worker processes: how many a job may start, and that they end with the process that started them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

MEMORY_PER_WORKER = 1 << 30
"""Bytes of available memory counted per worker process (a simulator with its renderer, or a planner with torch,
takes a few hundred MB; the margin covers image buffers)."""


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is no /proc)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(requested: int, units: int) -> int:
    """Processes to start for `units` independent pieces of work when `requested` were asked for: never more than
    the units, the usable CPUs, or the available memory allows (MEMORY_PER_WORKER each); at least 1. A cap is
    reported on standard error with its reason."""
    memory = _available_memory()
    limits = {
        "units of work": units,
        "usable CPUs": usable_cpus(),
        "GiB of available memory": memory // MEMORY_PER_WORKER if memory is not None else requested,
    }
    return capped_count(requested, limits)


def capped_count(requested: int, limits: dict[str, int], what: str = "worker processes") -> int:
    """`requested`, capped by each of `limits` (its reason -> the most it allows), at least 1; a cap is reported on
    standard error with its reasons (`what` names what is started)."""
    count = max(1, min(requested, *limits.values()))
    if count < requested:
        reason = ", ".join(f"{value} {name}" for name, value in limits.items() if value < requested)
        print(f"keydyn: starting {count} {what}, not {requested} ({reason})", file=sys.stderr)
    return count


def die_with_parent(parent: int) -> None:
    """Have the kernel kill this process when its parent, process `parent` (its pid, passed by the parent), dies
    (Linux; a no-op elsewhere), so that workers of a killed job do not live on. Call it first thing in a worker
    process; if the parent died before, the worker exits here."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent:  # it died while this process started (before the call above)
        os._exit(1)

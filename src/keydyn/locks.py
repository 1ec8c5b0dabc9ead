"""One writer at a time per dataset or run directory: an advisory lock that names its holder.

The lock is `fcntl.flock` on a file in the directory, so the kernel releases it when its process ends,
however it ends (no stale locks after a kill -9). The file records who holds it, for the error a second
writer gets.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

LOCK_NAME = ".keydyn.lock"


class DirectoryBusyError(RuntimeError):
    """Another process is writing the directory."""


class DirectoryLock:
    """An exclusive lock on `directory`, held from `acquire` (or `with`) until `release`.

    create: make the directory (and its parents) when missing; a directory made so and holding nothing but the
        lock file at release is removed again (a run refused before writing anything leaves nothing behind).
    """

    def __init__(self, directory: Path, what: str, create: bool = False) -> None:
        self.path = Path(directory) / LOCK_NAME
        self.what = what
        self.create = create
        self._created = False
        self._file: int | None = None

    def acquire(self) -> DirectoryLock:
        """Take the lock, or raise DirectoryBusyError naming the process that holds it (NotADirectoryError when the
        directory is a file)."""
        if self.path.parent.exists() and not self.path.parent.is_dir():
            raise NotADirectoryError(f"{self.path.parent} is a file, not a directory; choose another --out")
        if self.create and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._created = True
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(os.read(descriptor, 4096))
            os.close(descriptor)
            raise DirectoryBusyError(
                f"{self.path.parent} is being written by {holder}; wait for it to finish or stop it, then rerun "
                "(two writers at once would corrupt it)"
            ) from None
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else self.what,
            "what": self.what,
            "since": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, json.dumps(record).encode(), 0)
        self._file = descriptor
        return self

    def release(self) -> None:
        if self._file is None:
            return
        if self._created and [entry.name for entry in self.path.parent.iterdir()] == [LOCK_NAME]:
            self.path.unlink()  # still held: nobody else can be using the directory
            self.path.parent.rmdir()
        os.close(self._file)  # closing drops the flock; the file stays (removing it would race a new holder)
        self._file = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType) -> None:
        self.release()


Run = TypeVar("Run", bound=Callable[..., Any])


def one_writer(what: str) -> Callable[[Run], Run]:
    """Decorate a `run(config, ...)` that writes the directory `config.out`: the directory's lock is held (and the
    directory made) while it runs, so a second run given the same --out stops with an error naming the first. Of the
    ranks of a torchrun run (`keydyn.distributed`) rank 0 alone writes, and holds the lock."""

    def decorate(run: Run) -> Run:
        @functools.wraps(run)
        def locked(config: Any, *args: Any, **kwargs: Any) -> Any:
            from keydyn.distributed import writes_files  # torch: imported by the commands that run, not by this module

            if not writes_files() or (getattr(config, "resume", False) and not Path(config.out).exists()):
                return run(config, *args, **kwargs)  # (the latter says there is nothing to resume)
            with DirectoryLock(config.out, what, create=True):
                return run(config, *args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate


@contextlib.contextmanager
def taking_turns(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file `path` (created), waiting while another process holds it: around work that
    processes running side by side may start at once and one should do (filling a shared cache), so that the
    others find it done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # drops the lock


def holds_files(directory: Path) -> bool:
    """Whether `directory` holds anything besides its lock file."""
    return any(entry.name != LOCK_NAME for entry in directory.iterdir())


def _describe(content: bytes) -> str:
    try:
        record = json.loads(content)
        since, command = record["since"], record["command"]
        return f"process {record['pid']} on {record['host']} ({record['what']}: `{command}`, since {since})"
    except (ValueError, KeyError, TypeError):
        return "another process"

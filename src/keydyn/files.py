"""Atomic file writes (temporary file, then os.replace), JSON and JSON-lines reading that name the file on an error,
and file hashes; shared by runs and reports."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

DAMAGED = (
    "the file is damaged or was changed from outside keydyn: restore it, or remake it with the command that wrote it"
)
"""The fix named by a read error of a file keydyn wrote, when the caller names none."""


def is_disk_full(error: BaseException) -> bool:
    """Whether `error` is a write failing on a full disk or an exhausted quota."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def disk_full_error(path: Path, error: OSError) -> OSError:
    """A one-line OSError for a write of `path` that failed on a full disk (or quota), naming the free space."""
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e6:.0f} MB free"
    except OSError:
        free = "free space unknown"
    return OSError(
        f"no space left to write {path} ({free}; {error.strerror}); the files written before it stand: free some "
        "space (or write to another disk) and run the command again (with --resume where it has one)"
    )


def write_atomic(path: Path, write: Callable[[Path], None], shown: Path | None = None) -> None:
    """Call `write(temporary)` and move the temporary file onto `path`; readers never see a partial file.

    shown: the file named in errors (default `path`), e.g. the final name of a file written under a pending one.

    Raises:
        OSError: one line naming the file and the free space when the disk (or quota) is full; the temporary file
            is removed and `path` keeps its previous content.
    """
    temporary = path.with_name(path.name + ".partial")
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if is_disk_full(error):
            raise disk_full_error(shown or path, error) from error
        raise


def write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(value, indent=2) + "\n"))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def write_lines(path: Path, rows: list[dict]) -> None:
    """Write `rows` as JSON lines (one object per line)."""
    Path(path).write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_lines_atomic(path: Path, rows: list[dict]) -> None:
    write_atomic(path, lambda p: write_lines(p, rows))


def read_json(path: Path, required: tuple[str, ...] = (), fix: str = DAMAGED) -> Any:
    """The JSON value in `path`; when `required` names keys, a dict that holds them all.

    Raises:
        FileNotFoundError: `path` does not exist.
        ValueError: one line naming `path`, what is wrong (not JSON, a missing key) and `fix`.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error.msg}, line {error.lineno}); {fix}") from error
    except UnicodeDecodeError as error:
        raise ValueError(f"{path} is not text ({error.reason}); {fix}") from error
    if required:
        if not isinstance(value, dict):
            raise ValueError(
                f"{path} holds a JSON {type(value).__name__}, not an object with {', '.join(required)}; {fix}"
            )
        missing = [key for key in required if key not in value]
        if missing:
            raise ValueError(f"{path} lacks {', '.join(missing)}; {fix}")
    return value


def read_lines(path: Path) -> list[dict]:
    """The JSON rows of a .jsonl file (none when it does not exist).

    A last line cut short by an interruption (no newline at its end and not JSON) is ignored: everything before
    it is intact.

    Raises:
        ValueError: a line that is not a JSON object anywhere else, naming the file and the line.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                break  # torn by an interruption while it was appended
            row = None
        if not isinstance(row, dict):
            raise ValueError(f"{path}, line {number}: not a JSON row; {DAMAGED}")
        rows.append(row)
    return rows


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

"""Atomic file writes (temporary file, then os.replace) and JSON-lines reading, shared by runs and reports."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(temporary)` and move the temporary file onto `path`; readers never see a partial file."""
    temporary = path.with_name(path.name + ".partial")
    write(temporary)
    os.replace(temporary, path)


def write_json_atomic(path: Path, value: Any) -> None:
    write_atomic(path, lambda p: p.write_text(json.dumps(value, indent=2) + "\n"))


def write_text_atomic(path: Path, text: str) -> None:
    write_atomic(path, lambda p: p.write_text(text))


def write_lines_atomic(path: Path, rows: list[dict]) -> None:
    write_atomic(path, lambda p: p.write_text("".join(json.dumps(row) + "\n" for row in rows)))


def read_lines(path: Path) -> list[dict]:
    """The complete JSON rows of a .jsonl file (none when it does not exist); a torn last line is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by an interruption: everything before it is intact
    return rows

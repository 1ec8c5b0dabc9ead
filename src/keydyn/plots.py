"""Headless matplotlib: pyplot on the Agg backend, and figures saved atomically.

matplotlib is imported on first use, so modules that only sometimes draw do not pay for it at import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from keydyn.files import write_atomic


def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path, dpi: float | None = None) -> Path:
    """Write `figure` to `path` (format from the suffix) atomically, close it, and return the path.

    dpi: dots per inch; None keeps the figure's own.
    """
    path = Path(path)
    write_atomic(path, lambda p: figure.savefig(p, dpi=dpi or "figure", format=path.suffix.lstrip(".")))
    pyplot().close(figure)
    return path

"""Trained models shipped with keydyn: descriptor networks and dynamics runs, ready for control.

`keydyn/models/<task>/` holds, for a task:

    manifest.json      format version, provenance (the commands and commit that made the models, their measured
                       errors) and the SHA-256 of every file below
    visual/            the descriptor network (best.json + best.safetensors of `keydyn train-visual`)
    <method>/          dynamics runs (`keydyn train-dynamics`): config.json, task.json, best.json,
                       best.safetensors, and for descriptor latents the references, the rigid filter and
                       visual_network.json, whose `visual_run` (../visual) is relative to the run

`shipped_run(task, method)` checks the manifest (version, every file's hash) and returns the run directory, which
loads like any other run (`keydyn.control.run.load_run`, `keydyn evaluate --run`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from keydyn.files import file_sha256, read_json

FORMAT_VERSION = 1
"""Version of the shipped-model layout; bumped when the files or their meaning change."""


def models_root() -> Path:
    """The directory of the shipped models (inside the installed package)."""
    return Path(str(resources.files(__name__)))


def shipped_tasks(root: Path | None = None) -> list[str]:
    """Tasks with shipped models (in `root`, by default the package's)."""
    return sorted(path.parent.name for path in (root or models_root()).glob("*/manifest.json"))


def manifest(task: str, root: Path | None = None) -> dict[str, Any]:
    """The manifest of a task's shipped models (in `root`, by default the package's), checked: its format
    version and the hash of every file.

    Raises:
        ValueError: no models for `task`, a manifest of another format version, or a file that is missing or
            differs from the one shipped (its hash names it).
    """
    folder = (root or models_root()) / task
    path = folder / "manifest.json"
    if not path.exists():
        raise ValueError(f"no shipped models for task {task!r}; shipped: {', '.join(shipped_tasks(root)) or 'none'}")
    content = read_json(path, required=("format",), fix="reinstall keydyn")
    if content.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is of shipped-model format {content.get('format')!r}, this keydyn reads format "
            f"{FORMAT_VERSION}; reinstall keydyn so that its code and models match"
        )
    if not isinstance(content.get("files"), dict) or not isinstance(content.get("runs"), dict):
        raise ValueError(f"{path} lacks its `files` or `runs`; reinstall keydyn")
    present = {str(file.relative_to(folder)) for file in folder.rglob("*") if file.is_file()}
    present -= {"manifest.json"} | {name for name in present if "__pycache__" in name}
    unlisted = sorted(present - set(content["files"]))
    if unlisted:
        raise ValueError(f"{folder} holds files its manifest does not list ({', '.join(unlisted)}); remove them")
    for name, expected in content["files"].items():
        file = folder / name
        if not file.exists():
            raise ValueError(f"shipped model file {file} is missing; reinstall keydyn")
        if file_sha256(file) != expected:
            raise ValueError(f"shipped model file {file} differs from the one shipped (SHA-256); reinstall keydyn")
    return content


def shipped_run(task: str, method: str, root: Path | None = None) -> Path:
    """The checked directory of the shipped dynamics run of `method` (e.g. "sds", "gt3d") on `task` (in `root`,
    by default the package's).

    Raises:
        ValueError: as `manifest`, or no shipped run of `method` for `task`.
    """
    content = manifest(task, root)
    if method not in content["runs"]:
        raise ValueError(f"no shipped {method} run for {task}; shipped: {', '.join(content['runs'])}")
    return (root or models_root()) / task / method

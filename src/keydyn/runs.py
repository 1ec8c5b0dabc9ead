"""What every run directory shares: creating it or checking it for --resume, the device, the dataset it reads."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from keydyn.data.store import EpisodeStore
from keydyn.sim.config import TaskConfig


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as given."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def open_dataset(path: Path) -> EpisodeStore:
    """Open a dataset for reading, with an error that says how to make one when it is missing."""
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist; collect one with `keydyn collect --out {path}`")
    return EpisodeStore.open(path)


def store_task(store: EpisodeStore) -> TaskConfig:
    """The TaskConfig a dataset was collected with."""
    return TaskConfig.from_dict(store.attrs["task_config"])


class RunConfig(Protocol):
    """A run's frozen config dataclass: whether to resume, and its fields as JSON values through to_json()."""

    @property
    def resume(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...


def default_settings(config: RunConfig) -> dict[str, Any]:
    """`config.to_json()` with every field that has a default set to that default (fields without one keep
    `config`'s value): what a run whose config.json predates a field is taken to have used for it."""
    values = {}
    for field in dataclasses.fields(config):  # type: ignore[arg-type]
        if field.default is not dataclasses.MISSING:
            values[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            values[field.name] = field.default_factory()
        else:
            values[field.name] = getattr(config, field.name)
    return type(config)(**values).to_json()


def _with_missing_filled(stored: Any, defaults: Any) -> Any:
    """`stored` (a JSON value) with the keys that only `defaults` has added, at every depth."""
    if not isinstance(stored, dict) or not isinstance(defaults, dict):
        return stored
    return {**defaults, **{name: _with_missing_filled(value, defaults.get(name)) for name, value in stored.items()}}


def _without_removed(stored: Any, current: Any) -> Any:
    """`stored` (a JSON value) without the keys that `current` lacks, at every depth."""
    if not isinstance(stored, dict) or not isinstance(current, dict):
        return stored
    return {name: _without_removed(value, current[name]) for name, value in stored.items() if name in current}


def prepare_run_dir(
    out: Path,
    config: RunConfig,
    may_change: tuple[str, ...],
    marker: str,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> bool:
    """Create `out` for a new run, or check that a run there can be resumed with `config`.

    config: the run's config (its `resume` field says which); compared with the config.json stored in `out` on
        resume. A setting the stored file lacks (a field added to keydyn after that run started) counts as its
        default, so runs made by older versions resume when the new setting is left at its default; a setting
        only the stored file has (a field removed from keydyn since) is ignored.
    may_change: settings that may differ between a run and its resumption.
    marker: the file whose presence shows there is something to resume (e.g. "last.json").
    upgrade: turns a stored config.json of an older layout into the current one (beyond added and removed
        settings) before the comparison.
    Returns True when resuming.

    Raises:
        ValueError: `out` holds files and resume is off, or settings outside `may_change` differ.
        FileNotFoundError: resume is on but `out` has no `marker`.
    """
    if not config.resume:
        if out.exists() and any(out.iterdir()):
            raise ValueError(f"{out} already exists; pass --resume to continue that run, or pick a new --out")
        out.mkdir(parents=True, exist_ok=True)
        return False
    if not (out / marker).exists() or not (out / "config.json").exists():
        raise FileNotFoundError(f"--resume given but {out} holds nothing to resume ({marker}); drop --resume to start")
    current = json.loads(json.dumps(config.to_json()))  # tuples compare as the lists JSON stores
    stored = json.loads((out / "config.json").read_text())
    if upgrade is not None:
        stored = upgrade(stored)
    stored = _without_removed(_with_missing_filled(stored, default_settings(config)), current)
    different = sorted(name for name in current if name not in may_change and stored.get(name) != current[name])
    if different:
        raise ValueError(
            f"cannot resume {out}: its {', '.join(different)} differ from this run's; resume with the original "
            f"settings (only {', '.join(may_change)} may change) or write to a new --out"
        )
    return True


def resumed_checkpoint(out: Path, config: RunConfig, may_change: tuple[str, ...]) -> dict | None:
    """For a trainer: prepare `out` (see prepare_run_dir) and return its last.json when resuming, else None."""
    if prepare_run_dir(out, config, may_change, "last.json"):
        return json.loads((out / "last.json").read_text())
    return None


def load_training_state(out: Path, info: dict, counter: str) -> dict:
    """The optimizer/generator state saved beside last.json (last_optim.pt), checked to be of the same `counter`
    value ("epoch" or "step") as `info`, the last.json it belongs to."""
    state = torch.load(out / "last_optim.pt", map_location="cpu", weights_only=True)
    if state[counter] != info[counter]:
        raise ValueError(
            f"{out}: last_optim.pt is of {counter} {state[counter]} but last.json of {info[counter]}; corrupt run"
        )
    return state


def checkpoint_paths(run_dir: Path, which: str, how_to_train: str) -> tuple[Path, Path]:
    """(which.json, which.safetensors) of a run; FileNotFoundError naming `how_to_train` when missing."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    info_path, weights_path = run_dir / f"{which}.json", run_dir / f"{which}.safetensors"
    if not info_path.exists() or not weights_path.exists():
        raise FileNotFoundError(
            f"{run_dir} has no {which} checkpoint ({info_path.name}, {weights_path.name}); train one with "
            f"{how_to_train} or pass another run directory"
        )
    return info_path, weights_path


def load_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load `tensors` into `module`, every name and shape matched; a mismatch is a ValueError naming `source` and
    the tensors that differ (a checkpoint of another model, another keydyn version, or a corrupt file)."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"{source} does not fit its model configuration: {detail}") from error

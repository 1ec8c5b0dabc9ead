"""What every run directory shares: creating it or checking it for --resume, the device, the dataset it reads."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open

from keydyn.data.store import EpisodeStore
from keydyn.files import write_atomic, write_json_atomic
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


def resumed_checkpoint(
    out: Path,
    config: RunConfig,
    may_change: tuple[str, ...],
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> dict | None:
    """For a trainer: prepare `out` (see prepare_run_dir) and return its last.json when resuming, else None."""
    if prepare_run_dir(out, config, may_change, "last.json", upgrade):
        return json.loads((out / "last.json").read_text())
    return None


LAST_WEIGHTS, LAST_STATE, LAST_INFO = "last.safetensors", "last_optim.pt", "last.json"
PENDING = ".next"  # suffix of a checkpoint's files written but not yet moved onto their names


def _counter_of(path: Path, counter: str) -> int:
    """The `counter` ("epoch" or "step") a checkpoint file was written at: safetensors metadata, or the state's."""
    if path.name.startswith(LAST_WEIGHTS):
        with safe_open(str(path), "pt") as weights:
            return int((weights.metadata() or {})[counter])
    return int(torch.load(path, map_location="cpu", weights_only=True)[counter])


def commit_checkpoint(
    out: Path, weights: Callable[[Path], None], state: Callable[[Path], None], info: dict[str, Any]
) -> None:
    """Write the last checkpoint of a trainer so that a kill at any moment leaves either the previous checkpoint
    or this one, never a mix: the weights (`weights(path)` writes safetensors whose metadata holds the counter)
    and the optimiser state (`state(path)`, a dict holding the counter) go to `.next` files, then last.json
    (`info`, with the counter) commits them, then they are moved onto last.safetensors and last_optim.pt.
    `recover_checkpoint` finishes or drops an interrupted commit."""
    write_atomic(out / (LAST_WEIGHTS + PENDING), weights)
    write_atomic(out / (LAST_STATE + PENDING), state)
    write_json_atomic(out / LAST_INFO, info)
    os.replace(out / (LAST_WEIGHTS + PENDING), out / LAST_WEIGHTS)
    os.replace(out / (LAST_STATE + PENDING), out / LAST_STATE)


def _mixed_run(out: Path, name: str, counter: str, found: int, expected: int) -> ValueError:
    return ValueError(
        f"{out}: {name} is of {counter} {found} but last.json of {expected}; the run was changed from outside "
        "keydyn and cannot resume: start a new --out"
    )


def recover_checkpoint(out: Path, info: dict[str, Any], counter: str) -> None:
    """Before resuming from `info` (last.json): move the `.next` files of a commit that last.json had made onto
    their names, and drop those of one it had not; then check that last.safetensors is of last.json's `counter`
    (`load_training_state` checks last_optim.pt as it loads it).

    Raises:
        ValueError: the weights are of another counter than last.json (a run damaged from outside).
    """
    for name in (LAST_WEIGHTS, LAST_STATE):
        pending = out / (name + PENDING)
        if pending.exists():
            try:
                committed = _counter_of(pending, counter) == info[counter]
            except Exception:  # cut while written: never committed
                committed = False
            if committed:
                os.replace(pending, out / name)
            else:
                pending.unlink()
    found = _counter_of(out / LAST_WEIGHTS, counter)
    if found != info[counter]:
        raise _mixed_run(out, LAST_WEIGHTS, counter, found, info[counter])


def load_training_state(out: Path, info: dict, counter: str) -> dict:
    """The optimizer/generator state saved beside last.json (last_optim.pt), after `recover_checkpoint`, checked to
    be of last.json's `counter`."""
    recover_checkpoint(out, info, counter)
    state = torch.load(out / LAST_STATE, map_location="cpu", weights_only=True)
    if state[counter] != info[counter]:
        raise _mixed_run(out, LAST_STATE, counter, state[counter], info[counter])
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

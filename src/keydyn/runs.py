"""What every run directory shares: creating it or checking it for --resume, the device, the dataset it reads, and
its checkpoints, committed as a whole and verified when read."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

from keydyn.data.store import EpisodeStore, StoreError
from keydyn.files import DAMAGED, file_sha256, read_json, read_lines, write_atomic, write_json_atomic
from keydyn.locks import holds_files
from keydyn.sim.config import TaskConfig


def resolve_device(device: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as given.

    Raises:
        ValueError: `device` is no torch device, or a CUDA device this torch build or machine does not have.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N or auto") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {device!r}: CUDA is not available in this torch build or on this machine; use --device cpu or auto"
        )
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA devices; use cuda:0")
    return resolved


def check_finite_loss(value: float, where: str) -> None:
    """Stop a training run whose loss is NaN or inf, before a checkpoint takes the diverged weights in.

    Raises:
        ValueError: naming `where` (the epoch or step) and what to try.
    """
    if not math.isfinite(value):
        raise ValueError(
            f"the training loss is {value} at {where}: training diverged, and the run stops with its last checkpoint "
            "(if any) as it was (rerunning resumes from it, and diverges again); lower the learning rate, or train "
            "in float32 (--precision fp32 where the command has it)"
        )


def open_dataset(path: Path) -> EpisodeStore:
    """Open a dataset for reading, with an error that says how to make one when it is missing."""
    if not path.exists():
        raise FileNotFoundError(f"dataset {path} does not exist; collect one with `keydyn collect --out {path}`")
    return EpisodeStore.open(path)


def store_task(store: EpisodeStore) -> TaskConfig:
    """The TaskConfig a dataset was collected with.

    Raises:
        StoreError: the store has no (or an unreadable) task_config attribute: it was not written by `keydyn collect`.
    """
    stored = store.attrs.get("task_config")
    try:
        return TaskConfig.from_dict(stored)
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        problem = "has no task_config attribute" if stored is None else f"has an unreadable task_config ({error})"
        raise StoreError(
            f"{store.path} {problem}: keydyn needs the task its episodes were collected in; collect datasets with "
            "`keydyn collect`, or add the TaskConfig (keydyn.sim.config) as the store's task_config attribute"
        ) from error


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


def _paths_resolved(values: Any, config: Any) -> Any:
    """`values` (the JSON of `config`, or of a stored config of its type) with the settings that are paths in
    `config` made absolute and free of symbolic links (relative ones from the working directory), at every depth,
    so that `runs/a` and `/home/me/runs/a` compare equal."""
    if isinstance(config, Path):
        return str(Path(values).resolve()) if isinstance(values, str) else values
    if dataclasses.is_dataclass(config) and isinstance(values, dict):
        return {name: _paths_resolved(value, getattr(config, name, None)) for name, value in values.items()}
    return values


def prepare_run_dir(
    out: Path,
    config: RunConfig,
    may_change: tuple[str, ...],
    marker: str,
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> bool:
    """Create `out` for a new run, or check that a run there can be resumed with `config`.

    An existing directory is written only with --resume (two commands given the same --out by mistake never mix
    their files), and resuming needs the settings the run was started with. A run stopped before its first
    checkpoint (config.json but no `marker`) is started again from the beginning by --resume: its files belong
    to the same settings.

    config: the run's config (its `resume` field says which); compared with the config.json stored in `out` on
        resume. A setting the stored file lacks (a field added to keydyn after that run started) counts as its
        default, so runs made by older versions resume when the new setting is left at its default; a setting
        only the stored file has (a field removed from keydyn since) is ignored. Paths compare resolved; `out`
        itself is not compared (the run is the directory, wherever it is given from), nor the name of the preset
        it started from (`--preset`, `keydyn reproduce`'s stage presets; None for settings built in code, and
        absent from runs older than that field): the settings it resolved to are.
    may_change: settings that may differ between a run and its resumption.
    marker: the file whose presence shows there is something to resume (e.g. "last.json").
    upgrade: turns a stored config.json of an older layout into the current one (beyond added and removed
        settings) before the comparison.
    Returns True when resuming from `marker`, False when starting from the beginning.

    Raises:
        ValueError: `out` holds files and resume is off, or settings outside `may_change` differ.
        FileNotFoundError: resume is on but `out` holds no run (no config.json).
    """
    stored_path = out / "config.json"
    if not config.resume:
        if out.exists() and holds_files(out):
            if stored_path.exists() and not (out / marker).exists():
                raise ValueError(
                    f"{out} holds a run stopped before its first checkpoint ({marker}); pass --resume to start it "
                    "again from the beginning with the same settings, or pick a new --out"
                )
            raise ValueError(f"{out} already exists; pass --resume to continue that run, or pick a new --out")
        out.mkdir(parents=True, exist_ok=True)
        return False
    if out.is_dir() and not holds_files(out):  # made, then killed before it wrote its settings
        print(f"keydyn: {out} holds nothing yet; starting the run from the beginning", file=sys.stderr)
        return False
    if not stored_path.exists():
        raise FileNotFoundError(f"--resume given but {out} holds nothing to resume (no config.json); drop --resume")
    current = json.loads(json.dumps(config.to_json()))  # tuples compare as the lists JSON stores
    stored = read_json(stored_path)
    if upgrade is not None:
        stored = upgrade(stored)
    stored = _without_removed(_with_missing_filled(stored, default_settings(config)), current)
    current, stored = _paths_resolved(current, config), _paths_resolved(stored, config)
    different = sorted(
        name for name in current if name not in (*may_change, "out", "preset") and stored.get(name) != current[name]
    )
    checkpointed = (out / marker).exists()
    if different:
        also = "" if checkpointed else f", or delete {out} (it holds no checkpoint yet)"
        raise ValueError(
            f"cannot resume {out}: its {', '.join(different)} differ from this run's; resume with the original "
            f"settings (only {', '.join(may_change)} may change) or write to a new --out{also}"
        )
    if not checkpointed:
        print(f"keydyn: {out} stopped before its first checkpoint; starting it from the beginning", file=sys.stderr)
    return checkpointed


# -- checkpoints ----------------------------------------------------------------------------------------------
LAST_WEIGHTS, LAST_STATE, LAST_INFO, METRICS = "last.safetensors", "last_optim.pt", "last.json", "metrics.jsonl"
PENDING = ".next"  # suffix of a checkpoint's files written but not yet moved onto their names
HASHES = "sha256"  # key of a checkpoint's JSON: {file name: SHA-256 (hex)} of the files it commits


def save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save `state` (tensors, numbers, lists, dicts) to `path` through a Python file, so that a full disk
    is an OSError(ENOSPC) rather than torch's "enforce fail" RuntimeError."""
    with open(path, "wb") as handle:
        torch.save(state, handle)


def commit_checkpoint(out: Path, name: str, files: dict[str, Callable[[Path], None]], info: dict[str, Any]) -> None:
    """Write checkpoint `name` ("last", "best") of the run in `out` as a whole.

    Each of `files` (file name -> function writing that file at the path it is given) is written to
    `<file>.next`; then `<name>.json` (`info` and, under "sha256", the SHA-256 of every file) commits them; then
    they are moved onto their names. A kill at any moment leaves the previous checkpoint or this one, never a mix:
    `recover_checkpoint` finishes or drops an interrupted commit, and `load_checkpoint` reads a committed file
    still under its `.next` name. A full disk is an OSError naming the file (`keydyn.files.write_atomic`) that
    leaves the previous checkpoint.
    """
    hashes = {}
    for file, write in files.items():
        pending = out / (file + PENDING)
        write_atomic(pending, write, shown=out / file)
        hashes[file] = file_sha256(pending)
    write_json_atomic(out / f"{name}.json", {**info, HASHES: hashes})
    for file in files:
        os.replace(out / (file + PENDING), out / file)


def _hashes(info: dict[str, Any], info_path: Path) -> dict[str, str] | None:
    """The SHA-256 of every file a checkpoint's JSON commits; None for a checkpoint of a keydyn that wrote none."""
    if not isinstance(info, dict):
        raise ValueError(f"{info_path} is not a JSON object; restore it from a copy")
    hashes = info.get(HASHES)
    if hashes is None:
        return None
    if not isinstance(hashes, dict) or not all(isinstance(value, str) for value in hashes.values()):
        raise ValueError(f"{info_path}: its sha256 is not a table of file hashes; restore the file from a copy")
    return hashes


def _corrupt(path: Path, info_path: Path, fix: str) -> ValueError:
    return ValueError(
        f"{path} is corrupt: its SHA-256 differs from the one {info_path.name} recorded (damaged or truncated); {fix}"
    )


def _unreadable(path: Path, error: Exception, fix: str) -> ValueError:
    detail = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return ValueError(f"{path} cannot be read ({detail}): damaged or truncated; {fix}")


def _committed_bytes(out: Path, file: str, hashes: dict[str, str] | None) -> bytes | None:
    """The bytes of `file` as its checkpoint committed it: of `file`, else of `file.next` (a commit cut before
    the move); None when neither has the SHA-256 in `hashes` (`hashes` None: `file`'s bytes, unchecked)."""
    if hashes is None:
        return (out / file).read_bytes()
    for path in (out / file, out / (file + PENDING)):
        if path.exists():
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() == hashes.get(file):
                return data
    return None


def _tensors(data: bytes, path: Path, fix: str) -> dict[str, torch.Tensor]:
    """The tensors of safetensors `data` read from `path` (ValueError naming `path` and `fix` when damaged)."""
    try:
        return load_safetensors(data)
    except Exception as error:  # safetensors raises its own error types for every kind of damage
        raise _unreadable(path, error, fix) from error


TENSORS_SHA256 = "tensors_sha256"  # safetensors metadata key of `tensors_digest`, in files written by write_tensors


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over each tensor's name, dtype, shape and bytes, in name order."""
    total = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        total.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        total.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return total.hexdigest()


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write `tensors` atomically as safetensors, with their `tensors_digest` in the metadata."""
    tensors = {name: tensor.contiguous() for name, tensor in tensors.items()}
    metadata = {TENSORS_SHA256: tensors_digest(tensors)}
    write_atomic(path, lambda p: save_file(tensors, str(p), metadata=metadata))


def read_checked_tensors(path: Path, fix: str = DAMAGED) -> dict[str, torch.Tensor] | None:
    """The tensors of a file written by `write_tensors`, checked against their recorded digest; None for a file
    without one (written by an older keydyn).

    Raises:
        ValueError: naming `path` and `fix` when the file is damaged, truncated, or its tensors differ from the
            digest recorded when it was written.
    """
    path = Path(path)
    data = path.read_bytes()
    tensors = _tensors(data, path, fix)
    try:
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    except (ValueError, UnicodeDecodeError) as error:
        raise _unreadable(path, error, fix) from error
    recorded = (header.get("__metadata__") or {}).get(TENSORS_SHA256)
    if recorded is None:
        return None
    if tensors_digest(tensors) != recorded:
        raise ValueError(f"{path} is corrupt: its tensors differ from the SHA-256 recorded when it was written; {fix}")
    return tensors


def read_tensors(path: Path, fix: str = DAMAGED) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; ValueError naming `path` and `fix` when it is damaged or truncated."""
    return _tensors(Path(path).read_bytes(), Path(path), fix)


def read_recorded_tensors(path: Path, fix: str = DAMAGED) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, checked against their digest when `write_tensors` recorded one (a file
    of an older keydyn, without one, is only parsed).

    Raises:
        ValueError: naming `path` and `fix` when the file is damaged or its tensors differ from their digest.
    """
    tensors = read_checked_tensors(path, fix)
    return read_tensors(path, fix) if tensors is None else tensors


def _safetensors_counter(data: bytes, counter: str) -> int | None:
    """The `counter` ("epoch", "step") in the metadata of safetensors `data`; None when it holds none."""
    try:
        size = int.from_bytes(data[:8], "little")
        return int(json.loads(data[8 : 8 + size])["__metadata__"][counter])
    except (ValueError, KeyError, TypeError):
        return None


def _state(data: bytes, path: Path, fix: str) -> dict[str, Any]:
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises RuntimeError, pickle and EOF errors for a damaged archive
        raise _unreadable(path, error, fix) from error


def checkpoint_paths(run_dir: Path, which: str, how_to_train: str) -> tuple[Path, Path]:
    """(which.json, which.safetensors) of a run; FileNotFoundError naming `how_to_train` when missing (the
    weights may still be under their `.next` name, see `commit_checkpoint`)."""
    if which not in ("best", "last"):
        raise ValueError(f"which must be 'best' or 'last', got {which!r}")
    info_path, weights_path = run_dir / f"{which}.json", run_dir / f"{which}.safetensors"
    pending = weights_path.with_name(weights_path.name + PENDING)
    if not info_path.exists() or not (weights_path.exists() or pending.exists()):
        raise FileNotFoundError(
            f"{run_dir} has no {which} checkpoint ({info_path.name}, {weights_path.name}); train one with "
            f"{how_to_train} or pass another run directory"
        )
    return info_path, weights_path


def load_checkpoint(
    run_dir: Path, which: str, how_to_train: str, required: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON (holding `required`) and the weights of checkpoint `which` ("best" or "last") of a run, the
    weights verified against the SHA-256 the JSON recorded (checkpoints of a keydyn that recorded none load
    unverified). A commit by a trainer still running may replace the files while they are read: that read is
    tried again.

    Raises:
        FileNotFoundError: the checkpoint is missing (the message names `how_to_train`).
        ValueError: its JSON is damaged or lacks `required`, or its weights are corrupt; naming the file and
            the fix.
    """
    run_dir = Path(run_dir)
    info_path, weights_path = checkpoint_paths(run_dir, which, how_to_train)
    fix = f"restore it from a copy or train the run again ({how_to_train})"
    if which == "best":
        fix += ", or use its last checkpoint"
    for attempt in range(3):
        if attempt:
            time.sleep(0.2 * attempt)
        info = read_json(info_path, required, fix)
        data = _committed_bytes(run_dir, weights_path.name, _hashes(info, info_path))
        if data is not None:
            return info, _tensors(data, weights_path, fix)
    raise _corrupt(weights_path, info_path, fix)


@dataclasses.dataclass
class Resumed:
    """The last checkpoint of a run being resumed: last.json's content, the weights (last.safetensors), the
    training state (last_optim.pt) and the metrics rows up to its counter (metrics.jsonl), checked to agree."""

    info: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    state: dict[str, Any]
    metrics: list[dict[str, Any]]


def _mixed_run(out: Path, name: str, counter: str, found: Any, expected: int) -> ValueError:
    return ValueError(
        f"{out}: {name} is of {counter} {found} but last.json of {expected}; the run was changed from outside "
        "keydyn and cannot resume: start a new --out"
    )


def _finish_commit(out: Path, hashes: dict[str, str]) -> None:
    """Move the `.next` files whose SHA-256 a checkpoint's JSON records (`hashes`) onto their names; drop the
    others (written for a commit that was cut before its JSON)."""
    for name, expected in hashes.items():
        pending = out / (name + PENDING)
        if pending.exists():
            if file_sha256(pending) == expected:
                os.replace(pending, out / name)
            else:
                pending.unlink()


def recover_checkpoint(out: Path, info: dict[str, Any], counter: str) -> None:
    """Before resuming from `info` (last.json's content): move the `.next` files of a commit that last.json had
    made onto their names, and drop those of one it had not; the same for best.json. A file is committed when
    its SHA-256 is the one the JSON records; for a checkpoint of a keydyn that recorded none, when it is of
    last.json's `counter`."""
    best = out / "best.json"
    if best.exists():
        _finish_commit(out, _hashes(read_json(best), best) or {})
    hashes = _hashes(info, out / LAST_INFO)
    if hashes is not None:
        _finish_commit(out, hashes)
        return
    for name in (LAST_WEIGHTS, LAST_STATE):
        pending = out / (name + PENDING)
        if pending.exists():
            data = pending.read_bytes()
            if name == LAST_WEIGHTS:
                found = _safetensors_counter(data, counter)
            else:
                try:
                    found = _state(data, pending, "")[counter]
                except (ValueError, KeyError, TypeError):  # cut while written: never committed
                    found = None
            if found == info[counter]:
                os.replace(pending, out / name)
            else:
                pending.unlink()


def _resumed_metrics(out: Path, counter: str, last: int) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl up to `counter` `last`, checked to be one for each of 1 .. `last`."""
    path = out / METRICS
    rows = [row for row in read_lines(path) if not isinstance(row.get(counter), int) or row[counter] <= last]
    if [row.get(counter) for row in rows] != list(range(1, last + 1)):
        raise ValueError(
            f"{path} does not hold one row for each {counter} 1 to {last} of last.json; the file was changed from "
            "outside keydyn: restore it, or start a new --out"
        )
    return rows


def dataset_record(store: EpisodeStore) -> dict[str, Any]:
    """What a trainer's last.json records of the dataset it trains on, so that resuming checks it is unchanged
    (`resumed_checkpoint`): its episode count and content SHA-256 (`EpisodeStore.content_sha256`)."""
    return {"dataset_episodes": store.num_episodes, "dataset_sha256": store.content_sha256()}


def trained_on_other_data(info: dict[str, Any], store: EpisodeStore) -> bool:
    """Whether `store` holds other episodes than the dataset a checkpoint's JSON `info` recorded (`dataset_record`):
    grown or collected anew. False when it recorded none (a run of a keydyn before 2026-11-30)."""
    recorded = info.get("dataset_sha256")
    return recorded is not None and recorded != store.content_sha256()


def _check_same_dataset(out: Path, info: dict[str, Any], store: EpisodeStore) -> None:
    """Refuse to resume a run on a dataset other than the one its last checkpoint recorded (`dataset_record`):
    grown or collected anew, its episodes would be split into training and validation differently."""
    if trained_on_other_data(info, store):
        raise ValueError(
            f"cannot resume {out}: {store.path} holds other episodes than the run trained on "
            f"({info.get('dataset_episodes')} episodes then, {store.num_episodes} now, or the same number with other "
            "contents), so its training/validation split would change; resume on the dataset as it was, or train "
            "anew in a new --out"
        )


def resumed_checkpoint(
    out: Path,
    config: RunConfig,
    may_change: tuple[str, ...],
    counter: str,
    store: EpisodeStore,
    required: tuple[str, ...] = (),
    upgrade: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
) -> Resumed | None:
    """For a trainer: prepare `out` (see prepare_run_dir); when resuming, recover its last checkpoint
    (`recover_checkpoint`) and return it, every file verified and of last.json's `counter` ("epoch", "step"),
    trained on `store` as it is now (`dataset_record`); None when the run starts from the beginning.

    Raises:
        ValueError: as prepare_run_dir; last.json lacks `counter` or `required`; a file is corrupt (damaged,
            truncated) or of another counter; the dataset changed since; naming the file and the fix.
    """
    if not prepare_run_dir(out, config, may_change, LAST_INFO, upgrade):
        return None
    fix = "restore it from a copy, or start a new --out"
    info_path = out / LAST_INFO
    info = read_json(info_path, (counter, *required), fix)
    if not isinstance(info[counter], int):
        raise ValueError(f"{info_path}: its {counter} is {info[counter]!r}, not a whole number; {fix}")
    _check_same_dataset(out, info, store)
    recover_checkpoint(out, info, counter)
    hashes = _hashes(info, info_path)
    files = {}
    for name in dict.fromkeys((LAST_WEIGHTS, LAST_STATE, *(hashes or ()))):
        if not (out / name).exists():
            raise FileNotFoundError(f"{out / name} is missing, though {info_path.name} commits it; {fix}")
        files[name] = (out / name).read_bytes()
        if hashes is not None and hashlib.sha256(files[name]).hexdigest() != hashes.get(name):
            raise _corrupt(out / name, info_path, fix)
    tensors = _tensors(files[LAST_WEIGHTS], out / LAST_WEIGHTS, fix)
    found = _safetensors_counter(files[LAST_WEIGHTS], counter)
    if found != info[counter]:
        raise _mixed_run(out, LAST_WEIGHTS, counter, found, info[counter])
    state = _state(files[LAST_STATE], out / LAST_STATE, fix)
    if not isinstance(state, dict) or state.get(counter) != info[counter]:
        found = state.get(counter) if isinstance(state, dict) else None
        raise _mixed_run(out, LAST_STATE, counter, found, info[counter])
    return Resumed(info, tensors, state, _resumed_metrics(out, counter, info[counter]))


def has_finished(resumed: Resumed | None, counter: str, total: int, out: Path, quiet: bool = False) -> bool:
    """Whether the resumed run in `out` has already trained all `total` of its `counter`s ("epoch", "step"), so
    that resuming it has nothing to do; says so on stderr unless `quiet` (the other ranks of a torchrun). A run
    trained for more than `total` is refused (ValueError): its checkpoints are not those of a `total` run. A trainer
    checks this before it loads its data (the latents of every frame, say), so that rerunning a finished stage
    (`keydyn reproduce` again) costs seconds; the dataset is checked unchanged before (`resumed_checkpoint`), and
    a dynamics run checks the networks its latents came from (`LatentMethod.check_sources`)."""
    if resumed is None or resumed.info[counter] < total:
        return False
    if resumed.info[counter] > total:
        raise ValueError(
            f"{out} has trained {resumed.info[counter]} {counter}s, more than the {total} asked for, and a run "
            f"cannot be cut back: ask for at least {resumed.info[counter]} {counter}s to use it as it is, or train "
            "anew in a new --out"
        )
    if quiet:
        return True
    print(
        f"keydyn: {out} has finished its {resumed.info[counter]} {counter}s; nothing to train "
        f"(give more --{counter}s to train on)",
        file=sys.stderr,
    )
    return True


def load_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load `tensors` into `module`, every name and shape matched; a mismatch is a ValueError naming `source` and
    the tensors that differ (a checkpoint of another model, another keydyn version, or a corrupt file)."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as error:
        detail = " ".join(str(error).split())
        raise ValueError(f"{source} does not fit its model configuration: {detail}") from error

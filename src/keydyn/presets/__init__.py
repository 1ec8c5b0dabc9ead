"""Recipes as data: YAML presets of every command's settings, shipped inside the package.

A preset is `keydyn/presets/<command>/<name>.yaml`: a nested mapping of the settings that differ from the
config dataclass's defaults (the same names as the command-line flags, with `_` for `-`). Every command
applies its `default` preset (the best recipe measured, see README) unless `--preset NAME` picks another;
`paper` and `original`, where a command has them, give the paper's and the original code's settings where they
differ. Flags given on
the command line override the preset, and the run saves the resolved config (config.json).

A preset may start from another one of the same command with `extends: NAME`; its own settings win.

A setting that may hold one of several dataclasses (the planner: MPPI, CEM, ...) is a mapping laid over its
default, or, with `type: NAME`, over the defaults of the class that NAME picks: NAME is that class's subcommand
on the command line without its prefix (`planner:cem` -> `type: cem`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")

DEFAULT = "default"

TYPE = "type"
"""The key of a preset mapping that picks one of the dataclasses a setting may hold."""


def _folder(command: str) -> Any:
    return resources.files(__name__).joinpath(command)


def preset_names(command: str) -> list[str]:
    """The presets shipped for `command` (e.g. "train-visual"), sorted."""
    folder = _folder(command)
    if not folder.is_dir():
        return []
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def preset_commands() -> list[str]:
    """Every command that has presets."""
    folders = resources.files(__name__).iterdir()
    return sorted(entry.name for entry in folders if entry.is_dir() and not entry.name.startswith("_"))


@cache
def _read(command: str, name: str) -> dict[str, Any]:
    entry = _folder(command).joinpath(f"{name}.yaml")
    if not entry.is_file():
        known = ", ".join(preset_names(command)) or "none"
        raise ValueError(f"no preset {name!r} for `keydyn {command}`; its presets: {known}")
    try:
        values = yaml.safe_load(entry.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"preset {command}/{name}.yaml is not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ValueError(f"preset {command}/{name}.yaml must hold a mapping of settings, not {type(values).__name__}")
    return values


def load_preset(command: str, name: str = DEFAULT, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings of preset `name` of `command`, with `extends` resolved (a fresh nested dict).

    Raises:
        ValueError: no such preset, invalid YAML, or presets that extend each other in a cycle.
    """
    if name in _seen:
        raise ValueError(f"presets of {command} extend each other in a cycle: {' -> '.join((*_seen, name))}")
    values = dict(_read(command, name))
    parent = values.pop("extends", None)
    if parent is None:
        return _copy(values)
    return merge(load_preset(command, parent, (*_seen, name)), values)


def preset_overlay(command: str, name: str) -> dict[str, Any]:
    """The settings preset `name` of `command` sets itself, without those of the preset it extends (a task's
    recipe to lay over any other preset); {} when `command` has no such preset."""
    if name not in preset_names(command):
        return {}
    values = _copy(_read(command, name))
    values.pop("extends", None)
    return values


def stated_settings(command: str, name: str) -> dict[str, Any]:
    """The settings preset `name` of `command` states beyond `default`: its own and those of the presets it
    extends, up to `default` ({} for `default` itself)."""
    load_preset(command, name)  # a missing preset or a cycle of `extends` is named here
    stated: dict[str, Any] = {}
    while name != DEFAULT:
        stated = merge(preset_overlay(command, name), stated)
        name = _read(command, name).get("extends", DEFAULT)
    return stated


def without(values: dict[str, Any], settled: dict[str, Any]) -> dict[str, Any]:
    """`values` less every setting that `settled` also sets, nested mappings compared key by key (neither is
    modified): what of a task's recipe is left to lay over a preset that states some of the same settings."""
    kept = {}
    for key, value in values.items():
        if key not in settled:
            kept[key] = _copy(value)
        elif isinstance(value, dict) and isinstance(settled[key], dict):
            rest = without(value, settled[key])
            if rest:
                kept[key] = rest
    return kept


def _copy(values: Any) -> Any:
    if isinstance(values, dict):
        return {key: _copy(value) for key, value in values.items()}
    if isinstance(values, list):
        return [_copy(value) for value in values]
    return values


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override` laid over it, nested mappings merged key by key (neither is modified); a mapping
    whose `type` picks another class than the one it would be merged with (or picks one where that did not)
    replaces it."""
    merged = _copy(base)
    for key, value in override.items():
        if (
            isinstance(value, dict)
            and isinstance(merged.get(key), dict)
            and value.get(TYPE, merged[key].get(TYPE)) == merged[key].get(TYPE)
        ):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = _copy(value)
    return merged


def _is_union(annotation: Any) -> bool:
    return isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union


def _dataclass_of(annotation: Any) -> type | None:
    """The dataclass named by a field's annotation (also inside `X | None`), else None."""
    if dataclasses.is_dataclass(annotation):
        return annotation
    if _is_union(annotation):
        classes = [arg for arg in typing.get_args(annotation) if dataclasses.is_dataclass(arg)]
        return classes[0] if len(classes) == 1 else None
    return None


def _choices(annotation: Any) -> dict[str, type]:
    """The dataclasses a field annotated `annotation` (with its `Annotated` extras) may hold, when it may hold
    several, by name: the part after the last colon of the class's tyro subcommand name (`planner:cem` -> "cem"),
    else the class name."""
    if not _is_union(annotation):
        return {}
    choices = {}
    for option in typing.get_args(annotation):
        cls, extras = option, ()
        if typing.get_origin(option) is typing.Annotated:
            cls, *extras = typing.get_args(option)
        if not dataclasses.is_dataclass(cls):
            continue
        names = [extra.name for extra in extras if isinstance(getattr(extra, "name", None), str)]
        choices[names[0].rsplit(":", 1)[-1] if names else cls.__name__] = cls
    return choices if len(choices) > 1 else {}


def _is_tuple(annotation: Any) -> bool:
    return annotation is tuple or typing.get_origin(annotation) is tuple


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def field_values(cls: type, values: dict[str, Any], where: str) -> dict[str, Any]:
    """Preset `values` for dataclass `cls` as constructor arguments: a nested mapping is laid over that field's
    default (a nested dataclass, e.g. the CPU network of train-visual), lists become tuples where the field is
    a tuple, strings paths where it is a path.

    Raises:
        ValueError: a key is not a field of `cls` (named with `where`, e.g. "train-visual/default.yaml").
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    extras = typing.get_type_hints(cls, include_extras=True)
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(
            f"{where}: {', '.join(unknown)} {'is not a setting' if len(unknown) == 1 else 'are not settings'} of "
            f"{cls.__name__}; its settings: {', '.join(fields)}"
        )
    arguments = {}
    for name, value in values.items():
        nested = _dataclass_of(hints[name])
        choices = _choices(extras[name])
        if choices and isinstance(value, dict):
            arguments[name] = _chosen(choices, _field_default(fields[name]), value, f"{where}: {name}")
        elif nested is not None and isinstance(value, dict):
            default = _field_default(fields[name])
            base = default if isinstance(default, nested) else None
            overrides = field_values(type(base) if base is not None else nested, value, f"{where}: {name}")
            arguments[name] = dataclasses.replace(base, **overrides) if base is not None else nested(**overrides)
        elif _is_tuple(hints[name]) and isinstance(value, list):
            arguments[name] = tuple(value)
        elif isinstance(hints[name], type) and issubclass(hints[name], Path) and isinstance(value, str):
            arguments[name] = Path(value)
        else:
            arguments[name] = value
    return arguments


def _chosen(choices: dict[str, type], default: Any, value: dict[str, Any], where: str) -> Any:
    """The dataclass a preset mapping `value` gives a setting that may hold any of `choices`: the class its `type`
    names (laid over `default` when that is of this class, else over the class's defaults), or `default`'s."""
    value = dict(value)
    name = value.pop(TYPE, None)
    if name is None:
        if not dataclasses.is_dataclass(default):
            raise ValueError(f"{where}: say which of {', '.join(choices)} with `{TYPE}:`")
        chosen = type(default)
    elif name in choices:
        chosen = choices[name]
    else:
        raise ValueError(f"{where}: {TYPE} {name!r} is none of {', '.join(choices)}")
    overrides = field_values(chosen, value, where)
    if type(default) is chosen:
        return dataclasses.replace(default, **overrides)
    return chosen(**overrides)


def from_preset(
    cls: type[T], command: str, name: str = DEFAULT, overrides: dict[str, Any] | None = None, **settings: Any
) -> T:
    """A validated `cls` config: its defaults, then preset `name` of `command`, then `overrides` (a nested
    mapping merged into the preset's, as a preset would give it), then `settings` (whole values, for instance
    the required paths). A `cls` with a `preset` field records `name` in it."""
    values = merge(load_preset(command, name), overrides or {})
    arguments = field_values(cls, values, f"preset {command}/{name}.yaml")
    if "preset" in {field.name for field in dataclasses.fields(cls)}:  # type: ignore[arg-type]
        arguments["preset"] = name
    return cls(**{**arguments, **settings})


def cli_default(cls: type[T], command: str, name: str = DEFAULT) -> T:
    """`cls` at preset `name`, unvalidated, with the fields that have no default (the required paths) set to
    tyro.MISSING: the default instance from which the command line parses the user's flags."""
    import tyro  # only the command line needs it

    arguments = field_values(cls, load_preset(command, name), f"preset {command}/{name}.yaml")
    instance = object.__new__(cls)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        value = arguments.get(field.name, _field_default(field))
        if value is dataclasses.MISSING:
            value = tyro.MISSING
        object.__setattr__(instance, field.name, value)
    return instance


def to_preset(config: Any, defaults: Any = None) -> dict[str, Any]:
    """The settings of `config` (a dataclass) that differ from `defaults` (by default its class's defaults;
    nested dataclasses are compared with their field's default), as a preset mapping: nested dataclasses as
    mappings, tuples and paths as lists and strings; fields without a default are included.
    included. `type(config)(**field_values(type(config), to_preset(config), where))` rebuilds `config`."""
    values = {}
    extras = typing.get_type_hints(type(config), include_extras=True)
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        default = _field_default(field) if defaults is None else getattr(defaults, field.name)
        if value == default:
            continue
        names = {cls: name for name, cls in _choices(extras[field.name]).items()}
        if dataclasses.is_dataclass(value) and type(default) is type(value):
            values[field.name] = to_preset(value, default)
        elif type(value) in names:
            values[field.name] = {TYPE: names[type(value)], **to_preset(value)}
        else:
            values[field.name] = _plain(value)
    return values


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value

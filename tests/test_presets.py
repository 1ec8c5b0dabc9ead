"""Recipes as data: every shipped preset loads into its command's config, round-trips, and drives the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tyro
import yaml

from keydyn import presets
from keydyn.cli import PRESET_COMMANDS, command_type, main, split_preset
from keydyn.control.mpc import MPCConfig, planner_name
from keydyn.planning import CEMConfig, MPPIConfig
from keydyn.presets import field_values, from_preset, load_preset, merge, preset_commands, preset_names, to_preset

REQUIRED = {
    "collect": {"out": Path("data")},
    "train-visual": {"dataset": Path("data"), "out": Path("visual")},
    "train-dynamics": {"dataset": Path("data"), "out": Path("runs")},
    "evaluate": {"run": Path("runs"), "out": Path("eval")},
    "reproduce": {},
}


def _base(cls: type) -> type:
    return cls.__mro__[1] if cls.__mro__[1] is not object else cls


def test_every_command_with_presets_has_a_default_and_only_known_commands_have_presets():
    assert set(preset_commands()) == set(PRESET_COMMANDS)
    for command in preset_commands():
        assert "default" in preset_names(command)


def _assert_holds(config, values: dict, where: str) -> None:
    """Every setting of the preset mapping `values` has its value in `config`, at every depth."""
    for key, value in values.items():
        if key == "type":  # picks the class of a setting that may hold several (the planner)
            assert planner_name(config) == value, where
            continue
        actual = getattr(config, key)
        if isinstance(value, dict) and not isinstance(actual, dict):  # a nested config, not a mapping setting
            _assert_holds(actual, value, f"{where}.{key}")
        else:
            assert (list(actual) if isinstance(actual, tuple) else actual) == value, f"{where}.{key}"


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_every_preset_builds_its_config_and_round_trips(command):
    config_class = _base(PRESET_COMMANDS[command])
    for name in preset_names(command):
        config = from_preset(config_class, command, name, **REQUIRED[command])
        _assert_holds(config, load_preset(command, name), name)
        written = yaml.safe_load(yaml.safe_dump(to_preset(config)))
        assert config_class(**field_values(config_class, written, name)) == config


def test_presets_extend_merge_and_name_unknown_settings():
    paper = load_preset("collect", "paper")
    assert paper == merge(load_preset("collect", "default"), {"width": 640, "height": 480})
    with pytest.raises(ValueError, match="batch is not a setting of TrainVisualConfig"):
        field_values(_base(PRESET_COMMANDS["train-visual"]), {"steps": 3, "batch": 2}, "x.yaml")
    with pytest.raises(ValueError, match="its presets: default"):
        load_preset("train-visual", "nonexistent")
    # Nested settings are laid over the field's own default (the CPU network), not the nested class's default.
    visual = from_preset(_base(PRESET_COMMANDS["train-visual"]), "train-visual", **REQUIRED["train-visual"])
    assert (visual.network.backbone, visual.network.finest_stride, visual.steps) == ("resnet18", 4, 12000)


def test_a_preset_picks_the_planner_by_type():
    evaluate = _base(PRESET_COMMANDS["evaluate"])
    cem = {"mpc": {"planner": {"type": "cem", "num_samples": 64}}}
    config = from_preset(evaluate, "evaluate", "tiny", overrides=cem, **REQUIRED["evaluate"])
    assert config.mpc.planner == CEMConfig(num_samples=64) and config.mpc.grid_headings == 8
    assert to_preset(config.mpc) == {"planner": {"type": "cem", "num_samples": 64}, "grid_headings": 8}
    # Without `type`, a mapping is laid over the default planner (MPPI) as any nested setting.
    mpc = MPCConfig(**field_values(MPCConfig, {"planner": {"iterations": 2}}, "x.yaml"))
    assert mpc.planner == MPPIConfig(iterations=2)
    assert MPCConfig(**field_values(MPCConfig, to_preset(mpc), "x.yaml")) == mpc
    with pytest.raises(ValueError, match="'annealing' is none of mppi, cem, random, gradient"):
        field_values(MPCConfig, {"planner": {"type": "annealing"}}, "x.yaml")
    with pytest.raises(ValueError, match="num_elites is not a setting of MPPIConfig"):
        field_values(MPCConfig, {"planner": {"num_elites": 5}}, "x.yaml")


def test_command_line_starts_from_the_preset_and_flags_override_it():
    name, preset, args = split_preset(["train-dynamics", "--dataset", "d", "--out", "o", "--preset", "original"])
    assert (name, preset, args) == ("train-dynamics", "original", ["train-dynamics", "--dataset", "d", "--out", "o"])
    parsed = tyro.cli(command_type(name, preset), args=[*args, "--epochs", "7"])
    assert (parsed.epochs, parsed.lr, parsed.hidden, parsed.preset) == (7, 1e-4, (500, 1000, 1000, 500), "original")
    default = tyro.cli(command_type("train-dynamics", "default"), args=args)
    assert (default.epochs, default.lr, default.keypoints.sds_ranking) == (160, 1e-3, "rigid")
    assert split_preset(["--preset", "paper", "train-dynamics", "--out", "o"])[:2] == ("train-dynamics", "paper")
    with pytest.raises(ValueError, match="has no presets"):
        split_preset(["table", "--preset", "paper"])
    with pytest.raises(ValueError, match="needs a name"):
        split_preset(["collect", "--preset"])


def help_text(command: str, capsys) -> str:
    """`keydyn <command> --help` on one line, with the box drawing and the wrapping taken out."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    return " ".join(capsys.readouterr().out.replace("│", " ").split()).replace(", ", ",")


@pytest.mark.parametrize("command", PRESET_COMMANDS)
def test_help_names_the_presets_of_each_command(command, capsys):
    assert "--preset {" + ",".join(preset_names(command)) + "}" in help_text(command, capsys)


def test_reproduce_help_names_the_presets_of_each_stage(capsys):
    text = help_text("reproduce", capsys)
    for flag, command in (
        ("--collect", "collect"),
        ("--visual", "train-visual"),
        ("--transporter", "train-transporter"),
        ("--dynamics", "train-dynamics"),
        ("--evaluation", "evaluate"),
    ):
        assert f"{flag} {{" + ",".join(preset_names(command)) + "}" in text


def test_a_run_saves_its_resolved_preset_config(small_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train-dynamics", "--dataset", str(small_dataset), "--out", str(out), "--preset", "tiny", "--epochs", "1"]
    assert main([*args, "--no-progress"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert (saved["preset"], saved["epochs"], saved["horizon"], saved["hidden"]) == ("tiny", 1, 5, [64, 64])
    assert main(["collect", "--out", str(tmp_path / "d"), "--preset", "nonexistent"]) == 2
    assert "no preset 'nonexistent' for `keydyn collect`" in capsys.readouterr().err


def test_preset_files_are_package_data():
    folder = Path(presets.__file__).parent
    assert sorted(p.stem for p in (folder / "train-dynamics").glob("*.yaml")) == preset_names("train-dynamics")

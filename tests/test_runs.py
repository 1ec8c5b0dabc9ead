"""Run directories and their checkpoints: committed as a whole (a run killed at any moment resumes to the result of
an uninterrupted one, one killed before its first checkpoint starts again), verified when read, and every damaged
file or wrong input a one-line error naming the problem, the file and the fix."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from keydyn.cli import main
from keydyn.dynamics.train import TrainDynamicsConfig, load_dynamics, train_dynamics
from keydyn.evaluation.evaluate import EvaluateConfig, evaluate
from keydyn.evaluation.report import comparison_table
from keydyn.files import read_lines
from keydyn.locks import LOCK_NAME
from keydyn.runs import read_checked_tensors, resolve_device, write_tensors
from keydyn.sim.preview import write_task_picture
from keydyn.vision.network import DescriptorNetConfig
from keydyn.vision.train import TrainVisualConfig, load_descriptor_net, train_visual

from .vision_fixtures import one_thread

CHECKPOINT_FILES = ("last.safetensors", "last_optim.pt", "last.json", "metrics.jsonl", "best.safetensors", "best.json")


def _dynamics(dataset, out, **overrides) -> TrainDynamicsConfig:
    values = {"dataset": dataset, "out": out, "horizon": 4, "hidden": (16,), "epochs": 3, "batch_size": 64}
    values.update({"lr": 1e-3, "val_fraction": 0.34, "seed": 3, "progress": False, **overrides})
    return TrainDynamicsConfig(**values)


def _visual(dataset, out, **overrides) -> TrainVisualConfig:
    network = DescriptorNetConfig("resnet18", 3, "strided", 8, width=8)
    values = {"dataset": dataset, "out": out, "network": network, "steps": 2, "validate_every": 1}
    values.update({"val_fraction": 0.34, "val_pairs": 2, "precision": "fp32", "progress": False, **overrides})
    return TrainVisualConfig(**values)


@pytest.fixture(scope="module")
def dynamics_runs(small_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """(a GT 3D run of 3 epochs, the same run stopped after its second)."""
    root = tmp_path_factory.mktemp("dynamics")
    with one_thread():
        return train_dynamics(_dynamics(small_dataset, root / "whole")), train_dynamics(
            _dynamics(small_dataset, root / "part", epochs=2)
        )


@pytest.fixture(scope="module")
def visual_run(small_dataset, tmp_path_factory) -> Path:
    with one_thread():
        return train_visual(_visual(small_dataset, tmp_path_factory.mktemp("visual") / "run"))


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _assert_same_run(expected: Path, run: Path) -> None:
    """The checkpoints and metrics of `run` are those of `expected`, byte for byte, and no commit is left open."""
    for name in CHECKPOINT_FILES:
        assert (run / name).read_bytes() == (expected / name).read_bytes(), name
    assert not list(run.glob("*.next")) and not list(run.glob("*.partial"))


class Killed(BaseException):
    """The process dying where keydyn next moves a file into place (a kill between two changes on disk)."""


def _killed_at(move: int, monkeypatch, train, config) -> bool:
    """Run `train(config)` killed before its `move`-th file move (os.replace, which every file write of keydyn
    ends with); False when it was killed, True when it finished first."""
    real, moves = os.replace, iter(range(move, -1, -1))

    def replace(source, target):
        if next(moves) == 0:
            raise Killed
        real(source, target)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", replace)
        try:
            train(config)
        except Killed:
            return False
    return True


def test_a_kill_at_any_moment_resumes_to_the_uninterrupted_result(dynamics_runs, small_dataset, tmp_path, monkeypatch):
    """Epoch 3 of a resumed run killed before each of its file moves in turn (config, task, the best and the last
    checkpoint's files and commit records), then resumed: every time the weights, optimiser state, metrics and
    commit records are those of the run that was never interrupted."""
    whole, part = dynamics_runs
    move, finished = 0, False
    while not finished:
        run = _copy(part, tmp_path / f"killed_at_{move}")
        with one_thread():
            finished = _killed_at(move, monkeypatch, train_dynamics, _dynamics(small_dataset, run, resume=True))
            if not finished:
                train_dynamics(_dynamics(small_dataset, run, resume=True))
        _assert_same_run(whole, run)
        move += 1
    assert move >= 10  # config.json, task.json and the 7 moves of the last checkpoint at least


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_resume(
    small_dataset, tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    with one_thread():
        whole = train_visual(_visual(small_dataset, tmp_path / "whole", steps=1))
        # killed after config.json, task.json and the pictures, inside the first commit (best's)
        assert not _killed_at(5, monkeypatch, train_visual, _visual(small_dataset, run, steps=1))
        assert (run / "config.json").exists() and not (run / "last.json").exists()
        with pytest.raises(ValueError, match=r"stopped before its first checkpoint.*pass --resume"):
            train_visual(_visual(small_dataset, run, steps=1))
        with pytest.raises(ValueError, match=r"its lr differ.*or delete .*holds no checkpoint yet"):
            train_visual(_visual(small_dataset, run, steps=1, lr=1e-3, resume=True))
        capsys.readouterr()
        train_visual(_visual(small_dataset, run, steps=1, resume=True))
    assert "stopped before its first checkpoint; starting it from the beginning" in capsys.readouterr().err
    _assert_same_run(whole, run)
    # a directory keydyn never wrote a run into is still refused
    with pytest.raises(FileNotFoundError, match="holds nothing to resume"):
        train_dynamics(_dynamics(small_dataset, tmp_path / "absent", resume=True))
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match="holds nothing to resume"):
        train_dynamics(_dynamics(small_dataset, tmp_path / "foreign", resume=True))
    # one killed after making its directory and lock, before writing its settings, starts again
    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / LOCK_NAME).write_text("")
    train_dynamics(_dynamics(small_dataset, killed, resume=True))
    assert "holds nothing yet; starting the run from the beginning" in capsys.readouterr().err
    assert (killed / "best.safetensors").exists()


def test_garbage_in_metrics_is_an_error_not_lost_epochs(dynamics_runs, small_dataset, tmp_path):
    _, part = dynamics_runs
    run = _copy(part, tmp_path / "run")
    rows = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([rows[0], "{garbage", rows[1]]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl is corrupt.*SHA-256.*last\.json"):
        train_dynamics(_dynamics(small_dataset, run, resume=True))
    # a run of a keydyn that recorded no hashes: the bad line itself is named
    info = json.loads((run / "last.json").read_text())
    del info["sha256"]
    (run / "last.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 2: not a JSON row"):
        train_dynamics(_dynamics(small_dataset, run, resume=True))
    (run / "metrics.jsonl").write_text(rows[1] + "\n")  # epoch 1 lost
    with pytest.raises(ValueError, match=r"metrics\.jsonl does not hold one row for each epoch 1 to 2"):
        train_dynamics(_dynamics(small_dataset, run, resume=True))
    # a last line torn by a kill while it was appended is dropped; the same line ended by a newline is not
    (run / "metrics.jsonl").write_text("\n".join(rows) + '\n{"epoch": 3, "train_')
    assert [row["epoch"] for row in read_lines(run / "metrics.jsonl")] == [1, 2]
    (run / "metrics.jsonl").write_text("\n".join(rows) + '\n{"epoch": 3, "train_\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl, line 3"):
        read_lines(run / "metrics.jsonl")


def test_damaged_checkpoints_are_named_with_their_fix(dynamics_runs, small_dataset, tmp_path, capsys):
    whole, part = dynamics_runs
    for name in ("last.safetensors", "last_optim.pt"):
        run = _copy(part, tmp_path / name)
        data = (run / name).read_bytes()
        (run / name).write_bytes(data[: len(data) // 2])  # truncated
        with pytest.raises(ValueError, match=rf"{name} is corrupt.*SHA-256.*last\.json.*start a new --out"):
            train_dynamics(_dynamics(small_dataset, run, epochs=3, resume=True))
    run = _copy(whole, tmp_path / "best")
    weights = (run / "best.safetensors").read_bytes()
    (run / "best.safetensors").write_bytes(weights[:-100])
    with pytest.raises(ValueError, match=r"best\.safetensors is corrupt.*train-dynamics.*use its last checkpoint"):
        load_dynamics(run)
    assert main(["evaluate", "--run", str(run), "--out", str(tmp_path / "eval"), "--episodes", "1"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("keydyn: error: ") and "best.safetensors is corrupt" in error and error.count("\n") == 1
    # checkpoints of a keydyn that recorded no hashes load unverified, and a truncated one is still named
    info = json.loads((run / "best.json").read_text())
    del info["sha256"]
    (run / "best.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match=r"best\.safetensors cannot be read .*damaged or truncated"):
        load_dynamics(run)
    (run / "best.safetensors").write_bytes(weights)
    assert torch.equal(load_dynamics(run).latent_mean, load_dynamics(whole).latent_mean)
    # commit records and settings that are not JSON, or lack what they must hold
    run = _copy(part, tmp_path / "records")
    info = json.loads((run / "last.json").read_text())
    (run / "last.json").write_text(json.dumps({k: v for k, v in info.items() if k != "epoch"}))
    with pytest.raises(ValueError, match=r"last\.json lacks epoch; restore it"):
        train_dynamics(_dynamics(small_dataset, run, resume=True))
    (run / "last.json").write_text(json.dumps(info)[:-20])
    with pytest.raises(ValueError, match=r"last\.json is not valid JSON"):
        train_dynamics(_dynamics(small_dataset, run, resume=True))
    (run / "config.json").write_text("{")
    with pytest.raises(ValueError, match=r"config\.json is not valid JSON"):
        train_dynamics(_dynamics(small_dataset, run, resume=True))
    (tmp_path / "evaluation").mkdir()
    (tmp_path / "evaluation" / "results.json").write_text('{"task": ')
    with pytest.raises(ValueError, match=r"results\.json is not valid JSON.*keydyn evaluate --out"):
        comparison_table([tmp_path / "evaluation"])


def test_a_visual_run_is_verified_and_refused_by_evaluate(visual_run, tmp_path):
    run = _copy(visual_run, tmp_path / "visual")
    with pytest.raises(ValueError, match=r"is not a dynamics run.*keydyn train-dynamics"):
        evaluate(EvaluateConfig(run=run, out=tmp_path / "eval", episodes=1, workers=0, progress=False))
    assert not (tmp_path / "eval").exists()
    data = (run / "last.safetensors").read_bytes()
    (run / "last.safetensors").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"last\.safetensors is corrupt.*keydyn train-visual"):
        load_descriptor_net(run, "last")
    assert load_descriptor_net(run, "best").config.width == 8


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full, a device on which every write fails")
def test_a_full_disk_is_one_line_and_leaves_the_previous_checkpoint(small_dataset, tmp_path, capsys):
    """The optimiser state's file of epoch 2 is made a link to /dev/full: its write fails with ENOSPC, as on a
    full disk, where torch alone says "enforce fail at inline_container.cc"."""

    def argv(out, epochs, *extra):
        args = ["train-dynamics", "--dataset", str(small_dataset), "--out", str(out), "--epochs", str(epochs)]
        return [*args, "--horizon", "3", "--hidden", "16", "--no-progress", *extra]

    assert main(argv(tmp_path / "whole", 2)) == 0
    run = tmp_path / "run"
    assert main(argv(run, 1)) == 0
    before = {name: (run / name).read_bytes() for name in CHECKPOINT_FILES}
    (run / "last_optim.pt.next.partial").symlink_to("/dev/full")
    capsys.readouterr()
    assert main(argv(run, 2, "--resume")) == 2
    error = capsys.readouterr().err
    assert error.startswith("keydyn: error: no space left to write ") and error.count("\n") == 1
    assert f"{run / 'last_optim.pt'} (" in error and "MB free" in error and "--resume" in error
    committed_by_last = ("last.safetensors", "last_optim.pt", "last.json", "metrics.jsonl")
    assert all((run / name).read_bytes() == before[name] for name in committed_by_last)
    assert main(argv(run, 2, "--resume")) == 0
    _assert_same_run(tmp_path / "whole", run)


def test_resuming_compares_paths_resolved(small_dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dataset = Path(os.path.relpath(small_dataset, tmp_path))
    train_dynamics(_dynamics(dataset, Path("run"), epochs=1))
    run = train_dynamics(_dynamics(small_dataset.resolve(), tmp_path / "run", epochs=2, resume=True))
    assert [row["epoch"] for row in read_lines(run / "metrics.jsonl")] == [1, 2]
    other = _copy(small_dataset, tmp_path / "other")
    with pytest.raises(ValueError, match="its dataset differ"):
        train_dynamics(_dynamics(other, run, epochs=3, resume=True))


def test_a_run_is_not_resumed_on_a_dataset_grown_or_collected_anew_since(small_dataset, tmp_path):
    """More episodes would split into training and validation otherwise: validation episodes would become training
    ones, and a finished run would be reused as if trained on the dataset as it is."""
    from keydyn.data.collect import collect

    from .conftest import small_collect_config

    dataset = _copy(small_dataset, tmp_path / "data")
    with one_thread():
        part = train_dynamics(_dynamics(dataset, tmp_path / "part", epochs=1))
        whole = train_dynamics(_dynamics(dataset, tmp_path / "whole", epochs=2))
        recorded = json.loads((part / "last.json").read_text())
        assert recorded["dataset_episodes"] == 3 and len(recorded["dataset_sha256"]) == 64
        collect(small_collect_config(dataset, episodes=4, resume=True))
        for run, epochs in ((part, 2), (whole, 2)):  # to go on, and finished
            with pytest.raises(ValueError, match=r"holds other episodes than the run trained on \(3 episodes then, 4"):
                train_dynamics(_dynamics(dataset, run, epochs=epochs, resume=True))
        shutil.rmtree(dataset)
        collect(small_collect_config(dataset, seed=8))  # as many episodes, others
        with pytest.raises(ValueError, match=r"\(3 episodes then, 3 now, or the same number with other contents\)"):
            train_dynamics(_dynamics(dataset, part, epochs=2, resume=True))
        shutil.rmtree(dataset)
        collect(small_collect_config(dataset))  # the same episodes again: the run goes on
        train_dynamics(_dynamics(dataset, part, epochs=2, resume=True))
    _assert_same_run(whole, part)


def test_a_run_resumes_under_another_preset_name_with_the_same_settings(small_dataset, tmp_path):
    from keydyn.cli import TrainDynamics

    run = train_dynamics(_dynamics(small_dataset, tmp_path / "run", epochs=1))  # no preset: settings built in code
    settings = {
        field.name: getattr(_dynamics(small_dataset, run, epochs=2), field.name)
        for field in fields(TrainDynamicsConfig)
    }
    train_dynamics(TrainDynamics(**{**settings, "resume": True, "preset": "tiny"}))
    assert [row["epoch"] for row in read_lines(run / "metrics.jsonl")] == [1, 2]
    with pytest.raises(ValueError, match="its lr differ"):  # the settings themselves are still compared
        train_dynamics(TrainDynamics(**{**settings, "epochs": 3, "lr": 0.1, "resume": True, "preset": "tiny"}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_a_device_this_machine_lacks_is_refused_before_anything_is_written(small_dataset, tmp_path):
    with pytest.raises(ValueError, match=r"CUDA is not available.*use --device cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        train_dynamics(_dynamics(small_dataset, tmp_path / "run", device="cuda"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (["collect"], "--seed"),
        (["train-visual", "--dataset", "d"], "--seed"),
        (["train-dynamics", "--dataset", "d"], "--seed"),
        (["train-dynamics", "--dataset", "d"], "--keypoints.seed"),
        (["evaluate", "--run", "r"], "--seed"),
        (["evaluate", "--run", "r"], "--goals.seed"),
        (["track", "--run", "r"], "--seed"),
        (["preview"], "--seed"),
    ],
)
def test_negative_seeds_are_refused_while_parsing(command, flag, tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--out", str(tmp_path / "out.png"), flag, "-1"])
    assert exited.value.code == 2
    assert f"{flag} must be >= 0, got -1" in " ".join(capsys.readouterr().err.split())
    assert not (tmp_path / "out.png").exists()


def test_preview_names_the_picture_formats(tmp_path, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["preview", "--out", str(tmp_path / "p.txt")])
    assert exited.value.code == 2
    assert "p.txt: a task picture is a .png, .jpg or .jpeg file" in " ".join(capsys.readouterr().err.split())
    with pytest.raises(ValueError, match=r"p\.txt.*\.png"):
        write_task_picture("top_down", tmp_path / "p.txt")
    assert not (tmp_path / "p.txt").exists()


def test_cached_tensors_are_checked_against_their_digest(tmp_path):
    path = tmp_path / "keypoints-x.safetensors"
    tensors = {
        "points": torch.randn(5, 4, 3, dtype=torch.float64),
        "confidence": torch.rand(5, 4),
        "n": torch.tensor(3),
    }
    write_tensors(path, tensors)
    read = read_checked_tensors(path)
    assert read is not None and all(torch.equal(read[k], tensors[k]) for k in tensors)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # a flipped bit inside a tensor: still a readable file
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"keypoints-x.safetensors is corrupt: its tensors differ from the SHA-256"):
        read_checked_tensors(path, "delete it")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))  # as an older keydyn wrote caches
    assert read_checked_tensors(path) is None

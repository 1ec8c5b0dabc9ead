"""One writer at a time per run directory (trainers, evaluation, tracking, reproduce) and per dataset; the lock
names its holder and dies with it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import zarr

from keydyn.cli import main
from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics
from keydyn.locks import LOCK_NAME, DirectoryBusyError, DirectoryLock


def _config(dataset, out, **overrides) -> TrainDynamicsConfig:
    values = {"dataset": dataset, "out": out, "horizon": 5, "epochs": 2, "hidden": (32, 32), "val_fraction": 0.34}
    return TrainDynamicsConfig(**{**values, "progress": False, **overrides})


def test_a_run_directory_has_one_writer(small_dataset, tmp_path, capsys):
    out = tmp_path / "run"
    train_dynamics(_config(small_dataset, out, epochs=1))
    with DirectoryLock(out, "another training"):
        with pytest.raises(DirectoryBusyError, match=rf"{out} is being written by process {os.getpid()} .*another"):
            train_dynamics(_config(small_dataset, out, resume=True))
        run = ["train-dynamics", "--dataset", str(small_dataset), "--out", str(out), "--resume", "--no-progress"]
        assert main([*run, "--horizon", "5", "--epochs", "2", "--hidden", "32", "32", "--val-fraction", "0.34"]) == 2
        assert "is being written by process" in capsys.readouterr().err
    train_dynamics(_config(small_dataset, out, resume=True))  # free once the holder is gone


def test_the_lock_dies_with_its_holder(small_dataset, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = [
        sys.executable,
        "-c",
        f"from keydyn.locks import DirectoryLock; DirectoryLock({str(out)!r}, 'x').acquire()",
    ]
    assert subprocess.run(holder, timeout=60).returncode == 0  # exits holding it: no stale lock is left
    train_dynamics(_config(small_dataset, out, epochs=1))
    assert (out / "best.safetensors").exists()


def test_a_refused_run_leaves_no_directory(tmp_path):
    out = tmp_path / "new" / "run"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        train_dynamics(_config(tmp_path / "no_dataset", out))
    assert not (tmp_path / "new" / "run").exists()
    (tmp_path / "kept").mkdir()
    with DirectoryLock(tmp_path / "kept", "x", create=True):
        pass
    assert (tmp_path / "kept" / LOCK_NAME).exists()  # a directory it did not make is left as it was
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a directory; choose another --out"):
        train_dynamics(_config(tmp_path / "no_dataset", tmp_path / "file"))


def test_a_store_without_its_task_is_named(small_dataset, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(small_dataset, copy)
    group = zarr.open_group(str(copy), mode="r+", zarr_format=3)
    del group.attrs["task_config"]
    assert main(["train-dynamics", "--dataset", str(copy), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "has no task_config attribute" in capsys.readouterr().err

"""Data-parallel training (`keydyn.distributed`): 2 gloo processes under torchrun follow the 1-process run with the
same global batch, to float tolerance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

import keydyn
from keydyn.cli import main
from keydyn.distributed import World


def _torchrun(args: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """Run `keydyn <args>` in `processes` CPU processes (gloo) under torchrun, with this checkout's keydyn."""
    source = str(Path(keydyn.__file__).parents[1])
    path = os.pathsep.join([source, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    result = subprocess.run([*command, "-m", "keydyn.cli", *args], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("wrote") == 1  # rank 0 alone reports (and writes)
    return result


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _assert_same_run(one: Path, two: Path, counter: str) -> tuple[float, float]:
    """The runs' metrics rows agree (same keys, counters equal, values to float tolerance) and so do their last
    weights; returns the largest absolute difference of the losses and of the weights."""
    rows_one, rows_two = _metrics(one), _metrics(two)
    assert [row[counter] for row in rows_one] == [row[counter] for row in rows_two]
    loss_difference = 0.0
    for row_one, row_two in zip(rows_one, rows_two, strict=True):
        assert row_one.keys() == row_two.keys()
        for name in row_one:
            if row_one[name] is not None:
                np.testing.assert_allclose(row_two[name], row_one[name], rtol=1e-4, atol=1e-5, err_msg=name)
                loss_difference = max(loss_difference, abs(row_two[name] - row_one[name]))
    weights_one, weights_two = load_file(one / "last.safetensors"), load_file(two / "last.safetensors")
    assert weights_one.keys() == weights_two.keys()
    weight_difference = 0.0
    for name, value in weights_one.items():
        np.testing.assert_allclose(weights_two[name].numpy(), value.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
        weight_difference = max(weight_difference, float((weights_two[name] - value).abs().max()))
    return loss_difference, weight_difference


def test_world_shares_batches_and_weights_them_to_the_global_mean():
    worlds = [World(rank, 3) for rank in range(3)]
    for count in (0, 1, 2, 7, 9):
        parts = [world.share(count) for world in worlds]
        assert [index for part in parts for index in range(count)[part]] == list(range(count))  # contiguous, all
        sizes = [part.stop - part.start for part in parts]
        assert max(sizes) - min(sizes) <= 1
        if count:  # DDP averages the ranks' gradients: the weights make that the mean over the whole batch
            weights = [world.weight(size, count) for world, size in zip(worlds, sizes, strict=True)]
            assert sum(weights) / 3 == pytest.approx(1)
    assert World().weight(5, 5) == 1.0 and World().share(4) == slice(0, 4)
    assert not World().distributed and World().main and not World(1, 2).main


def test_dynamics_training_in_two_processes_equals_one(small_dataset, tmp_path):
    # 14 training windows in batches of 13: shares of 7 and 6, then 1 and none (that rank weighs its loss 0).
    args = ["train-dynamics", "--dataset", str(small_dataset), "--horizon", "5", "--epochs", "3", "--hidden", "32"]
    args += ["32", "--val-fraction", "0.34", "--batch-size", "13", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    _torchrun([*args, "--out", str(two)])
    _assert_same_run(one, two, "epoch")
    assert json.loads((two / "last.json").read_text())["epoch"] == 3
    weights = (two / "last.safetensors").read_bytes()
    again = _torchrun([*args, "--out", str(two), "--resume"])  # finished: every rank returns, none waits
    assert again.stderr.count("has finished its 3 epochs") == 1  # said once, by rank 0
    assert (two / "last.safetensors").read_bytes() == weights


@pytest.mark.slow
def test_visual_training_in_two_processes_equals_one(small_dataset, tmp_path):
    # 3 pairs a step: shares of 2 and 1 (batch norm over all 6 images); fp32, as bf16 rounds differently per batch.
    args = ["train-visual", "--dataset", str(small_dataset), "--preset", "tiny", "--batch-size", "3"]
    args += ["--precision", "fp32", "--no-progress"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*args, "--out", str(one)]) == 0
    _torchrun([*args, "--out", str(two)])
    _assert_same_run(one, two, "step")
    assert [row["step"] for row in _metrics(two) if "val_pixel_error_median" in row] == [2, 4]

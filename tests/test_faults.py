"""The fault-injection benchmark, short: kill -9 collect, dynamics training and evaluation once each at a random
moment, resume, and get what an uninterrupted run gives (benchmarks/faults.py runs 20 kills per stage)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "faults.py"


@pytest.mark.slow
def test_killed_stages_resume_to_the_uninterrupted_result(tmp_path):
    command = [
        sys.executable,
        str(BENCHMARK),
        "--trials",
        "1",
        "--latent",
        "gt3d",
        "--seed",
        "3",
        "--out",
        str(tmp_path),
    ]
    command += ["--stages", "collect", "train-dynamics", "evaluate"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr
    report = json.loads(finished.stdout)
    for stage, tally in report["stages"].items():
        assert tally["trials"] == 1, stage
        assert (tally["identical"], tally["lost"], tally["duplicated"], tally["stuck"]) == (1, 0, 0, 0), tally
    assert report["all_identical"]

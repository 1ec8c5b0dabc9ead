"""Every package and entry module imports on its own, in a fresh interpreter (no import cycles)."""

from __future__ import annotations

import subprocess
import sys

import pytest

MODULES = [
    "keydyn.sim",
    "keydyn.data",
    "keydyn.dynamics",
    "keydyn.dynamics.train",
    "keydyn.latents",
    "keydyn.latents.base",
    "keydyn.latents.gt3d",
    "keydyn.latents.descriptor.encoder",
    "keydyn.planning",
    "keydyn.vision",
    "keydyn.control",
    "keydyn.evaluation",
    "keydyn.remote.client",
    "keydyn.remote.server",
    "keydyn.cli",
]


@pytest.mark.slow
@pytest.mark.parametrize("module", MODULES)
def test_module_imports_first(module):
    result = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

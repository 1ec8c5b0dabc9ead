"""Shared fixtures: small real datasets collected with the real simulator."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from keydyn.data.collect import CollectConfig, collect

SMALL = {"width": 96, "height": 72}


def small_collect_config(out: Path, **overrides) -> CollectConfig:
    values = {"out": out, "episodes": 3, "steps": 12, "seed": 7, "progress": False, **SMALL}
    values.update(overrides)
    return CollectConfig(**values)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory) -> Path:
    """A 3-episode top_down dataset at 96x72 collected by one worker."""
    out = tmp_path_factory.mktemp("datasets") / "top_down"
    collect(small_collect_config(out))
    return out


@pytest.fixture(scope="session")
def small_run(small_dataset, tmp_path_factory) -> Path:
    """A GT 3D dynamics run trained for a few epochs on `small_dataset`."""
    from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics

    out = tmp_path_factory.mktemp("runs") / "gt3d"
    config = TrainDynamicsConfig(
        dataset=small_dataset, out=out, horizon=5, epochs=3, hidden=(64, 64), val_fraction=0.34, progress=False
    )
    return train_dynamics(config)


@contextlib.contextmanager
def served(run: Path) -> Iterator:
    """`keydyn serve` of `run` from a background thread at a free local port (a `keydyn.remote.server.Server`;
    its `address` is the one bound)."""
    from keydyn.remote.server import Server
    from keydyn.remote.session import ControlSession, ServeConfig

    server = Server(ControlSession(ServeConfig(run=run)), "tcp://127.0.0.1:*")
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop,))
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join()
        server.close()

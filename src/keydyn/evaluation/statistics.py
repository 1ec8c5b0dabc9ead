"""Intervals and spreads of goal-reaching errors: a bootstrap over start/goal pairs, the spread over seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_mean_interval(
    values: Sequence[float], confidence: float = 0.95, resamples: int = 10_000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling them with replacement).

    Returns (low, high) in the values' unit; both equal the value for a single value.

    Raises:
        ValueError: no values, or `confidence` outside (0, 1).
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no values to bootstrap")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    generator = np.random.default_rng(seed)
    means = data[generator.integers(0, data.size, size=(resamples, data.size))].mean(axis=1)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), minimum and maximum of per-seed figures."""
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0:
        raise ValueError("no per-seed figures to spread: give at least one seed's")
    return {
        "mean": float(data.mean()),
        "std": float(data.std(ddof=1)) if data.size > 1 else 0.0,
        "min": float(data.min()),
        "max": float(data.max()),
    }

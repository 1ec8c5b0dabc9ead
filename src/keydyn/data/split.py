"""The seeded split of a dataset's episodes into training and validation, shared by every trainer."""

from __future__ import annotations

import numpy as np


def split_episodes(num_episodes: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded random split of episode indices into (train, validation), both sorted.

    The validation set gets round(val_fraction * E) episodes, at least 1 when val_fraction > 0; the training
    set keeps at least 1.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    num_val = max(1, round(val_fraction * num_episodes)) if val_fraction > 0 else 0
    if num_episodes - num_val < 1:
        raise ValueError(
            f"the dataset has {num_episodes} episode(s): too few for a train/validation split with "
            f"val_fraction={val_fraction}; collect more episodes or lower val_fraction"
        )
    order = np.random.default_rng(np.random.SeedSequence([seed, 0x5917])).permutation(num_episodes)
    return np.sort(order[num_val:]), np.sort(order[:num_val])

"""The scripted random pushing policy used to collect data (the original code's 'push-forward' policy)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RandomPushConfig:
    """Each step: speed U(min_speed, max_speed) m/s, heading U(-spread, +spread) degrees around the push
    direction fixed at the episode start (from the pusher towards the object)."""

    min_speed: float = 0.15
    max_speed: float = 0.25
    heading_spread_deg: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.min_speed <= self.max_speed:
            raise ValueError(
                f"push speeds must satisfy 0 <= min_speed <= max_speed, got {self.min_speed}, {self.max_speed}"
            )


class RandomPushPolicy:
    """Pushes roughly towards the object: i.i.d. speed and heading noise around one push direction."""

    def __init__(self, config: RandomPushConfig, rng: np.random.Generator) -> None:
        self.config = config
        self.rng = rng
        self.direction = 0.0  # radians, world frame

    def reset(self, pusher_xy: np.ndarray, object_xy: np.ndarray) -> None:
        """Aim the episode's pushes from the pusher at the object (world xy, metres)."""
        delta = np.asarray(object_xy[:2]) - np.asarray(pusher_xy[:2])
        self.direction = math.atan2(delta[1], delta[0])

    def __call__(self) -> np.ndarray:
        """Next action: (2,) float32 pusher velocity in m/s."""
        speed = self.rng.uniform(self.config.min_speed, self.config.max_speed)
        spread = math.radians(self.config.heading_spread_deg)
        heading = self.direction + self.rng.uniform(-spread, spread)
        return np.array([speed * math.cos(heading), speed * math.sin(heading)], dtype=np.float32)

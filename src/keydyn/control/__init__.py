"""Closed-loop model-predictive control: observation -> latent -> plan -> first action, repeated."""

from keydyn.control.costs import terminal_cost, tracking_cost
from keydyn.control.mpc import MPCConfig, MPCController, constant_velocity_grid

__all__ = [
    "MPCConfig",
    "MPCController",
    "constant_velocity_grid",
    "terminal_cost",
    "tracking_cost",
]

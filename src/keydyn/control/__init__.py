"""Closed-loop model-predictive control: observation -> latent -> plan -> first action, repeated."""

from keydyn.control.costs import terminal_keypoint_cost, tracking_cost
from keydyn.control.encoders import GroundTruthEncoder, LatentEncoder
from keydyn.control.mpc import MPCConfig, MPCController, constant_velocity_grid

__all__ = [
    "GroundTruthEncoder",
    "LatentEncoder",
    "MPCConfig",
    "MPCController",
    "constant_velocity_grid",
    "terminal_keypoint_cost",
    "tracking_cost",
]

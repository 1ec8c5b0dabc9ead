"""Sampling- and gradient-based model-predictive planners over learned dynamics, batched in PyTorch.

All planners share `Planner.plan(state, warm_start=None, horizon=None) -> PlanResult`; see `keydyn.planning.base`.
"""

from keydyn.planning.base import Cost, Dynamics, Planner, PlannerConfig, PlanResult, rollout, shift_plan
from keydyn.planning.cem import CEM, CEMConfig
from keydyn.planning.mppi import MPPI, MPPIConfig, correlated_noise
from keydyn.planning.shooting import GradientShooting, GradientShootingConfig, RandomShooting, RandomShootingConfig

__all__ = [
    "CEM",
    "MPPI",
    "CEMConfig",
    "Cost",
    "Dynamics",
    "GradientShooting",
    "GradientShootingConfig",
    "MPPIConfig",
    "PlanResult",
    "Planner",
    "PlannerConfig",
    "RandomShooting",
    "RandomShootingConfig",
    "correlated_noise",
    "rollout",
    "shift_plan",
]

"""A simulated-hardware harness standing in for a robot: an iiwa arm with a differential-IK velocity controller
carrying the pusher, and a D415-like camera (`HarnessEnv`, environment and task "harness")."""

from keydyn.sim.harness.camera import D415Model
from keydyn.sim.harness.control import DifferentialIK, IKConfig
from keydyn.sim.harness.env import HarnessEnv, harness_task

__all__ = ["D415Model", "DifferentialIK", "HarnessEnv", "IKConfig", "harness_task"]

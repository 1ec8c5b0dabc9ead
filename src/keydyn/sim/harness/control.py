"""Differential inverse kinematics: the arm's pusher tip follows world xy velocity commands.

At every IK tick (200 Hz by default) the controller solves, by damped least squares on the tip's 6-D Jacobian,
for joint velocities that give the commanded tip velocity: the commanded (vx, vy), a vertical velocity that
returns the tip to its pushing height, and an angular velocity that turns the pusher back to vertical (error
feedback, `gain` per second) with none about the vertical. Joint 3 and 5 drift in the arm's null space is pulled
back to zero. The joint velocities are scaled down together to the joint speed limits, clipped to keep the
joints `limit_margin` inside their position limits, and integrated into the joint position targets (the servos'
`ctrl`). The Jacobian is that of the commanded configuration (the targets), not of the measured one, as on a
robot whose controller integrates its own position commands; the servos then follow the targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from keydyn.sim.harness.iiwa import JOINT_LIMITS, JOINT_NAMES, TIP_SITE, VELOCITY_LIMITS


@dataclass(frozen=True)
class IKConfig:
    """Settings of the differential IK. Units: seconds, metres, radians."""

    rate_hz: float = 200.0
    """IK ticks per second (the joint targets change at this rate)."""
    damping: float = 0.02
    """Damped least squares lambda (metres or radians): larger is steadier near singularities, less exact."""
    gain: float = 20.0
    """Error feedback on the tip height and the pusher's tilt, 1/s."""
    null_gain: float = 2.0
    """Pull of joints 3 and 5 towards zero in the null space, 1/s."""
    limit_margin: float = 0.02
    """Joints stop this far inside their position limits, radians."""

    def __post_init__(self) -> None:
        if self.rate_hz <= 0 or self.damping <= 0 or self.gain < 0 or self.null_gain < 0 or self.limit_margin < 0:
            raise ValueError(f"IK settings must be positive (rate, damping) or >= 0 (gains, margin), got {self}")


class DifferentialIK:
    """Turns tip velocity commands into joint position targets for the arm of `model` (see the module docstring).

    It keeps its own MjData for the kinematics of the commanded configuration, so it never disturbs the
    simulation; its only state besides the held command is the joint targets, which live in the simulation's
    `ctrl` (and so in its saved state).
    """

    def __init__(self, model: mujoco.MjModel, config: IKConfig, height: float) -> None:
        self.model, self.config, self.height = model, config, height
        self._kinematics = mujoco.MjData(model)
        joints = [model.joint(name) for name in JOINT_NAMES]
        self.qpos = np.array([int(j.qposadr[0]) for j in joints])
        self.dofs = np.array([int(j.dofadr[0]) for j in joints])
        self.actuators = np.array([model.actuator(f"{name}_servo").id for name in JOINT_NAMES])
        self.site = model.site(TIP_SITE).id
        self.command = np.zeros(2)
        self._jacp, self._jacr = np.zeros((3, model.nv)), np.zeros((3, model.nv))
        self._null_weight = np.array([0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0])
        self._lower, self._upper = -JOINT_LIMITS + config.limit_margin, JOINT_LIMITS - config.limit_margin

    @property
    def dt(self) -> float:
        return 1.0 / self.config.rate_hz

    def tip(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) metres and pointing direction (3,) unit vector of the pusher at joint angles q (7,)."""
        self._forward(q)
        return self._kinematics.site_xpos[self.site].copy(), self._kinematics.site_xmat[self.site].reshape(3, 3)[:, 2]

    def _forward(self, q: np.ndarray) -> None:
        self._kinematics.qpos[self.qpos] = q
        mujoco.mj_kinematics(self.model, self._kinematics)
        mujoco.mj_comPos(self.model, self._kinematics)

    def joint_velocity(self, q: np.ndarray, tip_velocity: np.ndarray) -> np.ndarray:
        """Joint velocities (7,) rad/s at joint angles q (7,) for the tip's world xy velocity (2,) m/s, with the
        height and tilt corrections, before the limits."""
        position, pointing = self.tip(q)
        mujoco.mj_jacSite(self.model, self._kinematics, self._jacp, self._jacr, self.site)
        jacobian = np.concatenate([self._jacp[:, self.dofs], self._jacr[:, self.dofs]])  # (6, 7)
        tilt = np.cross(pointing, [0.0, 0.0, -1.0])  # turns the pusher axis towards straight down
        tilt[2] = 0.0  # no turning about the vertical
        climb = self.config.gain * (self.height - position[2])
        twist = np.concatenate([tip_velocity, [climb], self.config.gain * tilt])
        normal = jacobian @ jacobian.T + self.config.damping**2 * np.eye(6)
        pseudo_inverse = jacobian.T @ np.linalg.solve(normal, np.eye(6))  # (7, 6)
        null = -self.config.null_gain * self._null_weight * q
        return pseudo_inverse @ twist + (np.eye(7) - pseudo_inverse @ jacobian) @ null

    def limited(self, q: np.ndarray, velocity: np.ndarray) -> np.ndarray:
        """`velocity` (7,) scaled to the joint speed limits and clipped so that one tick keeps q (7,) within the
        position limits (less the margin)."""
        scale = np.max(np.abs(velocity) / VELOCITY_LIMITS)
        if scale > 1.0:
            velocity = velocity / scale
        target = np.clip(q + velocity * self.dt, self._lower, np.maximum(self._upper, self._lower))
        return (target - q) / self.dt

    def tick(self, data: mujoco.MjData) -> None:
        """One IK tick: move the joint targets in `data.ctrl` by one tick of the held `command`."""
        q = data.ctrl[self.actuators].copy()
        velocity = self.limited(q, self.joint_velocity(q, self.command))
        data.ctrl[self.actuators] = q + velocity * self.dt

    def solve(self, tip: np.ndarray, q: np.ndarray, iterations: int = 200, tolerance: float = 1e-5) -> np.ndarray:
        """Joint angles (7,) that put the tip at world `tip` (3,) metres, pointing down, found from q (7,) by
        iterating the damped least squares step (for placing the arm; raises ValueError when it does not converge
        within `tolerance` metres)."""
        q = np.clip(np.asarray(q, dtype=float), self._lower, self._upper)
        saved, self.height = self.height, float(tip[2])
        try:
            for _ in range(iterations):
                position, pointing = self.tip(q)
                error = np.asarray(tip[:2]) - position[:2]
                if np.linalg.norm(tip - position) < tolerance and pointing[2] < -1 + 1e-8:
                    return q
                step = self.joint_velocity(q, self.config.gain * error) / self.config.gain
                q = np.clip(q + step, self._lower, self._upper)
        finally:
            self.height = saved
        raise ValueError(
            f"IK did not reach the pusher tip target {np.round(tip, 3).tolist()} (off by "
            f"{np.linalg.norm(tip - position) * 1e3:.1f} mm); the start is out of the arm's reach"
        )

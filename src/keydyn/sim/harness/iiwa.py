"""A KUKA LBR iiwa 14 R820 carrying keydyn's pusher, built procedurally as MJCF (no downloaded assets).

Published figures (KUKA, "LBR iiwa 7 R800, LBR iiwa 14 R820 Specification", and the DH parameters derived from
it: d1 = 0.36, d3 = 0.42, d5 = 0.40, d7 = 0.126 m, all link offsets a_i = 0):

- base to joint 2 (shoulder) 0.36 m, joint 2 to joint 4 (elbow) 0.42 m, joint 4 to joint 6 (wrist) 0.40 m,
  joint 6 to the flange 0.126 m; axes alternate z, y, z, y, z, y, z and meet at shoulder, elbow and wrist, so
  the arm stands straight up, flange 1.306 m above its base, at q = 0;
- joint limits +-170, +-120, +-170, +-120, +-170, +-120, +-175 deg;
- joint speed limits 85, 85, 100, 75, 130, 135, 135 deg/s;
- maximum joint torques 320, 320, 176, 176, 110, 40, 40 N m.

The joint positions inside each 0.36 / 0.42 / 0.40 / 0.126 m segment (where joints 1, 3, 5, 7 sit), the link
masses (about 22 kg in all) and the capsule geoms are our estimates, not published figures. The y axes all point
the same way (KUKA alternates the signs of joints 2, 4, 6: a convention, not a kinematic difference).

Reach: with the pusher pointing down, its tip `PUSH_HEIGHT` above the table and the base on the table's level,
the wrist is 0.13 m below the shoulder, so the tip reaches an annulus of horizontal radii about 0.39 m (the
elbow folded to its 120 deg limit) to 0.81 m (the arm straight) around the base axis: `BASE_X` and the harness
task's table (`keydyn.sim.harness.env`) are chosen so the table lies inside it.
"""

from __future__ import annotations

import math

import numpy as np

from keydyn.sim.config import TaskConfig
from keydyn.sim.environment import UnreachableStartError
from keydyn.sim.scene import PUSHER_HALF_HEIGHT, PusherMount, pusher_geom

SEGMENTS = (0.36, 0.42, 0.40, 0.126)
"""Published distances, metres: base to shoulder (joint 2), shoulder to elbow (joint 4), elbow to wrist (joint 6),
wrist to flange."""
JOINT_LIMITS_DEG = (170.0, 120.0, 170.0, 120.0, 170.0, 120.0, 175.0)
VELOCITY_LIMITS_DEG = (85.0, 85.0, 100.0, 75.0, 130.0, 135.0, 135.0)
TORQUE_LIMITS = (320.0, 320.0, 176.0, 176.0, 110.0, 40.0, 40.0)
JOINT_LIMITS = np.radians(JOINT_LIMITS_DEG)
"""(7,) symmetric joint position limits, radians."""
VELOCITY_LIMITS = np.radians(VELOCITY_LIMITS_DEG)
"""(7,) joint speed limits, rad/s."""
JOINT_NAMES = tuple(f"iiwa_joint_{k}" for k in range(1, 8))
TIP_SITE = "pusher_tip"
"""Site at the centre of the pusher's lower end."""

# Each link: (offset of its joint from the previous joint along the previous link's z, metres; joint axis;
# mass, kg; capsule radius, metres). Offsets 1+2, 3+4, 5+6 and 7+flange add up to SEGMENTS. Neighbouring radii
# differ, so that the capsules' ends at a joint do not coincide (coincident surfaces flicker in the render).
_LINKS = (
    (0.1575, "0 0 1", 4.0, 0.065),
    (0.2025, "0 1 0", 4.0, 0.07),
    (0.2045, "0 0 1", 3.0, 0.06),
    (0.2155, "0 1 0", 2.7, 0.065),
    (0.1845, "0 0 1", 1.7, 0.05),
    (0.2155, "0 1 0", 1.8, 0.055),
    (0.081, "0 0 1", 0.3, 0.04),
)
_FLANGE = 0.045  # joint 7 to the flange, metres
_PUSHER_MASS = 0.2  # kg, a light rod (keydyn's slide pusher is 10 kg)
_KP = (4000.0, 4000.0, 2000.0, 2000.0, 1000.0, 1000.0, 500.0)  # N m / rad, joint position servo gains
_SERVO_TIME = 0.02  # s, kv = kp * _SERVO_TIME: the servo's lag behind a moving target
_ARMATURE = 0.1  # kg m^2, reflected rotor inertia (keeps the stiff servos stable at 1 ms steps)

BASE_X = -0.58
"""World x of the arm's base axis, metres (beside the table, on the -x side, at the table top's level)."""
PUSH_HEIGHT = 0.002
"""Height of the pusher's tip above the table while pushing, metres (as keydyn's slide pusher)."""
TOOL_LENGTH = 2 * PUSHER_HALF_HEIGHT
"""Flange to pusher tip, metres: the pusher cylinder's length."""


def iiwa_mount(task: TaskConfig, base: tuple[float, float, float] = (BASE_X, 0.0, 0.0)) -> PusherMount:
    """The arm on a pedestal with its base at `base` (world, metres), the pusher hanging from the flange along the
    flange's z axis, and a position servo on every joint (`ctrl` = joint targets in radians, gravity compensated
    like the real arm's controller). The arm's own links touch nothing; the pusher touches only the object."""
    pedestal_height = 0.75  # down to the floor (scene.py puts it 0.75 m below the table top)
    body = (
        f'<geom name="iiwa_pedestal" type="cylinder" size="0.12 {pedestal_height / 2}" '
        f'pos="{base[0]} {base[1]} {base[2] - pedestal_height / 2}" material="iiwa_dark" group="2" '
        'contype="0" conaffinity="0"/>'
        f'<body name="iiwa_base" pos="{base[0]} {base[1]} {base[2]}">'
        '<geom type="cylinder" size="0.1 0.05" pos="0 0 0.05" material="iiwa_dark" group="1" mass="5" '
        'contype="0" conaffinity="0"/>'
    )
    closing = "</body>"
    for k, ((offset, axis, mass, radius), name, limit, torque) in enumerate(
        zip(_LINKS, JOINT_NAMES, JOINT_LIMITS, TORQUE_LIMITS, strict=True)
    ):
        length = _LINKS[k + 1][0] if k + 1 < len(_LINKS) else _FLANGE
        material = "iiwa_orange" if k % 2 else "iiwa_grey"
        body += (
            f'<body name="iiwa_link_{k + 1}" pos="0 0 {offset}" gravcomp="1">'
            f'<joint name="{name}" axis="{axis}" range="{-limit:.9g} {limit:.9g}" armature="{_ARMATURE}" '
            f'actuatorfrcrange="{-torque} {torque}" damping="0.5"/>'
            f'<geom type="capsule" fromto="0 0 0 0 0 {length}" size="{radius}" material="{material}" group="1" '
            f'mass="{mass}" contype="0" conaffinity="0"/>'
        )
        closing += "</body>"
    body += (
        f'<body name="iiwa_tool" pos="0 0 {_FLANGE}" gravcomp="1">'
        '<geom type="cylinder" size="0.035 0.008" pos="0 0 0.008" material="iiwa_dark" group="1" mass="0.1" '
        'contype="0" conaffinity="0"/>'
        f"{pusher_geom(task, _PUSHER_MASS, (0.0, 0.0, PUSHER_HALF_HEIGHT))}"
        f'<site name="{TIP_SITE}" pos="0 0 {TOOL_LENGTH}" size="0.005"/>'
        "</body>" + closing
    )
    actuators = "".join(
        f'<position name="{name}_servo" joint="{name}" kp="{kp}" kv="{kp * _SERVO_TIME}" '
        f'ctrlrange="{-limit:.9g} {limit:.9g}"/>'
        for name, limit, kp in zip(JOINT_NAMES, JOINT_LIMITS, _KP, strict=True)
    )
    assets = (
        '<material name="iiwa_grey" rgba="0.85 0.85 0.85 1" specular="0.3"/>'
        '<material name="iiwa_orange" rgba="0.95 0.45 0.1 1" specular="0.3"/>'
        '<material name="iiwa_dark" rgba="0.2 0.2 0.22 1"/>'
    )
    return PusherMount(body=body, actuators=actuators, assets=assets)


def planar_pose(tip: np.ndarray, base: np.ndarray) -> np.ndarray:
    """Joint angles (7,) radians that put the pusher tip at world `tip` (3,), pointing straight down, with joints
    3, 5, 7 at zero and the elbow up (closed-form: joint 1 turns the arm's plane towards the tip, joints 2 and 4
    solve the shoulder-elbow-wrist triangle, joint 6 points the flange down); a start for the numerical IK.

    Raises:
        UnreachableStartError: the tip is out of the arm's reach (pointing down).
    """
    shoulder_to_elbow, elbow_to_wrist = SEGMENTS[1], SEGMENTS[2]
    delta = np.asarray(tip, dtype=float) - np.asarray(base, dtype=float)
    horizontal = math.hypot(delta[0], delta[1])
    vertical = delta[2] + SEGMENTS[3] + TOOL_LENGTH - SEGMENTS[0]  # wrist above the shoulder
    reach = math.hypot(horizontal, vertical)
    elbow_cos = (shoulder_to_elbow**2 + elbow_to_wrist**2 - reach**2) / (2 * shoulder_to_elbow * elbow_to_wrist)
    elbow = math.pi - math.acos(min(max(elbow_cos, -1.0), 1.0))  # joint 4: 0 straight, pi folded
    if not (math.radians(10) <= elbow <= JOINT_LIMITS[3]):
        raise UnreachableStartError(
            f"pusher tip {np.round(tip, 3).tolist()} is {horizontal:.3f} m from the arm's base axis, out of the "
            "iiwa's reach with the pusher pointing down (about 0.39 to 0.81 m); move the start or the base"
        )
    # Joint 2 leans the upper arm forward from vertical; the forearm adds `elbow` more.
    to_wrist = math.atan2(horizontal, vertical)  # angle of the shoulder-wrist line from vertical
    inner = math.asin(elbow_to_wrist * math.sin(elbow) / reach)  # shoulder angle of the triangle
    shoulder = to_wrist - inner
    wrist = math.pi - shoulder - elbow  # the flange points straight down
    return np.array([math.atan2(delta[1], delta[0]), shoulder, 0.0, elbow, 0.0, wrist, 0.0])

"""Builds the MuJoCo model of a pushing scene: table, floor, object, pusher, lights and cameras."""

from __future__ import annotations

from dataclasses import dataclass

import imageio.v3 as iio
import mujoco
import numpy as np

from keydyn.sim.config import SUGAR_BOX_MASS, SUGAR_BOX_SIZE, CameraSpec, TaskConfig
from keydyn.sim.meshes import MugShape, TexturedMesh, mug_mesh, package_box
from keydyn.sim.textures import mug_pattern

OBJECT_BODY = "object"
PUSHER_BODY = "pusher"
# Collision filtering: the pusher touches only the object, never the table.
_TABLE_BITS = 'contype="1" conaffinity="1"'
_OBJECT_BITS = 'contype="3" conaffinity="3"'
_PUSHER_BITS = 'contype="2" conaffinity="2"'


@dataclass(frozen=True)
class SceneHandles:
    """Indices into a compiled scene model."""

    object_body: int
    object_qpos: int  # first of 7 free-joint coordinates (x, y, z, qw, qx, qy, qz)
    object_qvel: int
    object_geoms: np.ndarray  # (G,) int geom ids belonging to the object (visual and collision)
    object_visual_geom: int
    pusher_qpos: int | None  # x then y slide joints (None: a PusherMount carries the pusher)
    pusher_qvel: int | None
    camera_ids: tuple[int, ...]
    mug_materials: tuple[int, ...]  # material ids a mug may wear (empty for the box)


PUSHER_HALF_HEIGHT = 0.05
"""Half the pusher cylinder's length, metres."""


@dataclass(frozen=True)
class PusherMount:
    """MJCF of a robot that carries the pusher in place of keydyn's slide-joint pusher.

    `body` goes into the worldbody (its last link holds `pusher_geom`), `actuators` into <actuator>, and
    `assets` into <asset>.
    """

    body: str
    actuators: str
    assets: str = ""


def pusher_geom(task: TaskConfig, mass: float, pos: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> str:
    """MJCF of the pusher cylinder (radius `task.pusher_radius`, length 2 * PUSHER_HALF_HEIGHT, axis along its
    body's z, centred at `pos`); it touches the object, never the table."""
    return (
        f'<geom name="pusher" type="cylinder" size="{task.pusher_radius} {PUSHER_HALF_HEIGHT}" pos="{_fmt(pos)}" '
        f'material="pusher_material" group="1" mass="{mass}" friction="{task.pusher_friction} 0.005 0.0001" '
        f"{_PUSHER_BITS}/>"
    )


def camera_xyaxes(camera: CameraSpec) -> np.ndarray:
    """MuJoCo camera frame axes (x right, y up in the image; the camera looks along -z), (2, 3)."""
    position, target, up = (np.asarray(v, dtype=float) for v in (camera.position, camera.target, camera.up))
    backward = position - target
    norm = np.linalg.norm(backward)
    if norm < 1e-9:
        raise ValueError(f"camera {camera.name!r}: position and target coincide")
    backward /= norm
    right = np.cross(up, backward)
    if np.linalg.norm(right) < 1e-6:
        raise ValueError(f"camera {camera.name!r}: 'up' {camera.up} is parallel to the viewing direction")
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(backward, right)])


def _fmt(values: np.ndarray) -> str:
    return " ".join(f"{v:.9g}" for v in np.ravel(values))


def _png(image: np.ndarray) -> bytes:
    return iio.imwrite("<bytes>", image, extension=".png")


def _mesh_xml(name: str, mesh: TexturedMesh) -> str:
    # MuJoCo's texture v axis points up the image; our images are stored top row first.
    texcoords = mesh.texcoords.copy()
    texcoords[:, 1] = 1.0 - texcoords[:, 1]
    return (
        f'<mesh name="{name}" vertex="{_fmt(mesh.vertices)}" face="{_fmt(mesh.faces)}" texcoord="{_fmt(texcoords)}"/>'
    )


MUG_HANDLE_MASS_FRACTION = 0.08  # of a mug's mass in its handle (about 30 g of 350 g)


def _object_xml(task: TaskConfig, mug: MugShape | None, assets: dict[str, bytes]) -> tuple[str, str]:
    """Returns (asset xml, body xml) of the object."""
    friction = f'friction="{task.object_friction} 0.005 0.0001"'
    if task.object == "sugar_box":
        box = package_box(SUGAR_BOX_SIZE)
        assets["box_texture.png"] = _png(box.texture)
        sx, sy, sz = SUGAR_BOX_SIZE
        inertia = SUGAR_BOX_MASS / 12.0 * np.array([sy**2 + sz**2, sx**2 + sz**2, sx**2 + sy**2])
        asset = (
            '<texture name="box_texture" type="2d" file="box_texture.png"/>'
            '<material name="box_material" texture="box_texture" specular="0.2" shininess="0.2"/>'
            + _mesh_xml("box_mesh", box)
        )
        body = (
            f'<inertial pos="0 0 0" mass="{SUGAR_BOX_MASS}" diaginertia="{_fmt(inertia)}"/>'
            '<geom name="object_visual" type="mesh" mesh="box_mesh" material="box_material" group="1" '
            'contype="0" conaffinity="0"/>'
            f'<geom name="object_collision" type="box" size="{sx / 2} {sy / 2} {sz / 2}" group="3" '
            f"{_OBJECT_BITS} {friction}/>"
        )
        return asset, body
    if task.object != "mug":
        raise ValueError(
            f"task {task.name!r}: keydyn's scene has no {task.object!r} object (the cylinder is gymnasium_pusher's); "
            "use object 'sugar_box' or 'mug', or environment 'gymnasium_pusher'"
        )
    if mug is None:
        raise ValueError("a mug task needs a MugShape")
    patterns = [mug_pattern(256, 128, seed) for seed in range(task.mug_textures)]
    mesh = mug_mesh(mug, patterns[0])
    asset = _mesh_xml("mug_mesh", mesh)
    for k, pattern in enumerate(patterns):
        assets[f"mug_texture_{k}.png"] = _png(pattern)
        asset += (
            f'<texture name="mug_texture_{k}" type="2d" file="mug_texture_{k}.png"/>'
            f'<material name="mug_material_{k}" texture="mug_texture_{k}" specular="0.4" shininess="0.5"/>'
        )
    r, h = mug.radius, mug.height
    # The mass sits on the body hull, its centre moved towards the handle by the handle's share of it (as a ceramic
    # mug's: a mug on its side then rests against its handle instead of balancing on the line below its axis).
    ixx = task.mug_mass * (3 * r**2 + h**2) / 12.0
    izz = task.mug_mass * r**2 / 2.0
    offset = MUG_HANDLE_MASS_FRACTION * (r + mug.handle_radius)
    body = (
        f'<inertial pos="{offset} 0 {h / 2}" mass="{task.mug_mass}" diaginertia="{ixx} {ixx} {izz}"/>'
        '<geom name="object_visual" type="mesh" mesh="mug_mesh" material="mug_material_0" group="1" '
        'contype="0" conaffinity="0"/>'
        f'<geom name="object_collision" type="cylinder" size="{r} {h / 2}" pos="0 0 {h / 2}" group="3" '
        f'{_OBJECT_BITS} {friction} mass="0"/>'
    )
    # The handle: top and bottom arms and an outer bar, three small boxes.
    arm_half = mug.handle_radius / 2 + mug.handle_thickness / 2
    vertical = mug.handle_radius * mug.handle_squash
    bar_x = r + mug.handle_radius
    pieces = [
        (r + mug.handle_radius / 2, mug.handle_height + vertical, arm_half, mug.handle_thickness),
        (r + mug.handle_radius / 2, mug.handle_height - vertical, arm_half, mug.handle_thickness),
        (bar_x, mug.handle_height, mug.handle_thickness, vertical),
    ]
    for k, (x, z, hx, hz) in enumerate(pieces):
        body += (
            f'<geom name="handle_{k}" type="box" size="{hx} {mug.handle_thickness} {hz}" pos="{x} 0 {z}" '
            f'group="3" {_OBJECT_BITS} {friction} mass="0"/>'
        )
    return asset, body


def build_scene(
    task: TaskConfig, mug: MugShape | None = None, mount: PusherMount | None = None
) -> tuple[mujoco.MjModel, SceneHandles]:
    """Compile the scene of `task` (with `mug` for the mug task; with the pusher on `mount`, a robot, instead of
    keydyn's x-y slide joints driven by velocity servos).

    The world frame has its origin at the centre of the table top, z up. The object body frame is the
    centre of the box (for a mug: the centre of its base, handle along +x).
    """
    assets: dict[str, bytes] = {}
    object_asset, object_body = _object_xml(task, mug, assets)
    half_table = task.table_size / 2
    cameras = "".join(
        f'<camera name="{c.name}" pos="{_fmt(c.position)}" xyaxes="{_fmt(camera_xyaxes(c))}" fovy="{c.fovy_deg}"/>'
        for c in task.cameras
    )
    if mount is None:
        mount = PusherMount(
            body=f"""<body name="{PUSHER_BODY}" pos="0 0 {PUSHER_HALF_HEIGHT + 0.002}">
      <joint name="pusher_x" type="slide" axis="1 0 0"/>
      <joint name="pusher_y" type="slide" axis="0 1 0"/>
      {pusher_geom(task, task.pusher_mass)}
    </body>""",
            actuators=f"""<velocity name="pusher_vx" joint="pusher_x" kv="{task.pusher_gain}"/>
    <velocity name="pusher_vy" joint="pusher_y" kv="{task.pusher_gain}"/>""",
        )
    xml = f"""
<mujoco model="keydyn_{task.name}">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{task.physics_dt}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <statistic extent="1" center="0 0 0"/>
  <visual>
    <global offwidth="{task.width}" offheight="{task.height}"/>
    <map znear="0.01" zfar="20"/>
    <quality shadowsize="2048" offsamples="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.25 0.25 0.25" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="floor_texture" type="2d" builtin="checker" rgb1="0.35 0.35 0.38" rgb2="0.3 0.3 0.33"
             width="256" height="256"/>
    <material name="floor_material" texture="floor_texture" texrepeat="8 8"/>
    <material name="table_material" rgba="0.62 0.6 0.56 1" specular="0.1"/>
    <material name="pusher_material" rgba="0.1 0.75 0.2 1"/>
    {object_asset}
    {mount.assets}
  </asset>
  <worldbody>
    <light name="key" directional="true" pos="0.3 -0.3 2" dir="-0.2 0.2 -1" diffuse="0.55 0.55 0.55"
           castshadow="{str(task.shadows).lower()}"/>
    <light name="fill" directional="true" pos="-0.5 0.5 2" dir="0.3 -0.2 -1" diffuse="0.2 0.2 0.2"
           castshadow="false"/>
    <geom name="floor" type="plane" size="3 3 0.1" pos="0 0 -0.75" material="floor_material" group="2" {_TABLE_BITS}/>
    <geom name="table" type="box" size="{half_table} {half_table} 0.05" pos="0 0 -0.05"
          material="table_material" group="2" friction="0.3 0.005 0.0001" {_TABLE_BITS}/>
    {cameras}
    <body name="{OBJECT_BODY}" pos="0 0 0.1">
      <freejoint name="object_joint"/>
      {object_body}
    </body>
    {mount.body}
  </worldbody>
  <actuator>
    {mount.actuators}
  </actuator>
</mujoco>
"""
    model = mujoco.MjModel.from_xml_string(xml, assets=assets)
    body = model.body(OBJECT_BODY).id
    object_geoms = np.flatnonzero(model.geom_bodyid == body)
    joint = model.joint("object_joint")
    slide = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, "pusher_x") >= 0
    materials = tuple(model.material(f"mug_material_{k}").id for k in range(task.mug_textures)) if mug else ()
    handles = SceneHandles(
        object_body=body,
        object_qpos=int(joint.qposadr[0]),
        object_qvel=int(joint.dofadr[0]),
        object_geoms=object_geoms,
        object_visual_geom=model.geom("object_visual").id,
        pusher_qpos=int(model.joint("pusher_x").qposadr[0]) if slide else None,
        pusher_qvel=int(model.joint("pusher_x").dofadr[0]) if slide else None,
        camera_ids=tuple(model.camera(c.name).id for c in task.cameras),
        mug_materials=materials,
    )
    return model, handles

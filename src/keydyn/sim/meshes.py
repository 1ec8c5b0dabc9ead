"""Meshes with texture coordinates: the package box (one atlas cell per face) and procedural mugs."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from keydyn.sim.textures import package_face


@dataclass(frozen=True)
class TexturedMesh:
    """A triangle mesh ready for MuJoCo.

    Attributes:
        vertices: (V, 3) float, metres, in the body frame.
        faces: (F, 3) int, counter-clockwise seen from outside.
        texcoords: (V, 2) float in [0, 1].
        texture: (H, W, 3) uint8 image the texture coordinates index.
    """

    vertices: np.ndarray
    faces: np.ndarray
    texcoords: np.ndarray
    texture: np.ndarray


def package_box(size: tuple[float, float, float], pixels_per_metre: float = 2400.0, seed: int = 4) -> TexturedMesh:
    """A box centred on the origin whose six faces carry six different printed-package designs.

    Args:
        size: full edge lengths (x, y, z) in metres.
        pixels_per_metre: texture resolution on the object surface.
        seed: design seed; face k uses seed * 10 + k.
    """
    half = np.asarray(size, dtype=float) / 2.0
    faces_spec = []  # (origin corner, edge a, edge b) with a x b pointing outwards
    for axis in range(3):
        a_axis, b_axis = (axis + 1) % 3, (axis + 2) % 3
        for sign in (1.0, -1.0):
            origin = -half.copy()
            origin[axis] = sign * half[axis]
            edge_a = np.zeros(3)
            edge_b = np.zeros(3)
            edge_a[a_axis] = 2 * half[a_axis]
            edge_b[b_axis] = 2 * half[b_axis]
            if sign < 0:  # keep the winding outward-facing
                edge_a, edge_b = edge_b, edge_a
            faces_spec.append((origin, edge_a, edge_b))
    images = []
    for k, (_, edge_a, edge_b) in enumerate(faces_spec):
        w = max(8, round(np.linalg.norm(edge_a) * pixels_per_metre))
        h = max(8, round(np.linalg.norm(edge_b) * pixels_per_metre))
        images.append(package_face(w, h, seed * 10 + k))
    cell_w = max(img.shape[1] for img in images)
    cell_h = max(img.shape[0] for img in images)
    atlas = np.full((2 * cell_h, 3 * cell_w, 3), 128, dtype=np.uint8)
    vertices, texcoords, triangles = [], [], []
    for k, ((origin, edge_a, edge_b), img) in enumerate(zip(faces_spec, images, strict=True)):
        row, col = divmod(k, 3)
        y0, x0 = row * cell_h, col * cell_w
        atlas[y0 : y0 + img.shape[0], x0 : x0 + img.shape[1]] = img
        u0, u1 = x0 / atlas.shape[1], (x0 + img.shape[1]) / atlas.shape[1]
        v0, v1 = y0 / atlas.shape[0], (y0 + img.shape[0]) / atlas.shape[0]
        base = len(vertices)
        vertices += [origin, origin + edge_a, origin + edge_a + edge_b, origin + edge_b]
        texcoords += [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]
        triangles += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    return TexturedMesh(np.asarray(vertices), np.asarray(triangles, dtype=np.int64), np.asarray(texcoords), atlas)


@dataclass(frozen=True)
class MugShape:
    """Dimensions of one procedural mug, metres. The mug stands on z = 0 with its handle towards +x."""

    radius: float
    height: float
    wall: float
    handle_radius: float  # major radius of the handle's torus
    handle_thickness: float  # minor radius of the handle's torus
    handle_height: float  # height of the handle centre above the base
    handle_squash: float  # vertical stretch of the handle (1 = circular)

    @property
    def handle_reach(self) -> float:
        """Distance from the mug's axis to the outer edge of its handle's bar, metres."""
        return self.radius + self.handle_radius + self.handle_thickness


MUG_PART_HEIGHTS = {"base": 0.05, "body": 0.5, "rim": 0.95}
"""Heights of the named rings of a mug's outer wall, as fractions of its height above the base."""
MUG_PART_AZIMUTHS_DEG = (45, 90, 135, 180, 225, 270, 315)
"""Azimuths of the named points of each ring, degrees about the mug's axis from its handle (90: a quarter turn
towards body +y). None at 0: there the handle joins the wall, and on some mugs covers the base or rim ring."""


def mug_parts(shape: MugShape) -> dict[str, np.ndarray]:
    """Named points on a mug's outer surface, the same parts on every mug: the outer wall near the base, at
    mid-height and just below the rim, each at `MUG_PART_AZIMUTHS_DEG` from the handle (`"rim 180"`: the rim
    opposite the handle), and `"handle"`, the outermost point of the handle's bar.

    Returns:
        name -> (3,) float64 point in the mug's body frame (base centre at the origin, axis along +z, handle towards
        +x), metres.
    """
    parts = {}
    for ring, fraction in MUG_PART_HEIGHTS.items():
        for azimuth in MUG_PART_AZIMUTHS_DEG:
            angle = np.radians(azimuth)
            parts[f"{ring} {azimuth}"] = np.array(
                [shape.radius * np.cos(angle), shape.radius * np.sin(angle), fraction * shape.height]
            )
    parts["handle"] = np.array([shape.handle_reach, 0.0, shape.handle_height])
    return parts


def sample_mug_shape(rng: np.random.Generator) -> MugShape:
    """A plausible mug: radius 3.2-4.8 cm, height 7.5-11 cm, varied handle size, thickness and shape."""
    radius = float(rng.uniform(0.032, 0.048))
    height = float(rng.uniform(0.075, 0.11))
    handle_radius = float(rng.uniform(0.018, 0.03))
    squash = float(rng.uniform(0.8, 1.4))
    max_centre = height - handle_radius * squash - 0.006
    min_centre = handle_radius * squash + 0.008
    return MugShape(
        radius=radius,
        height=height,
        wall=float(rng.uniform(0.003, 0.006)),
        handle_radius=handle_radius,
        handle_thickness=float(rng.uniform(0.004, 0.007)),
        handle_height=float(rng.uniform(min_centre, max(min_centre, max_centre)))
        if max_centre > min_centre
        else height / 2,
        handle_squash=squash,
    )


def mug_mesh(shape: MugShape, texture: np.ndarray, sections: int = 48) -> TexturedMesh:
    """Watertight mug: body minus the inner cavity, plus a torus handle; cylindrical texture coordinates."""
    import trimesh

    outer = trimesh.creation.cylinder(radius=shape.radius, height=shape.height, sections=sections)
    outer.apply_translation((0, 0, shape.height / 2))
    cavity_height = shape.height  # from the base thickness to above the rim
    inner = trimesh.creation.cylinder(radius=shape.radius - shape.wall, height=cavity_height, sections=sections)
    inner.apply_translation((0, 0, shape.wall + cavity_height / 2))
    handle = trimesh.creation.torus(
        major_radius=shape.handle_radius,
        minor_radius=shape.handle_thickness,
        major_sections=32,
        minor_sections=12,
    )
    # Torus lies in the xy plane: stand it up in the xz plane, stretch it, move it to the side of the body.
    handle.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, (1, 0, 0)))
    handle.apply_scale((1.0, 1.0, shape.handle_squash))
    handle.apply_translation((shape.radius, 0, shape.handle_height))
    solid = trimesh.boolean.union([outer, handle], engine="manifold")
    solid = trimesh.boolean.difference([solid, inner], engine="manifold")
    vertices = np.asarray(solid.vertices)
    angle = np.arctan2(vertices[:, 1], vertices[:, 0])
    texcoords = np.stack([(angle + np.pi) / (2 * np.pi), np.clip(vertices[:, 2] / shape.height, 0, 1)], axis=1)
    return TexturedMesh(vertices, np.asarray(solid.faces, dtype=np.int64), texcoords, texture)

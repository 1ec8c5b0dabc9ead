"""Correspondences between RGB-D views: exact on a ray-cast scene, millimetre-accurate on rendered frames."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keydyn.data.store import EpisodeStore
from keydyn.sim.config import SUGAR_BOX_SIZE
from keydyn.vision.correspondence import (
    CorrespondenceConfig,
    find_correspondences,
    sample_non_matches,
    sample_pixels,
    stack_correspondences,
)
from keydyn.vision.geometry import bilinear_sample, invert_transform, transform_points, unproject_to_world
from keydyn.vision.views import load_view

from .vision_fixtures import (
    OCCLUDER,
    Box,
    camera,
    cast,
    object_box,
    on_box_surface,
    render,
    table,
    visibility_margin,
    yaw_pose,
)

WIDTH, HEIGHT, FX, FY = 96, 72, 87.0, 84.0
ALL = 100_000  # more samples than pixels: every object pixel of A is tried


def _scene():
    obj = object_box(yaw_pose(0.0, 0.0, 0.03, 0.3))
    occluder = Box(yaw_pose(-0.12, 0.0, 0.17, 0.0), np.array([0.015, 0.02, 0.01]), OCCLUDER)
    return obj, [table(), obj, occluder]


def _cameras():
    a = camera((0.25, 0.02, 0.3), (0, 0, 0), WIDTH, HEIGHT, FX, FY)  # sees the top and the +x side
    b = camera((-0.25, 0.05, 0.3), (0, 0, 0), WIDTH, HEIGHT, FX, FY)  # the top, the -x side, the occluder
    cut = camera((0.2, 0.0, 0.45), (0.2, 0, 0), WIDTH, HEIGHT, FX, FY, up=(0, 1, 0))  # object across the edge
    return a, b, cut


def _rendered(camera_b: int = 1):
    """The scene, its cameras, and the views of camera A and of camera `camera_b` (1: occluded, 2: cut)."""
    obj, boxes = _scene()
    cams = _cameras()
    return obj, boxes, cams[0], cams[camera_b], render(cams[0], boxes), render(cams[camera_b], boxes)


def _object_points_of(cam, boxes, view):
    """Every object pixel of a view and its exact world point (ray cast at the pixel centre)."""
    rows, cols = torch.nonzero(view.mask, as_tuple=True)
    uv = torch.stack([cols, rows], dim=-1).numpy().astype(np.float64)
    _, _, points = cast(cam, boxes, uv)
    return uv, points


def _kept(matches, uv):
    kept = {(int(u), int(v)) for u, v in matches.uv_a.numpy()}
    return np.array([(int(u), int(v)) in kept for u, v in uv])


@pytest.mark.parametrize("camera_b", [1, 2], ids=["occluded", "out_of_view"])
def test_matches_are_exact_and_only_clearly_visible_points_survive(camera_b):
    obj, boxes, cam_a, cam_b, view_a, view_b = _rendered(camera_b)
    matches = find_correspondences(view_a, view_b, ALL, torch.Generator().manual_seed(0))
    assert 30 < len(matches) < int(view_a.mask.sum())

    # exact: the match is the true projection of a point on the object's surface
    world = matches.points_world.numpy()
    assert on_box_surface(obj, world, atol=1e-5).all()
    uv_b, z_b = cam_b.project(world)
    np.testing.assert_allclose(matches.uv_b.numpy(), uv_b, atol=1e-4)
    np.testing.assert_allclose(matches.depth_b.numpy(), z_b, atol=1e-5)
    _, _, from_a = cast(cam_a, boxes, matches.uv_a.numpy().astype(np.float64))
    np.testing.assert_allclose(world, from_a, atol=1e-5)

    # complete and sound away from occlusion and image boundaries (half a pixel of rounding at them)
    uv, points = _object_points_of(cam_a, boxes, view_a)
    clearly_visible, clearly_hidden = visibility_margin(cam_b, boxes, obj, points)
    kept = _kept(matches, uv)
    assert clearly_hidden.sum() >= 30 and clearly_visible.sum() >= 30
    assert kept[clearly_visible].all()
    assert not kept[clearly_hidden].any()


def test_self_occluded_points_on_the_mask_are_rejected_by_depth_alone():
    obj, boxes, cam_a, cam_b, view_a, view_b = _rendered()
    uv, points = _object_points_of(cam_a, boxes, view_a)
    _, clearly_hidden = visibility_margin(cam_b, boxes, obj, points)
    projected, _ = cam_b.project(points)
    pixel = np.floor(projected + 0.5).astype(int)
    inside = np.all((pixel >= 0) & (pixel < [WIDTH, HEIGHT]), axis=-1)
    on_mask_b = np.zeros(len(points), dtype=bool)
    on_mask_b[inside] = view_b.mask.numpy()[pixel[inside, 1], pixel[inside, 0]]
    hidden_on_mask = clearly_hidden & on_mask_b  # the +x side seen by A lands on B's view of the box
    assert hidden_on_mask.sum() >= 10
    generator = torch.Generator().manual_seed(0)
    matches = find_correspondences(view_a, view_b, ALL, generator, CorrespondenceConfig(require_mask_b=False))
    assert not _kept(matches, uv)[hidden_on_mask].any()
    loose = CorrespondenceConfig(depth_tolerance=1.0, max_depth_step=10.0)  # without the depth check they pass
    assert _kept(find_correspondences(view_a, view_b, ALL, generator, loose), uv)[hidden_on_mask].all()


def test_hidden_points_are_those_behind_another_surface_in_b():
    obj, boxes, cam_a, cam_b, view_a, view_b = _rendered()
    matches = find_correspondences(view_a, view_b, ALL, torch.Generator().manual_seed(0))
    uv, points = _object_points_of(cam_a, boxes, view_a)
    clearly_visible, _ = visibility_margin(cam_b, boxes, obj, points)
    _, behind = visibility_margin(cam_b, boxes, obj, points, depth_margin=0.02)
    projected, _ = cam_b.project(points)
    inside = np.all((np.floor(projected + 0.5) >= 0) & (np.floor(projected + 0.5) < [WIDTH, HEIGHT]), axis=-1)
    hidden = {(int(u), int(v)) for u, v in matches.hidden_uv_a.numpy()}
    flagged = np.array([(int(u), int(v)) in hidden for u, v in uv])
    assert (behind & inside).sum() >= 30
    assert flagged[behind & inside].mean() >= 0.95  # behind by 2 cm: flagged (some sit on an outline in B)
    assert not flagged[clearly_visible].any()
    assert not (flagged & _kept(matches, uv)).any()
    stacked = stack_correspondences([matches], 50, num_hidden=20)
    assert stacked.hidden_uv_a.shape == (1, 20, 2) and stacked.hidden_valid.all()
    torch.testing.assert_close(stacked.hidden_uv_a[0], matches.hidden_uv_a[:20])


def test_matches_follow_the_object_between_moments():
    cam = _cameras()[0]
    pose_a, pose_b = yaw_pose(0.0, 0.0, 0.03, 0.3), yaw_pose(0.03, -0.02, 0.03, 0.7)
    obj_b = object_box(pose_b)
    boxes_b = [table(), obj_b]
    view_a = render(cam, [table(), object_box(pose_a)], pose_a)
    view_b = render(cam, boxes_b, pose_b)
    config = CorrespondenceConfig(follow_object=True)
    matches = find_correspondences(view_a, view_b, ALL, torch.Generator().manual_seed(0), config)
    assert len(matches) > 100
    world_a = unproject_to_world(
        matches.uv_a.double(), matches.depth_a.double(), view_a.intrinsics, view_a.T_world_camera
    )
    in_object_a = transform_points(invert_transform(view_a.T_world_object), world_a)
    in_object_b = transform_points(invert_transform(view_b.T_world_object), matches.points_world)
    np.testing.assert_allclose(in_object_b.numpy(), in_object_a.numpy(), atol=1e-5)
    assert on_box_surface(obj_b, matches.points_world.numpy(), atol=1e-5).all()
    uv, _ = _object_points_of(cam, [table(), object_box(pose_a)], view_a)
    _, _, points_a = cast(cam, [table(), object_box(pose_a)], uv)
    carried = points_a @ (pose_b @ np.linalg.inv(pose_a))[:3, :3].T + (pose_b @ np.linalg.inv(pose_a))[:3, 3]
    clearly_visible, clearly_hidden = visibility_margin(cam, boxes_b, obj_b, carried)
    kept = _kept(matches, uv)
    assert kept[clearly_visible].all() and not kept[clearly_hidden].any()
    with pytest.raises(ValueError, match="T_world_object"):
        find_correspondences(render(cam, boxes_b), view_b, 10, torch.Generator(), config)


def test_sampling_is_seeded():
    view_a, view_b = _rendered()[-2:]
    first = find_correspondences(view_a, view_b, 50, torch.Generator().manual_seed(3))
    again = find_correspondences(view_a, view_b, 50, torch.Generator().manual_seed(3))
    other = find_correspondences(view_a, view_b, 50, torch.Generator().manual_seed(4))
    torch.testing.assert_close(first.uv_b, again.uv_b)
    assert not torch.equal(first.uv_a, other.uv_a)
    assert len(first) <= 50


def test_pixel_and_non_match_sampling():
    mask = torch.zeros(20, 30, dtype=torch.bool)
    mask[5:15, 10:25] = True
    generator = torch.Generator().manual_seed(0)
    uv = sample_pixels(mask, 40, generator)
    assert uv.shape == (40, 2) and mask[uv[:, 1], uv[:, 0]].all()
    assert len({tuple(p) for p in uv.tolist()}) == 40  # distinct
    assert sample_pixels(mask, 1000, generator).shape == (150, 2)
    matches = torch.tensor([[12.0, 8.0], [20.3, 13.7]])
    non = sample_non_matches(matches, ~mask, 25, 4.0, generator)  # background non-matches
    assert non.shape == (2, 25, 2)
    assert (~mask)[non[..., 1], non[..., 0]].all()
    on_object = sample_non_matches(matches, mask, 200, 6.0, generator)
    assert ((on_object.double() - matches[:, None].double()).norm(dim=-1) >= 6.0).all()
    with pytest.raises(ValueError, match="px away"):
        sample_non_matches(matches, mask, 5, 100.0, generator)


def test_stack_pads_and_cuts_to_a_fixed_number_of_matches():
    view_a, view_b = _rendered()[-2:]
    few = find_correspondences(view_a, view_b, 8, torch.Generator().manual_seed(0))
    many = find_correspondences(view_a, view_b, 300, torch.Generator().manual_seed(1))
    batch = stack_correspondences([few, many], 40)
    assert batch.uv_a.shape == (2, 40, 2) and batch.depth_b.shape == (2, 40)
    assert batch.valid[0].sum() == len(few) and batch.valid[1].all()
    torch.testing.assert_close(batch.uv_b[1], many.uv_b[:40])
    torch.testing.assert_close(batch.depth_b[0, : len(few)], few.depth_b)


# -- rendered frames ---------------------------------------------------------------------------------------
def _box_surface_distance(points_object: torch.Tensor) -> torch.Tensor:
    """Distance (metres) of object-frame points to the sugar box's surface."""
    half = torch.tensor(SUGAR_BOX_SIZE, dtype=torch.float64) / 2
    gap = half - points_object.abs()
    inside = (gap >= 0).all(-1)
    return torch.where(inside, gap.min(-1).values, (-gap).clamp_min(0).norm(dim=-1))


def _b_error(view, uv_b, points_world, transform=None):
    """3D distance (metres) from the matched points to B's own pixels unprojected with B's depth image.

    B's depth is read at the nearest pixel and interpolated bilinearly (the two ways a match is accepted); the
    closer one counts. `transform` (4, 4) maps both to another frame first (e.g. the object's).
    """
    pixel = torch.floor(uv_b.double() + 0.5).long()
    nearest = view.depth[pixel[:, 1], pixel[:, 0]].double()
    interpolated = bilinear_sample(view.depth.double()[None, None], uv_b.double()[None])[0, :, 0]
    errors = []
    for depth in (nearest, interpolated):
        from_b = unproject_to_world(uv_b.double(), depth, view.intrinsics, view.T_world_camera)
        if transform is not None:
            from_b = transform_points(transform, from_b)
        errors.append((from_b - points_world).norm(dim=-1))
    return torch.minimum(*errors)


def test_rendered_camera_pairs_agree_in_3d(small_dataset):
    store = EpisodeStore.open(small_dataset)
    generator = torch.Generator().manual_seed(0)
    agreement, surface = [], []
    for frame in range(0, store.num_frames, 4):
        view_a, view_b = load_view(store, "top_down", frame), load_view(store, "top_down_rotated", frame)
        matches = find_correspondences(view_a, view_b, 300, generator)
        assert len(matches) >= 0.8 * int(view_a.mask.sum())  # top-down pairs: nearly every pixel matches
        agreement.append(_b_error(view_b, matches.uv_b, matches.points_world))
        in_object = transform_points(invert_transform(view_a.T_world_object), matches.points_world)
        surface.append(_box_surface_distance(in_object))
    agreement, surface = torch.cat(agreement), torch.cat(surface)
    assert agreement.median() < 1e-4
    assert (agreement < 0.002).float().mean() > 0.97
    assert agreement.max() <= CorrespondenceConfig().depth_tolerance + 1e-5
    assert surface.max() < 0.001  # the unprojected pixels lie on the true box


def test_rendered_frames_match_across_time_through_the_object_pose(small_dataset):
    store = EpisodeStore.open(small_dataset)
    generator = torch.Generator().manual_seed(1)
    config = CorrespondenceConfig(follow_object=True)
    errors, moved = [], []
    for episode in range(store.num_episodes):
        start, end = store.episode_range(episode)
        view_a, view_b = load_view(store, "top_down", start + 2), load_view(store, "top_down_rotated", end - 1)
        moved.append(float((view_b.T_world_object[:3, 3] - view_a.T_world_object[:3, 3]).norm()))
        matches = find_correspondences(view_a, view_b, 300, generator, config)
        assert len(matches) >= 50
        K_a, T_a = view_a.intrinsics, view_a.T_world_camera
        world_a = unproject_to_world(matches.uv_a.double(), matches.depth_a.double(), K_a, T_a)
        in_object_a = transform_points(invert_transform(view_a.T_world_object), world_a)
        errors.append(_b_error(view_b, matches.uv_b, in_object_a, invert_transform(view_b.T_world_object)))
    errors = torch.cat(errors)
    assert max(moved) > 0.02  # the box really moved
    assert errors.median() < 1e-4 and (errors < 0.002).float().mean() > 0.97


def test_rendered_mug_pairs_agree_in_3d_on_the_mugs_surface(tmp_path):
    """Matches between the two cameras' views of mugs on their side (several instances) lie on the instance's
    mesh and agree with B's depth."""
    import trimesh

    from keydyn.data.collect import CollectConfig, collect
    from keydyn.sim.env import mug_shape
    from keydyn.sim.meshes import mug_mesh
    from keydyn.sim.textures import mug_pattern

    size = {"width": 160, "height": 120}
    store = collect(
        CollectConfig(tmp_path / "mugs", "mugs", episodes=3, steps=12, seed=2, workers=1, progress=False, **size)
    )
    generator = torch.Generator().manual_seed(0)
    agreement, surface = [], []
    for episode, instance in enumerate(store.episode_meta("mug_instance")):
        shape = mug_shape(int(instance))
        mesh = mug_mesh(shape, mug_pattern(8, 8, 0))
        body = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
        begin, end = store.episode_range(episode)
        for frame in (begin, end - 1):
            view_a, view_b = load_view(store, "top_down", frame), load_view(store, "top_down_rotated", frame)
            matches = find_correspondences(view_a, view_b, 200, generator)
            assert len(matches) >= 50
            agreement.append(_b_error(view_b, matches.uv_b, matches.points_world))
            in_object = transform_points(invert_transform(view_a.T_world_object), matches.points_world)
            surface.append(torch.as_tensor(trimesh.proximity.closest_point(body, in_object.numpy())[1]))
    agreement, surface = torch.cat(agreement), torch.cat(surface)
    # B's depth at a matched pixel of a small curved body (5 mm pixels at 160x120) is within the match tolerance;
    # the matched points themselves lie on the instance's mesh.
    assert agreement.median() < 3e-4 and (agreement < 0.002).float().mean() > 0.95
    assert agreement.max() <= CorrespondenceConfig().depth_tolerance + 1e-5
    assert surface.max() < 0.001 and surface.median() < 1e-4

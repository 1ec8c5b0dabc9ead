"""Pinhole geometry helpers of keydyn.vision, against the independent numpy scene of vision_fixtures."""

from __future__ import annotations

import numpy as np
import torch

from keydyn.latents.gt3d import rotate_by_quaternions
from keydyn.vision.geometry import (
    bilinear_sample,
    invert_transform,
    pixel_grid,
    pose_matrix,
    project,
    seen_points,
    transform_points,
    unproject,
    unproject_to_world,
)

from .vision_fixtures import camera, cast, object_box, table, yaw_pose


def test_unproject_to_world_lands_on_the_ray_cast_surface_and_projects_back():
    cam = camera((0.3, -0.4, 0.5), (0.0, 0.0, 0.0))
    boxes = [table(), object_box(yaw_pose(0.02, -0.01, 0.03, 0.4))]
    rng = np.random.default_rng(0)
    uv = rng.uniform([0, 0], [cam.width - 1, cam.height - 1], size=(200, 2))
    depth, _, hits = cast(cam, boxes, uv)
    K, T = torch.from_numpy(cam.intrinsics), torch.from_numpy(cam.pose)
    world = unproject_to_world(torch.from_numpy(uv), torch.from_numpy(depth), K, T)
    np.testing.assert_allclose(world.numpy(), hits, atol=1e-12)
    uv_back, z_back = project(world, K, T)
    np.testing.assert_allclose(uv_back.numpy(), uv, atol=1e-9)
    np.testing.assert_allclose(z_back.numpy(), depth, atol=1e-12)
    np.testing.assert_allclose(unproject(uv_back, z_back, K)[:, 2].numpy(), depth, atol=1e-12)


def test_geometry_broadcasts_per_frame_cameras_over_keypoints():
    cams = [camera((0.3, -0.4, 0.5), (0, 0, 0)), camera((-0.5, 0.1, 0.7), (0.1, 0, 0), fx=70, fy=71)]
    K = torch.from_numpy(np.stack([c.intrinsics for c in cams]))  # (2, 3, 3)
    T = torch.from_numpy(np.stack([c.pose for c in cams]))  # (2, 4, 4)
    uv = torch.rand(2, 7, 2, dtype=torch.float64) * 40
    z = torch.rand(2, 7, dtype=torch.float64) + 0.5
    world = unproject_to_world(uv, z, K[:, None], T[:, None])  # (2, 7, 3)
    for b in range(2):
        one = unproject_to_world(uv[b], z[b], K[b], T[b])
        torch.testing.assert_close(world[b], one)
        np.testing.assert_allclose(cams[b].project(one.numpy())[0], uv[b].numpy(), atol=1e-9)


def test_pose_matrix_agrees_with_the_dynamics_quaternion_rotation_and_inverts():
    rng = np.random.default_rng(1)
    quaternions = rng.normal(size=(5, 4))
    quaternions /= np.linalg.norm(quaternions, axis=-1, keepdims=True)
    positions = rng.normal(size=(5, 3))
    points = rng.normal(size=(5, 4, 3))
    poses = pose_matrix(torch.from_numpy(positions), torch.from_numpy(quaternions))
    moved = transform_points(poses[:, None], torch.from_numpy(points))
    expected = rotate_by_quaternions(quaternions, points) + positions[:, None]
    np.testing.assert_allclose(moved.numpy(), expected, atol=1e-12)
    back = transform_points(invert_transform(poses)[:, None], moved)
    np.testing.assert_allclose(back.numpy(), points, atol=1e-12)


def test_bilinear_sample_is_exact_at_pixel_centres_and_linear_between():
    height, width = 5, 7
    grid = pixel_grid(height, width)  # (H, W, 2)
    image = (3.0 * grid[..., 0] - 2.0 * grid[..., 1] + 1.0)[None, None]  # a linear ramp, (1, 1, H, W)
    uv = torch.tensor([[[0.0, 0.0], [6.0, 4.0], [2.0, 3.0], [2.25, 1.5], [5.9, 0.1]]])
    sampled = bilinear_sample(image, uv)[0, :, 0]
    torch.testing.assert_close(sampled, 3.0 * uv[0, :, 0] - 2.0 * uv[0, :, 1] + 1.0)


def test_a_point_is_seen_only_inside_the_image_in_front_at_the_rendered_depth():
    intrinsics = torch.tensor([[100.0, 0.0, 20.0], [0.0, 100.0, 15.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    depth = torch.full((1, 30, 40), 1.0)  # a wall 1 m in front of the camera
    points = torch.tensor(
        [[[0.0, 0.0, 1.0], [0.05, -0.1, 1.004], [0.0, 0.0, 0.98], [1.0, 0.0, 1.0], [0.0, 0.0, -1.0]]],
        dtype=torch.float64,
    )  # on the wall, on it within 5 mm, 2 cm in front of it (an occluder's point), outside the image, behind
    uv, seen = seen_points(points, depth, intrinsics, torch.eye(4, dtype=torch.float64), tolerance=0.005)
    assert seen.tolist() == [[True, True, False, False, False]]
    torch.testing.assert_close(uv[0, 1], torch.tensor([25.0, 5.0], dtype=torch.float64), atol=0.05, rtol=0)

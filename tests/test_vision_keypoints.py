"""Heatmaps, spatial and depth expectations, the keypoint correspondence function and SDS selection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from keydyn.data.store import EpisodeStore
from keydyn.vision.geometry import invert_transform, pixel_grid, transform_points, unproject_to_world
from keydyn.vision.heatmap import DESCRIPTOR_ETA, descriptor_logits, expectations_from_logits, heatmap_expectations
from keydyn.vision.keypoints import (
    confidence_ranking,
    locate_keypoints,
    sample_reference_descriptors,
    select_spatial_descriptors,
)
from keydyn.vision.views import load_view

from .vision_fixtures import camera, cast, table

HEIGHT, WIDTH = 48, 64


def _gaussian_logits(centres: torch.Tensor, width: float) -> torch.Tensor:
    """(N, H, W) logits -|p - c|^2 / width^2 of Gaussians at (N, 2) subpixel centres."""
    grid = pixel_grid(HEIGHT, WIDTH)
    return -(grid - centres[:, None, None]).pow(2).sum(-1) / width**2


def spatial_expectation(logits: torch.Tensor) -> torch.Tensor:
    """Reference: (..., H, W) logits -> (..., 2) expected pixel under their softmax (eq. 8, 10)."""
    height, width = logits.shape[-2:]
    return torch.softmax(logits.flatten(-2), dim=-1) @ pixel_grid(height, width).reshape(-1, 2)


def depth_expectation(logits: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """Reference: (B, K) expected depth under a softmax masked to the valid depth of (B, H, W) (eq. 11)."""
    valid = torch.isfinite(depth) & (depth > 0)
    weights = torch.softmax(logits.masked_fill(~valid.unsqueeze(1), float("-inf")).flatten(-2), dim=-1)
    return (weights @ torch.where(valid, depth, 0.0).flatten(-2).unsqueeze(-1).float()).squeeze(-1)


def test_spatial_expectation_recovers_subpixel_peaks():
    centres = torch.tensor([[20.3, 14.7], [41.85, 30.05], [10.5, 33.25]])
    unit_depth = torch.ones(1, HEIGHT, WIDTH)
    expected = expectations_from_logits(_gaussian_logits(centres, 1.5)[None], unit_depth)[0][0]
    torch.testing.assert_close(expected, centres, atol=1e-4, rtol=0)
    # a flat heatmap has the image centre as its expectation
    flat = expectations_from_logits(torch.zeros(1, 1, HEIGHT, WIDTH), unit_depth)[0][0]
    torch.testing.assert_close(flat, torch.tensor([[(WIDTH - 1) / 2, (HEIGHT - 1) / 2]]))
    torch.testing.assert_close(spatial_expectation(_gaussian_logits(centres, 1.5)), centres, atol=1e-4, rtol=0)


def test_depth_expectation_uses_valid_depth_only():
    logits = _gaussian_logits(torch.tensor([[20.3, 14.7], [41.8, 30.0]]), 3.0)[None]  # (1, 2, H, W)

    def expected_depth(logits: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        return expectations_from_logits(logits, depth)[1]

    plane = torch.full((1, HEIGHT, WIDTH), 0.734)
    torch.testing.assert_close(expected_depth(logits, plane), torch.full((1, 2), 0.734))
    holes = plane.clone()
    holes[0, 12:17, 18:23] = 0.0  # unknown depth right under the first peak
    holes[0, 28:33, 40:44] = float("nan")
    torch.testing.assert_close(expected_depth(logits, holes), torch.full((1, 2), 0.734))
    # a linear ramp under a symmetric peak gives the ramp's value at the peak
    grid = pixel_grid(HEIGHT, WIDTH)
    ramp = (0.5 + 0.01 * grid[..., 0] - 0.004 * grid[..., 1])[None]
    torch.testing.assert_close(
        expected_depth(logits, ramp)[0], torch.tensor([0.5 + 0.203 - 0.0588, 0.5 + 0.418 - 0.12]), atol=1e-5, rtol=0
    )
    assert torch.isnan(expected_depth(logits, torch.zeros(1, HEIGHT, WIDTH))).all()


def test_descriptor_logits_match_the_direct_difference():
    generator = torch.Generator().manual_seed(0)
    descriptors = torch.randn(2, 5, 6, 7, generator=generator) * 3
    references = torch.randn(2, 4, 5, generator=generator) * 3
    direct = -(descriptors[:, None] - references[..., None, None]).pow(2).sum(2) / DESCRIPTOR_ETA**2
    torch.testing.assert_close(descriptor_logits(descriptors, references), direct, atol=1e-5, rtol=1e-5)
    shared = descriptor_logits(descriptors, references[0])  # (K, D) shared by both images
    torch.testing.assert_close(shared[1], descriptor_logits(descriptors[1:], references[:1])[0])


def _linear_descriptor_image(scale: float, offset: float = 0.0) -> torch.Tensor:
    """(3, H, W) descriptors (scale u, scale v, offset): descriptor distance is scale x pixel distance."""
    grid = pixel_grid(HEIGHT, WIDTH)
    return torch.stack([scale * grid[..., 0], scale * grid[..., 1], torch.full((HEIGHT, WIDTH), offset)])


def test_fused_expectations_equal_the_separate_ones_with_invalid_depth():
    generator = torch.Generator().manual_seed(0)
    descriptors = torch.randn(2, 3, 24, 32, generator=generator)
    references = torch.randn(2, 7, 3, generator=generator)
    depth = 0.5 + torch.rand(2, 24, 32, generator=generator)
    depth[0, :, :10] = 0.0  # unknown depth
    depth[1, 5:9] = float("nan")
    logits = descriptor_logits(descriptors, references, eta=0.7)
    uv, z = heatmap_expectations(descriptors, references, depth, eta=0.7)
    torch.testing.assert_close(uv, spatial_expectation(logits), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(z, depth_expectation(logits, depth), atol=1e-5, rtol=1e-5)
    assert float((depth_expectation(logits, depth) - z).abs().max()) < 1e-5
    empty = torch.zeros(2, 24, 32)
    assert torch.isnan(heatmap_expectations(descriptors, references, empty)[1]).all()


def test_keypoints_locate_known_descriptors_in_3d_with_full_confidence():
    scale = DESCRIPTOR_ETA / 1.2  # heatmaps are Gaussians 1.2 px wide
    image = _linear_descriptor_image(scale)
    uv_true = torch.tensor([[20.3, 14.7], [41.85, 30.05], [33.0, 24.0]])
    references = torch.cat([scale * uv_true, torch.zeros(3, 1)], dim=1)
    references = torch.cat([references, torch.tensor([[scale * 30.0, scale * 20.0, 4.0]])])  # not in the image
    cams = [camera((0.3, -0.4, 0.5), (0, 0, 0)), camera((-0.2, 0.3, 0.6), (0.05, 0, 0), fx=70, fy=66)]
    depths = torch.stack([torch.full((HEIGHT, WIDTH), 0.61), torch.full((HEIGHT, WIDTH), 0.83)])
    K = torch.from_numpy(np.stack([c.intrinsics for c in cams]))
    T = torch.from_numpy(np.stack([c.pose for c in cams]))
    located = locate_keypoints(image.expand(2, -1, -1, -1), references, depths, K, T, return_heatmaps=True)
    assert located.uv.shape == (2, 4, 2) and located.points_world.shape == (2, 4, 3)
    assert located.heatmaps.shape == (2, 4, HEIGHT, WIDTH)
    torch.testing.assert_close(located.uv[:, :3], uv_true.expand(2, -1, -1), atol=1e-4, rtol=0)
    torch.testing.assert_close(located.depth, torch.tensor([[0.61] * 4, [0.83] * 4]))
    torch.testing.assert_close(located.confidence[:, :3], torch.ones(2, 3), atol=1e-5, rtol=0)
    assert torch.allclose(located.confidence[:, 3], torch.tensor(math.exp(-(4.0**2) / DESCRIPTOR_ETA**2)), atol=1e-3)
    for b, cam in enumerate(cams):
        # the world point is the one a ray through the true pixel meets at the plane's depth
        rays = cam.pose[:3, :3] @ np.linalg.solve(cam.intrinsics, np.c_[uv_true.numpy(), np.ones(3)].T)
        expected = cam.pose[:3, 3] + (rays * depths[b, 0, 0].item()).T
        np.testing.assert_allclose(located.points_world[b, :3].numpy(), expected, atol=1e-5)
        # the heatmap peaks at the matching pixel
        peak = located.heatmaps[b, :3].flatten(-2).argmax(-1)
        torch.testing.assert_close(torch.stack([peak % WIDTH, peak // WIDTH], -1), uv_true.round().long())
    single = locate_keypoints(image, references, depths[1], K[1], T[1])
    torch.testing.assert_close(single.points_world, located.points_world[1])
    assert single.heatmaps is None and single.confidence.shape == (4,)
    per_frame = locate_keypoints(image, references[None], depths[1], K[1], T[1])  # (B = 1, K, D) references
    torch.testing.assert_close(per_frame.points_world, single.points_world)


def test_reference_descriptors_come_from_the_mask_and_are_seeded():
    image = _linear_descriptor_image(1.0, offset=2.0)
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    mask[10:20, 30:50] = True
    references, uv = sample_reference_descriptors(image, mask, 50, torch.Generator().manual_seed(5))
    assert references.shape == (50, 3) and uv.shape == (50, 2)
    assert mask[uv[:, 1].long(), uv[:, 0].long()].all()
    torch.testing.assert_close(references, torch.cat([uv, torch.full((50, 1), 2.0)], dim=1))
    again, _ = sample_reference_descriptors(image, mask, 50, torch.Generator().manual_seed(5))
    torch.testing.assert_close(references, again)


def test_oracle_descriptors_track_object_points_between_rendered_cameras(small_dataset):
    """With perfect descriptors (object-frame coordinates), the keypoints land on the true 3D points."""
    store = EpisodeStore.open(small_dataset)
    per_metre = DESCRIPTOR_ETA / 0.01  # heatmaps about 1 cm (a pixel) wide on the object

    def oracle(view):
        pixels = pixel_grid(view.height, view.width).double()
        world = unproject_to_world(pixels, view.depth.double(), view.intrinsics, view.T_world_camera)
        local = transform_points(invert_transform(view.T_world_object), world) * per_metre
        return torch.where(view.mask[..., None], local, torch.full_like(local, 1e4)).permute(2, 0, 1).float()

    errors, confidences = [], []
    for frame in (3, 17, 30):
        view_a, view_b = load_view(store, "top_down", frame), load_view(store, "top_down_rotated", frame)
        references, uv = sample_reference_descriptors(oracle(view_a), view_a.mask, 20, torch.Generator())
        truth = unproject_to_world(
            uv.double(),
            view_a.depth[uv[:, 1].long(), uv[:, 0].long()].double(),
            view_a.intrinsics,
            view_a.T_world_camera,
        )
        located = locate_keypoints(oracle(view_b), references, view_b.depth, view_b.intrinsics, view_b.T_world_camera)
        errors.append((located.points_world.double() - truth).norm(dim=-1))
        confidences.append(located.confidence)
    errors, confidences = torch.cat(errors), torch.cat(confidences)
    assert errors.median() < 0.001
    confident = confidences > 0.5
    assert confident.float().mean() > 0.7
    assert errors[confident].max() < 0.006  # keypoints near the outline may be off, but are not confident


# -- SDS ----------------------------------------------------------------------------------------------------
def test_sds_takes_the_most_confident_candidates_that_are_far_enough_apart():
    positions = torch.tensor([[0.0, 0.0], [5.0, 0.0], [30.0, 0.0], [31.0, 4.0], [60.0, 0.0], [0.0, 40.0]])
    confidences = torch.tensor(
        [
            [0.99, 0.98, 0.5, 0.95, 0.2, 0.7],
            [0.97, 0.95, 0.6, 0.93, 0.3, 0.6],
        ]
    )  # mean ranking: 0, 1, 3, 5, 2, 4
    chosen = select_spatial_descriptors(confidence_ranking(confidences), positions, min_distance=25.0, num_select=4)
    assert chosen.tolist() == [0, 3, 5, 4]  # 1 is too close to 0; 2 too close to 3
    chosen_positions = positions[chosen]
    distances = torch.cdist(chosen_positions, chosen_positions) + torch.eye(4) * 1e9
    assert distances.min() >= 25.0
    mean = confidences.mean(0)
    assert select_spatial_descriptors(mean, positions, min_distance=1.0, num_select=3).tolist() == [0, 1, 3]
    with pytest.raises(ValueError, match="only 3 of 5"):
        select_spatial_descriptors(mean, positions, min_distance=30.0)


def test_sds_original_score_punishes_candidates_lost_in_some_frames():
    positions = torch.tensor([[0.0, 0.0], [100.0, 0.0]])
    confidences = torch.tensor([[1.0, 0.6], [1.0, 0.6], [0.1, 0.6]])  # candidate 0 is lost in one frame
    assert select_spatial_descriptors(confidence_ranking(confidences, "mean"), positions, 10.0, 1).tolist() == [0]
    assert select_spatial_descriptors(confidence_ranking(confidences, "original"), positions, 10.0, 1).tolist() == [1]


def test_sds_on_3d_positions():
    rng = np.random.default_rng(0)
    positions = torch.from_numpy(rng.uniform(-0.05, 0.05, size=(100, 3)))
    confidences = torch.from_numpy(rng.uniform(size=(7, 100)))
    chosen = select_spatial_descriptors(confidences.mean(0), positions, min_distance=0.03, num_select=5)
    assert len(set(chosen.tolist())) == 5
    picked = positions[chosen]
    assert (torch.cdist(picked, picked) + torch.eye(5)).min() >= 0.03
    assert chosen[0] == confidences.mean(0).argmax()


def test_keypoint_geometry_matches_a_ray_cast_scene():
    """Expected depth on a real (tilted) surface: the keypoint lands on the ray-cast plane within 1 mm."""
    cam = camera((0.35, -0.3, 0.4), (0, 0, 0))
    boxes = [table()]
    pixels = pixel_grid(HEIGHT, WIDTH).reshape(-1, 2).double().numpy()
    depth, _, _ = cast(cam, boxes, pixels)
    depth = torch.from_numpy(depth.reshape(HEIGHT, WIDTH)).float()
    scale = DESCRIPTOR_ETA / 1.0
    uv_true = torch.tensor([[20.3, 14.7], [41.85, 30.05]])
    references = torch.cat([scale * uv_true, torch.zeros(2, 1)], dim=1)
    K, T = torch.from_numpy(cam.intrinsics), torch.from_numpy(cam.pose)
    located = locate_keypoints(_linear_descriptor_image(scale), references, depth, K, T)
    _, _, hits = cast(cam, boxes, uv_true.double().numpy())
    np.testing.assert_allclose(located.points_world.numpy(), hits, atol=1e-3)
    assert abs(hits[:, 2]).max() < 1e-9  # on the table top


def test_pixel_depth_keeps_a_keypoint_on_the_surface_at_an_edge():
    """A broad heatmap over a depth step: eq. 11 blends both sides, the pixel mode reads the pixel's own depth."""
    scale = DESCRIPTOR_ETA / 4.0  # heatmaps 4 px wide: they spill across the step
    uv_true = torch.tensor([[30.0, 20.0], [12.0, 8.0]])
    references = torch.cat([scale * uv_true, torch.zeros(2, 1)], dim=1)
    depth = torch.full((HEIGHT, WIDTH), 0.80)
    depth[:, 31:] = 0.70  # a 10 cm step one pixel right of the first keypoint
    depth[8, 12] = 0.0  # the second keypoint's own pixel has no depth
    cam = camera((0.0, 0.0, 0.9), (0, 0, 0))
    K, T = torch.from_numpy(cam.intrinsics), torch.from_numpy(cam.pose)
    image = _linear_descriptor_image(scale)
    blended = locate_keypoints(image, references, depth, K, T)
    on_surface = locate_keypoints(image, references, depth, K, T, depth_mode="pixel")
    torch.testing.assert_close(on_surface.uv, blended.uv)
    assert 0.71 < float(blended.depth[0]) < 0.79  # a point in mid-air between the two surfaces
    assert float(on_surface.depth[0]) == pytest.approx(0.80)
    torch.testing.assert_close(on_surface.depth[1], blended.depth[1])  # no depth at the pixel: the expectation
    with pytest.raises(ValueError, match="depth mode"):
        locate_keypoints(image, references, depth, K, T, depth_mode="median")


def test_fused_keypoints_are_the_confidence_weighted_mean_seen_from_the_first_camera():
    from keydyn.latents.descriptor.fusion import fuse_keypoints
    from keydyn.vision.geometry import project
    from keydyn.vision.keypoints import Keypoints

    def located(points: list[list[float]], confidence: list[float]) -> Keypoints:
        world = torch.tensor([points], dtype=torch.float32)  # (1, K, 3)
        unused = torch.zeros(1, len(points))
        return Keypoints(unused[..., None].expand(-1, -1, 2), unused, world, world, torch.tensor([confidence]))

    intrinsics = torch.tensor([[100.0, 0.0, 32.0], [0.0, 100.0, 24.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, 3] = torch.tensor([0.0, 0.0, -1.0])  # looking along +z at the origin from 1 m
    first = located([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.2, 0.0]], [0.6, 0.5, 0.0])
    second = located([[0.04, 0.0, 0.0], [float("nan")] * 3, [0.0, 0.1, 0.0]], [0.2, 0.9, 0.0])
    fused = fuse_keypoints([first, second], intrinsics, pose)
    expected = torch.tensor([[[0.01, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.15, 0.0]]])
    # weighted by confidence (0.6 : 0.2); a point without depth gives no weight; zero confidences count equally
    torch.testing.assert_close(fused.points_world, expected)
    torch.testing.assert_close(fused.confidence, torch.tensor([[0.6, 0.9, 0.0]]))
    uv, depth = project(expected.double(), intrinsics, pose)
    torch.testing.assert_close(fused.uv, uv.float())
    torch.testing.assert_close(fused.depth, depth.float())
    torch.testing.assert_close(fused.points_camera, expected + torch.tensor([0.0, 0.0, 1.0]))
    assert torch.isnan(fuse_keypoints([second], intrinsics, pose).points_world[0, 1]).all()
    with pytest.raises(ValueError, match="at least one camera"):
        fuse_keypoints([], intrinsics, pose)

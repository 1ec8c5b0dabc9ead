"""Rigid-shape outlier rejection of descriptor keypoints: Kabsch fits, the consensus filter and its template."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from keydyn.latents.descriptor.dataset import require_lifted
from keydyn.latents.descriptor.references import KeypointConfig
from keydyn.latents.descriptor.rigid import RigidFilter, rigid_consistency, rigid_fit, rigid_template
from keydyn.vision.geometry import pose_matrix

TEMPLATE = torch.tensor(
    [[0.0, 0.0, 0.0], [0.12, 0.0, 0.01], [0.12, 0.05, 0.0], [0.0, 0.05, 0.03], [0.06, 0.025, 0.04]]
)  # (5, 3) metres: a box-sized, non-planar shape


def _random_poses(count: int, generator: torch.Generator) -> torch.Tensor:
    """(N, 4, 4) random rigid motions: any 3D rotation, translations within 0.3 m."""
    quaternion = torch.randn(count, 4, generator=generator, dtype=torch.float64)
    position = 0.3 * torch.rand(count, 3, generator=generator, dtype=torch.float64)
    return pose_matrix(position, quaternion / quaternion.norm(dim=-1, keepdim=True))


def _moved(poses: torch.Tensor) -> torch.Tensor:
    """(N, 5, 3) the template under each pose."""
    return (poses[:, None, :3, :3] @ TEMPLATE.double()[None, :, :, None])[..., 0] + poses[:, None, :3, 3]


def test_rigid_fit_recovers_the_motion_and_ignores_zero_weights():
    generator = torch.Generator().manual_seed(0)
    poses = _random_poses(8, generator)
    target = _moved(poses)
    target[:, 4] += 0.5  # a wrong point, given no weight
    weights = torch.ones(8, 5, dtype=torch.float64)
    weights[:, 4] = 0.0
    rotation, translation = rigid_fit(TEMPLATE, target, weights)
    torch.testing.assert_close(rotation, poses[:, :3, :3])
    torch.testing.assert_close(translation, poses[:, :3, 3])
    assert torch.allclose(torch.linalg.det(rotation), torch.ones(8, dtype=torch.float64))


def test_rigid_filter_replaces_exactly_the_keypoints_that_break_the_shape():
    generator = torch.Generator().manual_seed(1)
    poses = _random_poses(50, generator)
    truth = _moved(poses)
    located = truth + 0.001 * torch.randn(truth.shape, generator=generator, dtype=torch.float64)  # 1 mm jitter
    jumped = torch.zeros(50, 5, dtype=torch.bool)
    jumped[::3, 2] = True  # one keypoint 80 mm off in every third frame
    jumped[1::5, 0] = True  # and another one in every fifth frame (some frames have two)
    direction = torch.randn(50, 5, 3, generator=generator, dtype=torch.float64)
    located = torch.where(jumped[..., None], located + 0.08 * direction / direction.norm(dim=-1, keepdim=True), located)
    located[7, 3] = math.nan  # no depth: always replaced
    jumped[7, 3] = True

    filtered, replaced = RigidFilter(TEMPLATE, threshold=0.015)(located.float())
    assert torch.equal(replaced, jumped)
    assert torch.equal(filtered[~replaced], located.float()[~replaced])  # inliers untouched
    assert (filtered[replaced].double() - truth[replaced]).norm(dim=-1).max() < 0.006  # 80 mm off before

    single, single_replaced = RigidFilter(TEMPLATE, threshold=0.015)(located[0])
    torch.testing.assert_close(single, filtered[0].double())
    assert torch.equal(single_replaced, replaced[0])
    too_few = located[:1].clone()
    too_few[0, :3] = math.nan  # two keypoints in 3D cannot fix a rigid motion: left as they are
    kept, none = RigidFilter(TEMPLATE, threshold=0.015)(too_few)
    assert torch.equal(kept.isnan(), too_few.isnan()) and not none.any()


def test_rigid_projection_replaces_every_keypoint_by_the_fit_and_averages_the_jitter():
    generator = torch.Generator().manual_seed(3)
    poses = _random_poses(200, generator)
    truth = _moved(poses)
    located = truth + 0.003 * torch.randn(truth.shape, generator=generator, dtype=torch.float64)  # 3 mm per axis
    located[::4, 1] += 0.08  # an 80 mm jump in every fourth frame: left out of the fit
    projected, replaced = RigidFilter(TEMPLATE, threshold=0.015, project=True)(located)
    assert replaced.all()
    rotation, translation = rigid_fit(TEMPLATE, projected, torch.ones(200, 5, dtype=torch.float64))
    torch.testing.assert_close(_apply_template(rotation, translation), projected)  # exactly the rigid shape
    error_before = (located - truth).norm(dim=-1)
    error_after = (projected - truth).norm(dim=-1)
    assert error_after.median() < 0.75 * error_before.median()
    assert error_after[::4, 1].max() < 0.02  # the jumped keypoint is placed by the others
    too_few = located[:1].clone()
    too_few[0, :3] = math.nan
    kept, none = RigidFilter(TEMPLATE, threshold=0.015, project=True)(too_few)
    assert torch.equal(kept.isnan(), too_few.isnan()) and not none.any()  # no consensus: the frame is kept


def _apply_template(rotation: torch.Tensor, translation: torch.Tensor) -> torch.Tensor:
    return (rotation[:, None] @ TEMPLATE.double()[None, :, :, None])[..., 0] + translation[:, None]


def test_rigid_template_is_the_median_shape_closer_to_the_truth_than_any_frame():
    generator = torch.Generator().manual_seed(2)
    shapes = _moved(_random_poses(40, generator))
    shapes += 0.001 * torch.randn(shapes.shape, generator=generator, dtype=torch.float64)  # 1 mm jitter
    shapes[:10, 1] += torch.tensor([0.03, 0.0, 0.0], dtype=torch.float64)  # ten frames with a misplaced keypoint
    shapes[39, 0] = math.nan  # not a candidate

    def shape_error(points: torch.Tensor) -> torch.Tensor:  # (..., K, 3) -> largest pairwise-distance error
        return (
            (torch.cdist(points.double(), points.double()) - torch.cdist(TEMPLATE, TEMPLATE).double())
            .abs()
            .amax(dim=(-2, -1))
        )

    typical = rigid_template(shapes.float(), iterations=0)
    assert shape_error(typical) < 0.005  # one of the frames without the misplaced keypoint
    template = rigid_template(shapes.float())
    assert shape_error(template) < shape_error(shapes[:39]).min()  # better than every single frame
    assert shape_error(template) < 0.0015
    with pytest.raises(ValueError, match="rigid template"):
        rigid_template(torch.full((2, 5, 3), math.nan))


def test_rigid_filter_is_saved_and_loaded(tmp_path):
    assert RigidFilter.load(tmp_path) is None
    RigidFilter(TEMPLATE, 0.015, project=True).save(tmp_path)
    loaded = RigidFilter.load(tmp_path)
    assert loaded is not None and loaded.threshold == 0.015 and loaded.project
    torch.testing.assert_close(loaded.template, TEMPLATE)


def test_rigid_consistency_flags_the_point_lost_in_some_frames():
    generator = torch.Generator().manual_seed(0)
    points = _moved(_random_poses(60, generator))
    points = points + 0.001 * torch.randn(points.shape, generator=generator, dtype=torch.float64)  # 1 mm jitter
    lost = torch.rand(60, generator=generator) < 0.3  # point 3 is located elsewhere in ~30% of the frames
    points[lost, 3] += torch.tensor([0.06, -0.02, 0.0], dtype=torch.float64)
    points[5, 1] = float("nan")  # no depth once: that frame does not count for point 1
    scores = rigid_consistency(points, threshold=0.015)
    assert scores.shape == (5,) and scores.argmax() == 3
    assert scores[3] > 0.05  # its 90th percentile is a frame where it is lost (63 mm off)
    assert (scores[[0, 1, 2, 4]] < 0.005).all()  # the others: jitter only


def test_rigid_options_are_checked():
    with pytest.raises(ValueError, match="rigid-outlier-mm must be >= 0"):
        KeypointConfig(rigid_outlier_mm=-1.0)
    with pytest.raises(ValueError, match="set that too"):
        KeypointConfig(rigid_project=True)
    assert KeypointConfig(rigid_outlier_mm=15.0, rigid_project=True).rigid_project
    with pytest.raises(ValueError, match="sds-ranking 'visibility': use one of confidence, rigid"):
        KeypointConfig(sds_ranking="visibility")


def test_keypoints_without_depth_are_placed_by_the_rigid_filter_or_left_out_and_many_are_refused(tmp_path, capsys):
    """A dataset's keypoints lost in depth holes (NaN, as a real camera's holes leave them) are placed by the rigid
    filter where 3 others of the frame agree; frames it cannot place stay NaN and are reported, and more than 1%
    of them are refused by name."""
    store = SimpleNamespace(path=tmp_path / "data")
    generator = torch.Generator().manual_seed(2)
    truth = _moved(_random_poses(200, generator)).float()
    points = truth.clone()
    points[1, 3] = float("nan")  # one keypoint in a hole
    points[4, :3] = float("nan")  # three of five: too few left to fit
    points[9, 0] = float("nan")
    with pytest.raises(ValueError, match=r"3 of 200 frames of .*data \(first: row 1\) have keypoints without valid"):
        require_lifted(points, store, ["top_down"], filtered=False)
    placed = RigidFilter(TEMPLATE, 0.015, project=False)(points)[0]
    torch.testing.assert_close(placed[1], truth[1], atol=1e-5, rtol=0)
    require_lifted(placed, store, ["top_down"], filtered=True)
    assert "1 of 200 frames of" in capsys.readouterr().err and placed[4].isnan().any()
    placed[5:8, 0] = float("nan")
    with pytest.raises(ValueError, match=r"4 of 200 frames .* even after the rigid filter .* fill the depth holes"):
        require_lifted(placed, store, ["top_down"], filtered=True)

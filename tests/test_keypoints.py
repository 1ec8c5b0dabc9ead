"""Descriptor keypoint latents: reference selection, dataset keypoints and their cache, WDS weights, the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from keydyn.data.store import CONTENT_HASH, EpisodeStore
from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics
from keydyn.latents import get_latent
from keydyn.latents.descriptor.dataset import compute_keypoints, dataset_keypoints
from keydyn.latents.descriptor.method import load_descriptor_encoder, load_visual
from keydyn.latents.descriptor.references import (
    RIGID_RANKING_THRESHOLD_M,
    KeypointConfig,
    References,
    choose_references,
    locate_references,
    reference_frame,
)
from keydyn.latents.descriptor.rigid import rigid_consistency
from keydyn.latents.descriptor.weights import KeypointWeights
from keydyn.runs import open_dataset
from keydyn.sim.config import SUGAR_BOX_SIZE
from keydyn.sim.observations import ObservationError
from keydyn.vision.geometry import pose_matrix
from keydyn.vision.keypoints import locate_keypoints
from keydyn.vision.network import rgb_to_tensor
from keydyn.vision.views import load_view

from .vision_fixtures import one_thread

FAST_MPC = ["--num-samples", "64", "--iterations", "2", "--mpc.grid-headings", "36"]  # MPPI's, the default
VISUAL_STEPS = 40
# The box is about 13 px long at 96x72: the paper's 25 px at 640x480 scales to 3.75 px; 3 px keeps 5 apart.
# A 40-step network finds few descriptors within a pixel of their own pixel: no self-match filter by default.
SMALL_KEYPOINTS = KeypointConfig(
    num_descriptors=20, num_selected=5, min_distance_px=3.0, confidence_frames=10, reference_tolerance_px=math.inf
)


@pytest.fixture(scope="module")
def visual_run(small_dataset, tmp_path_factory):
    """A tiny descriptor network (ResNet-18 layout, width 8) trained for 40 steps with `keydyn train-visual`."""
    from keydyn.cli import main

    out = tmp_path_factory.mktemp("visual") / "run"
    argv = [
        "train-visual",
        *("--dataset", str(small_dataset), "--out", str(out), "--steps", str(VISUAL_STEPS)),
        *("--validate-every", str(VISUAL_STEPS), "--val-fraction", "0.34", "--val-pairs", "4"),
        *("--network.width", "8", "--lr", "1e-3", "--precision", "fp32", "--no-progress"),
        *("--preset", "fast"),  # stride-8 descriptors, as the thresholds below were set for
    ]
    with one_thread():
        assert main(argv) == 0
    return out


def test_ds_samples_k_descriptors_on_the_object_mask(small_dataset, visual_run):
    store = open_dataset(small_dataset)
    net, eta = load_visual(visual_run, "last")
    with one_thread():
        references = choose_references(net, store, SMALL_KEYPOINTS, spatial=False, eta=eta)
    assert len(references) == 20 and references.descriptors.shape == (20, 3)
    mask = load_view(store, references.camera, reference_frame(store, SMALL_KEYPOINTS)).mask
    uv = references.uv.long()
    assert mask[uv[:, 1], uv[:, 0]].all()
    assert len({tuple(p) for p in uv.tolist()}) == 20  # distinct pixels


def test_the_reference_image_can_be_the_largest_view_of_the_object(small_dataset, visual_run):
    """--keypoints.reference-largest-of N: of frame F of the first N episodes, the one with the most object pixels
    in the camera; the references are sampled on its mask."""
    store = open_dataset(small_dataset)
    config = dataclasses.replace(SMALL_KEYPOINTS, reference_largest_of=3, reference_frame=5)
    camera = store.camera(None)
    rows = [store.episode_range(episode)[0] + 5 for episode in range(3)]
    pixels = [int(store.frames(f"{camera}/mask", row, row + 1).sum()) for row in rows]
    assert len(set(pixels)) > 1  # the views differ, so the choice means something
    expected = rows[pixels.index(max(pixels))]
    assert reference_frame(store, config) == expected
    assert reference_frame(store, dataclasses.replace(config, reference_largest_of=1)) == store.episode_range(0)[0] + 5
    net, eta = load_visual(visual_run, "last")
    with one_thread():
        references = choose_references(net, store, config, spatial=False, eta=eta)
    assert references.frame == expected
    with pytest.raises(ValueError, match=r"drop --keypoints\.reference-episode"):
        dataclasses.replace(config, reference_episode=1)


# Every frame of the dataset ranks the SDS candidates, so that the sightings below, frame by frame, are the same.
ALL_FRAMES = dataclasses.replace(SMALL_KEYPOINTS, confidence_frames=10_000)


def _sightings(net, store, references: References) -> tuple[torch.Tensor, torch.Tensor]:
    """Confidences (F, K) and world points (F, K, 3) (metres) of the references in every dataset frame."""
    confidences, points = [], []
    for frame in range(store.num_frames):
        view = load_view(store, references.camera, frame)
        descriptors = net.infer(rgb_to_tensor(view.rgb)[None])[0]
        pose, mode = view.T_world_camera, references.depth_mode
        located = locate_keypoints(
            descriptors, references.descriptors, view.depth, view.intrinsics, pose, references.eta, depth_mode=mode
        )
        confidences.append(located.confidence)
        points.append(located.points_world)
    return torch.stack(confidences), torch.stack(points)


def _greedy_pick(ranking: torch.Tensor, uv: torch.Tensor, separation: float, count: int) -> list[int]:
    """SDS by hand: candidates best-ranked first (ties: lower index), each kept unless within `separation` pixels of
    one kept before, until `count` are kept."""
    kept: list[int] = []
    for index in sorted(range(len(ranking)), key=lambda i: (-float(ranking[i]), i)):
        if all(math.dist(uv[index].tolist(), uv[other].tolist()) >= separation for other in kept):
            kept.append(index)
        if len(kept) == count:
            return kept
    raise AssertionError(f"only {len(kept)} candidates are {separation} px apart")


def _chosen_indices(chosen: References, candidates: References) -> list[int]:
    """Indices into `candidates` of the `chosen` references (matched by reference pixel), in chosen order."""
    return [int((candidates.uv == uv).all(dim=1).nonzero()) for uv in chosen.uv]


def test_sds_keeps_k_star_separated_descriptors_best_first(small_dataset, visual_run):
    """SDS is the greedy pick, by mean confidence over the frames, of candidates 3 px apart."""
    store = open_dataset(small_dataset)
    net, eta = load_visual(visual_run, "last")
    with one_thread():
        candidates = choose_references(net, store, ALL_FRAMES, spatial=False, eta=eta)
        references = choose_references(net, store, ALL_FRAMES, spatial=True, eta=eta)
        confidences, _ = _sightings(net, store, candidates)
    expected = _greedy_pick(confidences.mean(dim=0), candidates.uv, 3.0, 5)
    assert _chosen_indices(references, candidates) == expected
    torch.testing.assert_close(references.confidence, confidences.mean(dim=0)[expected])
    with pytest.raises(ValueError, match=r"apart.*lower --keypoints.min-distance-px \(now 50\)"):
        choose_references(net, store, dataclasses.replace(SMALL_KEYPOINTS, min_distance_px=50.0), spatial=True, eta=eta)


def test_sds_ranked_by_rigid_consistency_keeps_separated_descriptors(small_dataset, visual_run):
    """Ranked by rigid consistency, SDS is the greedy pick of the candidates that stray least from the rigid fit of
    all of them over the frames; it differs from the pick by confidence."""
    store = open_dataset(small_dataset)
    net, eta = load_visual(visual_run, "last")
    config = dataclasses.replace(ALL_FRAMES, sds_ranking="rigid")
    with one_thread():
        candidates = choose_references(net, store, config, spatial=False, eta=eta)
        references = choose_references(net, store, config, spatial=True, eta=eta)
        by_confidence = choose_references(net, store, ALL_FRAMES, spatial=True, eta=eta)
        confidences, points = _sightings(net, store, candidates)
    expected = _greedy_pick(-rigid_consistency(points, RIGID_RANKING_THRESHOLD_M), candidates.uv, 3.0, 5)
    assert _chosen_indices(references, candidates) == expected
    torch.testing.assert_close(references.confidence, confidences.mean(dim=0)[expected])  # recorded all the same
    assert _chosen_indices(by_confidence, candidates) != expected  # another ranking, another choice


def test_sds_keeps_only_descriptors_found_at_their_own_pixel(small_dataset, visual_run):
    """With a self-match tolerance that the unfiltered choice's worst self-matcher misses, SDS is the greedy pick
    among the candidates found within it of their own pixel, and so differs from the unfiltered choice."""
    store = open_dataset(small_dataset)
    net, eta = load_visual(visual_run, "last")
    with one_thread():
        candidates = choose_references(net, store, ALL_FRAMES, spatial=False, eta=eta)
        view = load_view(store, candidates.camera, candidates.frame)
        descriptors = net.infer(rgb_to_tensor(view.rgb)[None])[0]
        confidences, _ = _sightings(net, store, candidates)
    located = locate_keypoints(
        descriptors, candidates.descriptors, view.depth, view.intrinsics, view.T_world_camera, eta
    )
    offsets = (located.uv - candidates.uv).norm(dim=-1)  # (20,) pixels
    ranking = confidences.mean(dim=0)
    unfiltered = _greedy_pick(ranking, candidates.uv, 3.0, 5)
    worst = max(unfiltered, key=lambda i: float(offsets[i]))
    tolerance = float(offsets[offsets < offsets[worst]].max())  # the largest offset below the worst one's
    kept = torch.nonzero(offsets <= tolerance).flatten()
    expected = kept[_greedy_pick(ranking[kept], candidates.uv[kept], 3.0, 5)].tolist()
    filtered = dataclasses.replace(ALL_FRAMES, reference_tolerance_px=tolerance)
    with one_thread():
        chosen = choose_references(net, store, filtered, spatial=True, eta=eta)
        chosen_unfiltered = choose_references(net, store, ALL_FRAMES, spatial=True, eta=eta)
    assert _chosen_indices(chosen_unfiltered, candidates) == unfiltered
    assert _chosen_indices(chosen, candidates) == expected and worst not in expected
    assert bool((offsets[expected] <= tolerance).all())
    with pytest.raises(ValueError, match="own pixel"):
        config = dataclasses.replace(SMALL_KEYPOINTS, reference_tolerance_px=float(offsets.min()) / 2)
        choose_references(net, store, config, spatial=True, eta=eta)


def test_keypoints_of_a_trained_network_lie_on_the_object(small_dataset, visual_run):
    """Located 3D keypoints of a network trained for 40 steps: with the depth read at their pixels (default) they
    lie on the object's surface (90% within 1 mm, all within 2 mm of the box); with the paper's heatmap-weighted
    depth (eq. 11), within 5 mm of the box volume. An untrained network's points are far from the box.

    The expectation depth is not on the surface: a tiny network's heatmaps at 96x72 spread over the box's
    edges, so eq. 11 blends the box's depth with the table's and the points sink below its top face.
    """
    store = open_dataset(small_dataset)
    position = torch.as_tensor(store.frames("object_position"), dtype=torch.float64)
    pose = pose_matrix(position, torch.as_tensor(store.frames("object_quaternion"), dtype=torch.float64))
    half = torch.tensor(SUGAR_BOX_SIZE, dtype=torch.float64) / 2

    def box_distances(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, K) distances to the box volume (0 inside) and to its surface, metres."""
        local = ((points.double() - pose[:, None, :3, 3])[..., None, :] @ pose[:, None, :3, :3])[..., 0, :]
        outside = (local.abs() - half).clamp_min(0).norm(dim=-1)
        depth_inside = (half - local.abs()).min(dim=-1).values.clamp_min(0)
        return outside, torch.where(outside > 0, outside, depth_inside)

    trained, eta = load_visual(visual_run, "last")
    untrained = type(trained)(trained.config).eval()
    blended_config = dataclasses.replace(SMALL_KEYPOINTS, depth="expectation")
    with one_thread():
        references = choose_references(trained, store, SMALL_KEYPOINTS, spatial=True, eta=eta)
        on_surface = compute_keypoints(trained, references, store, batch_size=16, bf16=False)
        baseline = compute_keypoints(untrained, references, store, batch_size=16, bf16=False)
        blended_references = choose_references(trained, store, blended_config, spatial=True, eta=eta)
        blended = compute_keypoints(trained, blended_references, store, batch_size=16, bf16=False)
    assert references.depth_mode == "pixel" and blended_references.depth_mode == "expectation"
    torch.testing.assert_close(blended_references.descriptors, references.descriptors)
    assert on_surface.points.shape == (store.num_frames, 5, 3) and on_surface.confidence.shape == (store.num_frames, 5)
    outside, surface = box_distances(on_surface.points)
    assert outside.max() < 0.002 and surface.quantile(0.9) < 0.001
    assert box_distances(blended.points)[0].max() < 0.005
    assert box_distances(baseline.points)[0].median() > 0.05


def test_dataset_keypoints_are_cached_by_network_and_references(small_dataset, visual_run, tmp_path):
    store = open_dataset(small_dataset)
    net, eta = load_visual(visual_run, "last")
    with one_thread():
        references = choose_references(net, store, SMALL_KEYPOINTS, spatial=False, eta=eta)
        first = dataset_keypoints(net, references, store, tmp_path)
        forward = net.forward

        def refuse(*args):
            raise AssertionError("the cached keypoints were recomputed")

        net.forward = refuse
        second = dataset_keypoints(net, references, store, tmp_path)
        assert torch.equal(first.points, second.points) and torch.equal(first.confidence, second.confidence)
        net.forward = forward
        with torch.no_grad():
            net.scores[0].bias.add_(0.5)  # another checkpoint: a new cache entry
        changed = dataset_keypoints(net, references, store, tmp_path)
        assert references.depth_mode == "pixel"  # the default
        expectation = dataclasses.replace(references, depth_mode="expectation")  # located otherwise: a new entry
        blended = dataset_keypoints(net, expectation, store, tmp_path)
    assert len(list(tmp_path.glob("keypoints-*.safetensors"))) == 3
    assert not torch.equal(first.points, changed.points)
    assert not torch.equal(changed.points, blended.points)
    (tmp_path / "references").mkdir()
    expectation.save(tmp_path / "references")
    assert References.load(tmp_path / "references").depth_mode == "expectation"
    saved = tmp_path / "references" / "references.safetensors"
    damaged = bytearray(saved.read_bytes())
    damaged[-1] ^= 0x01  # one flipped bit in the last tensor's data: the file still parses
    saved.write_bytes(bytes(damaged))
    with pytest.raises(ValueError, match=r"references\.safetensors"):
        References.load(tmp_path / "references")


def test_the_keypoint_cache_knows_a_dataset_collected_anew_at_the_same_path(small_dataset, visual_run, tmp_path):
    """Same path, same settings, same length: only the frames differ (as after a re-collection by a keydyn whose
    renderer changed), and the cached keypoints of the old frames are not taken for the new ones."""
    copy = tmp_path / "data"
    shutil.copytree(small_dataset, copy)
    net, eta = load_visual(visual_run, "last")

    def refuse(*args):
        raise AssertionError("the cached keypoints were recomputed")

    with one_thread():
        references = choose_references(net, open_dataset(copy), SMALL_KEYPOINTS, spatial=False, eta=eta)
        dataset_keypoints(net, references, open_dataset(copy), tmp_path / "cache")
        forward, net.forward = net.forward, refuse
        dataset_keypoints(net, references, open_dataset(copy), tmp_path / "cache")  # the same frames: cached
        store = EpisodeStore.open(copy, "a")
        frames = store.episode(0)
        frames["action"] = frames["action"] + np.float32(0.01)
        meta = {
            name: store.episode_meta(name)[0]
            for name in store.episode_fields
            if name not in ("episode_ends", CONTENT_HASH)
        }
        store.rewrite_episode(0, frames, meta)
        store.close()
        with pytest.raises(AssertionError, match="recomputed"):  # other frames: located again
            dataset_keypoints(net, references, open_dataset(copy), tmp_path / "cache")
        net.forward = forward


def test_keypoint_weights_stay_convex_when_trained_with_the_dynamics(small_dataset, visual_run, tmp_path):
    weights = KeypointWeights(4)
    assert torch.allclose(weights.matrix.diagonal(), torch.full((4,), np.exp(2.0) / (np.exp(2.0) + 3 / 4)))
    config = TrainDynamicsConfig(
        dataset=small_dataset,
        out=tmp_path / "wsds",
        latent="wsds",
        visual_run=visual_run,
        keypoints=SMALL_KEYPOINTS,
        horizon=5,
        epochs=3,
        hidden=(32, 32),
        lr=1e-2,
        val_fraction=0.34,
        progress=False,
    )
    with one_thread():
        train_dynamics(config)
    trained = get_latent("wsds").load_trainable(config.out, "last")
    assert trained is not None and trained.alpha.shape == (5, 5)
    assert not torch.equal(trained.alpha, KeypointWeights(5).alpha)  # trained jointly
    matrix = trained.matrix
    assert torch.all(matrix >= 0) and torch.allclose(matrix.sum(dim=1), torch.ones(5))
    assert (config.out / "keypoints.png").exists()


def test_descriptor_latents_need_a_visual_run(small_dataset, tmp_path):
    with pytest.raises(ValueError, match="--visual-run"):
        TrainDynamicsConfig(dataset=small_dataset, out=tmp_path / "run", latent="sds")


@pytest.mark.slow
def test_cli_trains_sds_dynamics_and_evaluates_them(small_dataset, visual_run, tmp_path, capsys):
    from keydyn.cli import main

    run, out = tmp_path / "sds", tmp_path / "eval"
    keypoints = ["--keypoints.num-descriptors", "20", "--keypoints.min-distance-px", "3"]
    keypoints += ["--keypoints.reference-tolerance-px", "inf", "--keypoints.rigid-outlier-mm", "15"]
    train = [
        *("train-dynamics", "--dataset", str(small_dataset), "--out", str(run), "--latent", "sds"),
        *("--visual-run", str(visual_run), "--epochs", "2", "--horizon", "5", "--hidden", "32", "32"),
        *("--val-fraction", "0.34", *keypoints, "--keypoints.confidence-frames", "10", "--no-progress"),
    ]
    evaluate = ["evaluate", "--run", str(run), "--out", str(out), "--episodes", "1", "--workers", "0"]
    with one_thread():
        assert main(train) == 0
        assert main([*evaluate, "--videos", "0", *FAST_MPC, "--no-progress"]) == 0
    for name in ("references.json", "references.safetensors", "visual_network.json", "keypoints.png"):
        assert (run / name).exists(), name
    encoder = load_descriptor_encoder(run, weights=None)  # the rigid filter travels with the run
    assert encoder.rigid is not None and encoder.rigid.threshold == pytest.approx(0.015)
    assert encoder.rigid.template.shape == (5, 3)
    assert len(list((run / "keypoint_cache").glob("keypoints-*.safetensors"))) == 1
    assert not (visual_run / "keypoint_cache").exists()  # nothing is written into the visual run
    identity = json.loads((run / "visual_network.json").read_text())  # relative: the two runs move together
    assert not Path(identity["visual_run"]).is_absolute()
    assert (run / identity["visual_run"]).resolve() == visual_run.resolve()
    results = json.loads((out / "results.json").read_text())
    assert results["latent"] == "sds" and results["label"].startswith("SDS")
    assert results["episodes"][0]["steps"] > 0 and np.isfinite(results["episodes"][0]["final_position_error_cm"])
    # The run's keypoints against the true object points on the held-out episodes, as a subcommand.
    accuracy = tmp_path / "accuracy.json"
    measure = ["keypoint-accuracy", "--dataset", str(small_dataset), "--run", str(run), "--out", str(accuracy)]
    with one_thread():
        assert main(measure) == 0
    figures = json.loads(accuracy.read_text())
    assert figures["rigid_outlier_mm"] == pytest.approx(15.0) and figures["held_out_episodes"] == 1
    assert accuracy.with_suffix(".png").stat().st_size > 10_000  # the confidence of visible and occluded points
    assert 0.0 < figures["error_3d_mm_median"] < 100.0 and "machine" in figures
    assert main(["keypoint-accuracy", "--dataset", str(small_dataset)]) == 2  # neither --run nor --visual-run
    # A resumed run whose visual network changed since it started is refused (its references belong to the old one).
    (run / "visual_network.json").write_text(json.dumps({**identity, "network_sha256": "0" * 64}))
    with one_thread():
        assert main([*train, "--epochs", "3", "--resume"]) == 2
    assert "changed since" in capsys.readouterr().err


def test_keypoint_accuracy_refuses_a_dataset_the_visual_run_did_not_train_on(visual_run, tmp_path):
    """Its held-out episodes come from the visual run's seeded split, which another dataset (or the same one grown)
    would mix with the episodes it trained on."""
    from keydyn.data.collect import collect
    from keydyn.evaluation.keypoint_accuracy import KeypointAccuracyConfig, keypoint_accuracy

    from .conftest import small_collect_config

    other = collect(small_collect_config(tmp_path / "other", seed=8)).path
    with pytest.raises(ValueError, match=r"trained on other episodes than .* holds"):
        keypoint_accuracy(KeypointAccuracyConfig(dataset=other, visual_run=visual_run))


def test_keypoint_errors_measure_located_points_against_the_true_object_points(small_dataset, visual_run):
    """The reference points carried by the true object poses land on the object mask wherever they count as
    visible, and the errors of a trained network are far below those of an untrained one."""
    from keydyn.latents.descriptor.accuracy import keypoint_errors, reference_object_points
    from keydyn.vision.geometry import project, transform_points

    store = open_dataset(small_dataset)
    trained, eta = load_visual(visual_run, "last")
    untrained = type(trained)(trained.config).eval()
    frames = np.arange(store.num_frames)
    with one_thread():
        references = choose_references(trained, store, SMALL_KEYPOINTS, spatial=False, eta=eta)
        errors = keypoint_errors(trained, store, references, frames)
        baseline = keypoint_errors(untrained, store, references, frames)
    assert errors.error_3d.shape == errors.visible.shape == (store.num_frames, 20)

    points = reference_object_points(store, references)
    reference = load_view(store, references.camera, references.frame)
    uv, _ = project(transform_points(reference.T_world_object, points), reference.intrinsics, reference.T_world_camera)
    assert torch.allclose(uv, references.uv.double(), atol=1e-3)  # the reference pixels themselves
    assert errors.visible.mean() > 0.8  # top_down: the camera sees the top face unless the pusher covers it
    on_mask = []
    for frame in frames:
        view = load_view(store, references.camera, int(frame))
        uv, _ = project(transform_points(view.T_world_object, points), view.intrinsics, view.T_world_camera)
        pixel = uv.round().long()
        on_mask.append(view.mask[pixel[:, 1], pixel[:, 0]][torch.as_tensor(errors.visible[frame])])
    assert torch.cat(on_mask).float().mean() > 0.95

    summary, untrained_summary = errors.summary(), baseline.summary()
    assert summary["error_3d_mm_median"] < 0.5 * untrained_summary["error_3d_mm_median"]
    visible_errors = 1000 * errors.error_3d[errors.visible]
    assert summary["error_3d_mm_p95"] == pytest.approx(np.nanpercentile(visible_errors, 95))
    assert summary["error_3d_mm_p95"] > summary["error_3d_mm_median"]
    assert 0.0 <= summary["confidence_visible_mean"] <= 1.0
    assert 0.0 < summary["jitter_mm_median"] <= 1.5 * summary["error_3d_mm_median"]
    # the error of every visible point is bounded by its keypoint's bias plus its jitter (triangle inequality)
    bound = errors.bias()[None] + errors.jitter()
    assert np.all(errors.error_3d[errors.visible] <= bound[errors.visible] + 1e-9)
    assert errors.bias().shape == (20,) and summary["bias_mm_median"] == pytest.approx(1000 * np.median(errors.bias()))
    occluded = ~errors.visible
    assert occluded.any()  # the pusher covers the top face in some frames
    expected = 1000 * np.nanmedian(errors.error_3d[occluded])
    assert summary["error_3d_mm_median_occluded"] == pytest.approx(expected)
    assert summary["error_3d_mm_median_occluded"] > summary["error_3d_mm_median"]  # hidden points are found elsewhere
    seen, hidden = errors.confidence[errors.visible], errors.confidence[occluded]
    pairwise = (seen[:, None] > hidden[None]).mean() + 0.5 * (seen[:, None] == hidden[None]).mean()
    assert errors.rotation_error.shape == (store.num_frames,)
    fitted = errors.rotation_error[np.isfinite(errors.rotation_error)]
    assert len(fitted) > 0.9 * store.num_frames and np.all((fitted >= 0) & (fitted <= 180))
    assert summary["confidence_visibility_auc"] == pytest.approx(pairwise)


def test_rotation_error_finds_keypoints_found_on_the_object_turned_about():
    """The angle of the rigid fit of the true points onto the located ones, whatever the object's pose: 0 deg for
    the truth, displaced or with a keypoint missing; a few deg for jitter; 60 deg for the keypoints turned 60 deg;
    180 deg for a box's keypoints found on the box turned about (a flip); NaN where the located keypoints fix no
    rotation (fewer than 3, or on one line)."""
    from keydyn.latents.descriptor.accuracy import rotation_error_deg

    generator = torch.Generator().manual_seed(0)
    # object points: three on the box's long axis, two off it
    points = torch.tensor(
        [[0.0, 0.08, 0.02], [0.0, 0.0, 0.02], [0.0, -0.08, 0.02], [0.04, 0.05, -0.02], [-0.04, -0.06, 0.0]],
        dtype=torch.float64,
    )
    quaternion = torch.tensor([0.9, 0.1, -0.2, 0.3], dtype=torch.float64)
    pose = pose_matrix(torch.tensor([0.1, -0.05, 0.05], dtype=torch.float64), quaternion / quaternion.norm())

    def placed(rotation: torch.Tensor, shift: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> torch.Tensor:
        """The object points turned by `rotation` in the object frame, then posed and shifted (world)."""
        return (points @ rotation.T) @ pose[:3, :3].T + pose[:3, 3] + torch.tensor(shift, dtype=torch.float64)

    def about_z(degrees: float) -> torch.Tensor:
        c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
        return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)

    truth = placed(torch.eye(3, dtype=torch.float64)).expand(8, -1, -1).clone()
    located = truth.clone()
    located[1] += 0.002 * torch.randn(5, 3, generator=generator, dtype=torch.float64)
    located[2] = placed(torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=torch.float64)))  # 180 deg about y
    located[3] = placed(torch.eye(3, dtype=torch.float64), (0.03, -0.02, 0.01))
    located[4] = placed(about_z(60.0))
    located[5, 0] = math.nan
    located[6, :3] = math.nan  # two keypoints left
    located[7, 3:] = math.nan  # the three on one line left
    angles = rotation_error_deg(truth, located)
    for frame in (0, 3, 5):
        assert angles[frame] == pytest.approx(0.0, abs=1e-4)
    assert 0.0 < angles[1] < 5.0
    assert angles[4] == pytest.approx(60.0, abs=1e-6)
    assert angles[2] == pytest.approx(180.0, abs=1e-3)
    assert torch.isnan(angles[6:]).all()
    assert rotation_error_deg(truth[:0], located[:0]).shape == (0,)


def test_confidence_auc_counts_the_pairs_a_threshold_orders():
    """The visibility AUC of confidence is the fraction of (visible, occluded) pairs in which the visible
    sighting is more confident, ties counting half."""
    from keydyn.latents.descriptor.accuracy import confidence_auc

    assert confidence_auc(np.array([0.9, 0.8]), np.array([0.1, 0.2, 0.3])) == 1.0
    assert confidence_auc(np.array([0.1]), np.array([0.5, 0.6])) == 0.0
    assert confidence_auc(np.array([0.5, 0.7]), np.array([0.5, 0.6])) == pytest.approx((0.5 + 0 + 1 + 1) / 4)
    rng = np.random.default_rng(0)
    seen, hidden = rng.integers(0, 20, 300) / 20, rng.integers(0, 20, 200) / 20  # many ties
    pairwise = (seen[:, None] > hidden[None]).mean() + 0.5 * (seen[:, None] == hidden[None]).mean()
    assert confidence_auc(seen, hidden) == pytest.approx(pairwise)


def test_fused_cameras_locate_alike_in_the_dataset_and_at_control_time(small_dataset, visual_run, tmp_path):
    """--keypoints.fuse-cameras: the references are located in both cameras; the dataset keypoints are the
    confidence-weighted mean of each camera's own, and the control-time encoder gives the same latent."""
    from keydyn.latents.descriptor.encoder import DescriptorEncoder
    from keydyn.latents.descriptor.fusion import fuse_keypoints
    from keydyn.vision.keypoints import Keypoints

    store = open_dataset(small_dataset)
    first, second = list(store.attrs["cameras"])
    net, eta = load_visual(visual_run, "last")
    fused_config = dataclasses.replace(SMALL_KEYPOINTS, fuse_cameras=True)
    with one_thread():
        single = choose_references(net, store, SMALL_KEYPOINTS, spatial=True, eta=eta)
        references = choose_references(net, store, fused_config, spatial=True, eta=eta)
        fused = compute_keypoints(net, references, store, batch_size=16, bf16=False)
        per_camera = [
            compute_keypoints(net, dataclasses.replace(single, camera=camera), store, batch_size=16, bf16=False)
            for camera in (first, second)
        ]
        cached = dataset_keypoints(net, references, store, tmp_path)
        dataset_keypoints(net, single, store, tmp_path)
    assert single.fused_cameras == () and single.cameras == (first,)
    assert references.camera == first and references.fused_cameras == (second,)
    torch.testing.assert_close(references.descriptors, single.descriptors)  # SDS chooses in the first camera
    references.save(tmp_path)
    assert References.load(tmp_path).cameras == (first, second)
    assert len(list(tmp_path.glob("keypoints-*.safetensors"))) == 2  # fused and single are cached apart
    torch.testing.assert_close(cached.points, fused.points)
    views = [Keypoints(None, None, None, keypoints.points, keypoints.confidence) for keypoints in per_camera]
    info = store.attrs["cameras"][first]
    expected = fuse_keypoints(views, torch.tensor(info["intrinsics"]), torch.tensor(info["pose"]))
    torch.testing.assert_close(fused.points, expected.points_world)
    assert not torch.allclose(fused.points, per_camera[0].points)

    frame = 5
    observation = {"pusher_position": store.frames("pusher_position", frame, frame + 1)[0]}
    for camera in (first, second):
        observation[f"{camera}/rgb"] = store.frames(f"{camera}/rgb", frame, frame + 1)[0]
        observation[f"{camera}/depth"] = store.frames(f"{camera}/depth", frame, frame + 1)[0]
        observation[f"{camera}/intrinsics"] = np.asarray(store.attrs["cameras"][camera]["intrinsics"])
        observation[f"{camera}/pose"] = np.asarray(store.attrs["cameras"][camera]["pose"])
    with one_thread():
        latent = DescriptorEncoder(net, references).encode(observation, {})
    np.testing.assert_allclose(latent[:-2], fused.points[frame].flatten().numpy(), atol=1e-5)
    del observation[f"{second}/rgb"]
    with pytest.raises(ObservationError, match=f"has no {second}/rgb .*; give {second}/rgb"):
        DescriptorEncoder(net, references).encode(observation, {})

    # cameras of different image sizes are located one by one, with the same result
    images = {
        camera: (
            torch.from_numpy(observation.get(f"{camera}/rgb", store.frames(f"{camera}/rgb", frame, frame + 1)[0]))[
                None
            ],
            torch.from_numpy(store.frames(f"{camera}/depth", frame, frame + 1)),
            torch.tensor(store.attrs["cameras"][camera]["intrinsics"]),
            torch.tensor(store.attrs["cameras"][camera]["pose"]),
        )
        for camera in (first, second)
    }
    rgb, depth, intrinsics, pose = images[second]
    images[second] = (rgb[:, :56, :80], depth[:, :56, :80], intrinsics, pose)  # a top-left crop keeps K
    with one_thread():
        mixed = locate_references(net, references, images, bf16=False)
        alone = [
            locate_references(net, dataclasses.replace(single, camera=camera), {camera: images[camera]}, bf16=False)
            for camera in (first, second)
        ]
    expected = fuse_keypoints(alone, images[first][2], images[first][3])
    torch.testing.assert_close(mixed.points_world, expected.points_world)

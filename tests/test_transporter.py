"""The Transporter baselines: the network, the input crops, `keydyn train-transporter` runs and the transporter3d /
transporter2d latents, on real rendered frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.nn import functional

from keydyn.data.collect import collect
from keydyn.data.store import EpisodeStore
from keydyn.dynamics.train import TrainDynamicsConfig, train_dynamics
from keydyn.evaluation.evaluate import EvaluateConfig, evaluate
from keydyn.latents import get_latent
from keydyn.latents.transporter import TransporterEncoder, locate
from keydyn.presets import from_preset
from keydyn.runs import store_task
from keydyn.sim.config import SUGAR_BOX_SIZE
from keydyn.sim.observations import ObservationError
from keydyn.vision.geometry import project
from keydyn.vision.transporter import (
    TransporterNet,
    TransporterNetConfig,
    check_masks,
    full_image_pixels,
    gaussian_maps,
    prepare_images,
    spatial_softmax,
    to_network_range,
)
from keydyn.vision.transporter_train import TrainTransporterConfig, load_transporter, prepare_frames, train_transporter

from .conftest import small_collect_config
from .vision_fixtures import camera, cast, object_box, one_thread, render, table, yaw_pose


def _config(dataset, out, **overrides) -> TrainTransporterConfig:
    return from_preset(
        TrainTransporterConfig, "train-transporter", "tiny", dataset=dataset, out=out, progress=False, **overrides
    )


@pytest.fixture(scope="module")
def transporter_run(small_dataset, tmp_path_factory):
    with one_thread():
        return train_transporter(_config(small_dataset, tmp_path_factory.mktemp("transporter") / "run"))


# -- the network ------------------------------------------------------------------------------------------
def test_keypoints_lie_in_the_square_and_gaussian_maps_peak_at_them():
    generator = torch.Generator().manual_seed(0)
    keypoints = spatial_softmax(5.0 * torch.randn(4, 6, 16, 16, generator=generator))
    assert keypoints.shape == (4, 6, 2) and keypoints.abs().max() <= 1.0
    one_hot = torch.full((1, 1, 16, 16), -1e4)
    one_hot[0, 0, 3, 12] = 0.0  # row 3, column 12
    grid = torch.linspace(-1, 1, 16)
    assert torch.allclose(spatial_softmax(one_hot)[0, 0], torch.stack([grid[12], grid[3]]))
    maps = gaussian_maps(keypoints, 16, 16, inverse_std=10.0)
    assert maps.shape == (4, 6, 16, 16) and maps.max() <= 1.0
    peak = maps.flatten(2).argmax(dim=-1)  # the grid cell nearest each keypoint
    nearest_x = (grid[None, None] - keypoints[..., :1]).abs().argmin(dim=-1)
    nearest_y = (grid[None, None] - keypoints[..., 1:]).abs().argmin(dim=-1)
    assert torch.equal(peak, nearest_y * 16 + nearest_x)
    on_cell = gaussian_maps(torch.stack([grid[12], grid[3]]).view(1, 1, 2), 16, 16, 10.0)
    assert on_cell[0, 0, 3, 12] == 1.0 and on_cell[0, 0, 3, 13] == pytest.approx(
        np.exp(-((2 / 15) ** 2) * 100), rel=1e-5
    )


@pytest.mark.parametrize("crop", ["mask", "full"])
def test_training_reconstructs_a_real_pair_better(small_dataset, crop):
    store = EpisodeStore.open(small_dataset)
    images, _ = prepare_frames(store, "top_down", crop, 64)
    start, stop = store.episode_range(0)
    source, target = to_network_range(images[[start, start + 1]]), to_network_range(images[[stop - 1, stop - 2]])
    with one_thread():
        torch.manual_seed(0)
        net = TransporterNet(TransporterNetConfig(width=8))
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)

        def error() -> float:
            with torch.no_grad():
                return float(functional.mse_loss(net(source, target)[0], target))

        before = error()
        for _ in range(15):
            loss = functional.mse_loss(net(source, target)[0], target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        assert error() < 0.5 * before


def _spot_image(
    u: int, v: int, distractor: bool, height: int = 72, width: int = 96
) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, H, W, 3) image black but for a 3x3 white spot centred on pixel (u, v) (and a larger one inside the mask
    crop's square but off the mask, when `distractor`), and a (1, H, W) rectangular object mask around (u, v)
    (off-centre, so the crop is not the image's)."""
    rgb = torch.zeros(1, height, width, 3, dtype=torch.uint8)
    rgb[0, v - 1 : v + 2, u - 1 : u + 2] = 255
    if distractor:
        rgb[0, 38:44, 45:49] = 255  # in the crop's square, off the mask: the mask crop zeroes it
    mask = torch.zeros(1, height, width, dtype=torch.uint8)
    mask[0, 30:61, 50:71] = 1
    return rgb, mask


@pytest.mark.parametrize("crop", ["mask", "full"])
def test_crops_map_keypoints_back_to_full_image_pixels(crop):
    u, v = 63, 52
    rgb, mask = _spot_image(u, v, distractor=crop == "mask")
    prepared = prepare_images(rgb, mask, crop, 64)
    if crop == "mask":
        assert prepared.boxes[0].tolist() == [45.0, 30.0, 31.0, 31.0]  # the square around the 21 x 31 mask
    else:
        assert prepared.boxes[0].tolist() == [0.0, 0.0, 96.0, 72.0]
    brightness = prepared.images.float().mean(dim=1, keepdim=True)
    logits = 0.5 * functional.avg_pool2d(brightness, 4)  # a keypointer that finds the spot on the 16 x 16 grid
    pixels = full_image_pixels(spatial_softmax(logits), prepared.boxes, 16)
    assert torch.allclose(pixels[0, 0], torch.tensor([u, v], dtype=torch.float64), atol=1.5)


def test_the_mask_crop_refuses_masks_without_the_object_or_of_another_size():
    """An empty mask would crop the whole image's centre, zeroed: keypoints that look fine and mean nothing."""
    rgb, mask = _spot_image(63, 52, distractor=False)
    batch, masks = rgb.repeat(3, 1, 1, 1), mask.repeat(3, 1, 1)
    masks[1] = 0
    with pytest.raises(ValueError, match=r"1 object masks have no object pixel \(rows 1\)"):
        prepare_images(batch, masks, "mask", 64)
    assert prepare_images(batch, masks, "full", 64).images.shape == (3, 3, 64, 64)  # the whole image reads no mask
    with pytest.raises(ValueError, match=r"data/top_down, camera top_down: .* \(rows 101\).*--crop full"):
        check_masks(masks, batch.shape[:3], first_row=100, where="data/top_down, camera top_down")
    with pytest.raises(ValueError, match="object masks of shape"):
        prepare_images(batch, mask.repeat(3, 1, 1)[:, :-1], "mask", 64)


# -- training runs ----------------------------------------------------------------------------------------
def test_train_transporter_resumes_bit_for_bit(small_dataset, tmp_path, capsys):
    with one_thread():
        whole = train_transporter(_config(small_dataset, tmp_path / "whole", epochs=3))
        part = train_transporter(_config(small_dataset, tmp_path / "part", epochs=1))
        assert json.loads((part / "last.json").read_text())["epoch"] == 1
        train_transporter(_config(small_dataset, part, epochs=3, resume=True))
    a, b = load_file(str(whole / "last.safetensors")), load_file(str(part / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert (whole / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    assert (whole / "best.json").read_text() == (part / "best.json").read_text()
    assert (whole / "keypoints.png").stat().st_size > 0 and (whole / "reconstructions.png").stat().st_size > 0
    with pytest.raises(ValueError, match="already exists"):
        train_transporter(_config(small_dataset, whole))
    finished = (whole / "last.safetensors").read_bytes()
    capsys.readouterr()
    stored = (whole / "config.json").read_text()
    train_transporter(_config(small_dataset, whole, epochs=3, resume=True))  # a finished run: nothing to train
    assert f"{whole} has finished its 3 epochs" in capsys.readouterr().err
    with pytest.raises(ValueError, match="has trained 3 epochs, more than the 2 asked for, and a run cannot be cut"):
        train_transporter(_config(small_dataset, whole, epochs=2, resume=True))  # its best may be of epoch 3
    assert (whole / "config.json").read_text() == stored
    assert (whole / "last.safetensors").read_bytes() == finished
    assert (whole / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="--camera 'nowhere'"):
        train_transporter(_config(small_dataset, tmp_path / "c", camera="nowhere"))


def _tracking_miss(store: EpisodeStore, points: np.ndarray) -> np.ndarray:
    """(M,) per point of `points` (N frames, M points, world xy): median over the frames where the box has moved
    more than 2 cm since its episode's first frame of |point displacement - box displacement|, over the median box
    displacement. 0: the point moves with the box; 1: it stays where it was."""
    starts = [store.episode_range(e) for e in range(store.num_episodes)]
    first = np.concatenate([np.full(stop - start, start) for start, stop in starts])
    box = store.frames("object_position")[:, :2]
    box_moved = box - box[first]
    moved = np.linalg.norm(box_moved, axis=-1) > 0.02
    miss = np.linalg.norm((points - points[first])[moved] - box_moved[moved, None], axis=-1)
    return np.median(miss, axis=0) / np.median(np.linalg.norm(box_moved[moved], axis=-1))


def _keypoints_xy(store: EpisodeStore, run) -> np.ndarray:
    """(N, 6, 2) world xy of the Transporter's keypoints in every frame (the transporter3d latent), metres."""
    config = TrainDynamicsConfig(out=run / "dynamics", latent="transporter3d", dataset=store.path, transporter_run=run)
    return get_latent("transporter3d").dataset_latents(store, config, run)[:, :18].reshape(-1, 6, 3)[..., :2]


def test_a_diverging_run_stops_before_a_checkpoint_takes_its_loss_in(small_dataset, tmp_path):
    with one_thread(), pytest.raises(ValueError, match=r"training loss is (nan|inf) at epoch 1: training diverged"):
        train_transporter(_config(small_dataset, tmp_path / "run", epochs=2, lr=1e30))
    assert not (tmp_path / "run" / "last.json").exists() and not (tmp_path / "run" / "best.json").exists()


def test_a_briefly_trained_transporters_keypoints_move_with_the_box(tmp_path):
    """On the whole image (no crop that follows the box), 320 steps of a width-16 net on 8 pushing episodes put a
    keypoint on the box: it follows the box's displacement, where every keypoint of the net after one step stays
    put. The pusher, which moves before the box does, does not pass for the box."""
    dataset = tmp_path / "data"
    store = collect(small_collect_config(dataset, episodes=8, steps=20))
    settings = {"crop": "full", "lr": 1e-3, "network": TransporterNetConfig(width=16)}
    with one_thread():
        one_step = train_transporter(_config(dataset, tmp_path / "one_step", epochs=1, pairs_per_epoch=8, **settings))
        trained = train_transporter(_config(dataset, tmp_path / "trained", epochs=40, pairs_per_epoch=64, **settings))
        before, after = (
            _tracking_miss(store, _keypoints_xy(store, one_step)),
            _tracking_miss(store, _keypoints_xy(store, trained)),
        )
    assert _tracking_miss(store, store.frames("pusher_position")[:, None, :2])[0] > 0.8  # measured: 1.07
    assert before.min() > 0.8  # a box moved 2-27 cm; the keypoints of one training step did not follow it
    assert after.min() < 0.3  # measured: 0.24 (seeds 1-3 of the net: 0.13, 0.14, 0.13)


# -- latents ----------------------------------------------------------------------------------------------
def test_latents_are_world_points_near_the_object_and_image_coordinates(small_dataset, transporter_run, tmp_path):
    store = EpisodeStore.open(small_dataset)
    settings = {"dataset": small_dataset, "transporter_run": transporter_run}
    latents_3d = get_latent("transporter3d").dataset_latents(
        store, TrainDynamicsConfig(out=tmp_path / "a", latent="transporter3d", **settings), tmp_path
    )
    latents_2d = get_latent("transporter2d").dataset_latents(
        store, TrainDynamicsConfig(out=tmp_path / "b", latent="transporter2d", **settings), tmp_path
    )
    assert latents_3d.shape == (store.num_frames, 20) and latents_2d.shape == (store.num_frames, 14)
    pusher = store.frames("pusher_position")
    assert np.array_equal(latents_3d[:, -2:], pusher) and np.array_equal(latents_2d[:, -2:], pusher)
    points = latents_3d[:, :18].reshape(-1, 6, 3)
    assert np.abs(latents_2d[:, :12]).max() <= 1.0
    # The mask crop keeps the keypoints on the box's square: within its half-diagonal of the box, on the table.
    centre = store.frames("object_position")[:, None, :2]
    assert np.linalg.norm(points[..., :2] - centre, axis=-1).max() < np.linalg.norm(SUGAR_BOX_SIZE) / 2 + 0.01
    assert points[..., 2].min() > -0.005 and points[..., 2].max() < SUGAR_BOX_SIZE[2] + 0.01
    # The 3D points project back onto the 2D keypoints' pixels.
    camera = store.attrs["cameras"]["top_down"]
    uv, _ = project(
        torch.as_tensor(points, dtype=torch.float64),
        torch.tensor(camera["intrinsics"], dtype=torch.float64),
        torch.tensor(camera["pose"], dtype=torch.float64),
    )
    xy = (uv + 0.5) / torch.tensor([camera["width"], camera["height"]]) * 2 - 1
    assert np.allclose(
        xy.numpy(), latents_2d[:, :12].reshape(-1, 6, 2), atol=2.5 / camera["width"]
    )  # rounded pixel's depth
    assert get_latent("transporter3d").augmentable and not get_latent("transporter2d").augmentable
    assert get_latent("transporter2d").cost_part(14) == slice(0, 12)
    model = load_transporter(transporter_run)
    frame = {name: store.frames(name, 5, 6)[0] for name in ("top_down/rgb", "top_down/mask", "top_down/depth")}
    observation = {
        **frame,
        "top_down/intrinsics": np.array(camera["intrinsics"]),
        "top_down/pose": np.array(camera["pose"]),
        "pusher_position": pusher[5],
    }
    task = store_task(store)
    encoded = TransporterEncoder(model, lift=True, image_size=(task.width, task.height)).encode(observation, {})
    assert np.allclose(encoded, latents_3d[5], atol=1e-5)  # the control-time encoder computes the dataset's latents
    rgb_only = {key: observation[key] for key in ("top_down/rgb", "top_down/mask", "pusher_position")}
    encoded_2d = TransporterEncoder(model, lift=False, image_size=(task.width, task.height)).encode(rgb_only, {})
    assert np.allclose(encoded_2d, latents_2d[5], atol=1e-5)  # 2D reads no depth, intrinsics or pose
    with pytest.raises(ObservationError, match="top_down/depth"):
        TransporterEncoder(model, lift=True).encode(rgb_only, {})
    for bad_mask, problem in (
        (np.zeros_like(frame["top_down/mask"]), "has no object pixel"),
        (frame["top_down/mask"][:-1], "has shape"),
    ):
        with pytest.raises(ObservationError, match=problem):
            TransporterEncoder(model, lift=False).encode({**rgb_only, "top_down/mask": bad_mask}, {})
    del observation["top_down/mask"]
    with pytest.raises(ValueError, match="top_down/mask"):
        TransporterEncoder(model, lift=False).encode(observation, {})
    assert (
        locate(
            model,
            torch.as_tensor(frame["top_down/rgb"])[None],
            None if model.crop == "full" else torch.as_tensor(frame["top_down/mask"])[None],
        ).points_world
        is None
    )


def test_3d_lifting_is_exact_on_a_synthetic_scene(transporter_run):
    """A camera looking straight down at a box above a table (independent ray casting, tests/vision_fixtures.py),
    three frames in one batch with the box at three heights. Each keypoint is lifted with the depth of the pixel it
    lies in (the original's rounding), read from its own frame; where that pixel and the keypoint's sub-pixel
    position see the same depth (the table's and the box's tops face the camera), the lifted point is exactly the
    surface point under the keypoint, wherever the trained network puts it."""
    cam = camera((0.02, -0.01, 0.8), (0.02, -0.01, 0.0), width=96, height=72, fx=110.0, fy=108.0, up=(0, 1, 0))
    scenes = [
        [table(), object_box(yaw_pose(x, y, z, yaw))]
        for x, y, z, yaw in [(0.03, 0.0, 0.03, 0.4), (-0.06, 0.05, 0.1, -1.1), (0.1, -0.07, 0.2, 2.0)]
    ]
    views = [render(cam, boxes) for boxes in scenes]
    model = load_transporter(transporter_run)
    located = locate(
        model,
        torch.stack([view.rgb for view in views]),
        torch.stack([view.mask for view in views]),
        torch.stack([view.depth for view in views]),
        views[0].intrinsics,
        views[0].T_world_camera,
    )
    lifted_on_one_surface = 0
    for boxes, pixels, points in zip(scenes, located.pixels.numpy(), located.points_world.numpy(), strict=True):
        depth, _, hits = cast(cam, boxes, pixels)
        depth_of_pixel, _, _ = cast(cam, boxes, np.round(pixels))
        uv, z = cam.project(points)
        np.testing.assert_allclose(uv, pixels, atol=1e-9)
        np.testing.assert_allclose(z, depth_of_pixel, atol=1e-6)  # float32 depth image
        same = np.abs(depth - depth_of_pixel) < 1e-9  # not so on a side face, or across an edge
        lifted_on_one_surface += same.sum()
        np.testing.assert_allclose(points[same], hits[same], atol=1e-6)
    assert lifted_on_one_surface >= located.pixels.shape[0] * located.pixels.shape[1] // 2


def test_transporter_latents_need_a_transporter_run(small_dataset, transporter_run, tmp_path):
    with pytest.raises(ValueError, match="--transporter-run"):
        TrainDynamicsConfig(dataset=small_dataset, out=tmp_path / "a", latent="transporter3d")
    with pytest.raises(ValueError, match="--transporter-run is only used by the latents transporter3d, transporter2d"):
        TrainDynamicsConfig(dataset=small_dataset, out=tmp_path / "b", transporter_run=transporter_run)


@pytest.mark.parametrize("latent", ["transporter3d", "transporter2d"])
def test_dynamics_on_transporter_latents_train_and_evaluate(small_dataset, transporter_run, tmp_path, latent):
    config = TrainDynamicsConfig(
        dataset=small_dataset,
        out=tmp_path / "run",
        latent=latent,
        transporter_run=transporter_run,
        horizon=4,
        epochs=2,
        hidden=(32, 32),
        val_fraction=0.34,
        progress=False,
    )
    run = train_dynamics(config)
    assert (run / "transporter_network.json").exists()
    evaluate_config = from_preset(
        EvaluateConfig, "evaluate", "tiny", run=run, out=tmp_path / "eval", episodes=1, workers=0, progress=False
    )
    results = evaluate(evaluate_config)
    assert results["latent"] == latent and results["label"].startswith(get_latent(latent).label)
    assert all(row["steps"] > 0 and np.isfinite(row["final_position_error_cm"]) for row in results["episodes"])


def test_a_dynamics_run_is_not_reused_on_a_transporter_trained_since(small_dataset, transporter_run, tmp_path, capsys):
    """A finished dynamics run whose Transporter trained further (`--transporter fast`, then `plateau`) is refused
    by train-dynamics --resume, and `keydyn reproduce` trains it anew on the current network."""
    import shutil

    from keydyn.evaluation.reproduce import ReproduceConfig, stage_dynamics
    from keydyn.latents import SourceChangedError
    from keydyn.latents.descriptor.dataset import network_hash

    network = shutil.copytree(transporter_run, tmp_path / "transporter")
    config = from_preset(ReproduceConfig, "reproduce", "tiny", out=tmp_path / "repro", progress=False)
    with one_thread():
        run = stage_dynamics(config, "transporter2d@full", 0, small_dataset, None, network)
        trained_with = json.loads((run / "transporter_network.json").read_text())["network_sha256"]
        train_transporter(_config(small_dataset, network, epochs=4, resume=True))
        assert json.loads((network / "best.json").read_text())["epoch"] > 2  # the best network changed
        settings = {"dataset": small_dataset, "out": run, "latent": "transporter2d", "transporter_run": network}
        again = from_preset(TrainDynamicsConfig, "train-dynamics", "tiny", **settings, resume=True, progress=False)
        with pytest.raises(SourceChangedError, match=r"changed since .* was trained; train the dynamics anew"):
            train_dynamics(again)  # finished: it would otherwise be taken as it is
        capsys.readouterr()
        assert stage_dynamics(config, "transporter2d@full", 0, small_dataset, None, network) == run
    assert "training " + str(run) + " anew" in capsys.readouterr().err
    now = json.loads((run / "transporter_network.json").read_text())["network_sha256"]
    assert now != trained_with and now == network_hash(load_transporter(network, "best").net)

"""Descriptor training: training pairs, pictures, and `keydyn train-visual` runs (loadable, learning, resumable)."""

from __future__ import annotations

import json
import shutil

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from keydyn.data.store import EpisodeStore
from keydyn.vision.geometry import invert_transform, transform_points, unproject_to_world
from keydyn.vision.network import DescriptorNet, DescriptorNetConfig, rgb_to_tensor
from keydyn.vision.pairs import PairConfig, PairSampler
from keydyn.vision.pictures import descriptor_colours
from keydyn.vision.train import TrainVisualConfig, load_descriptor_net, train_visual
from keydyn.vision.views import load_view

from .vision_fixtures import one_thread

TINY = DescriptorNetConfig("resnet18", 3, "strided", 8, width=8)


def _config(dataset, out, **overrides) -> TrainVisualConfig:
    values = {
        "dataset": dataset,
        "out": out,
        "network": TINY,
        "steps": 4,
        "validate_every": 2,
        "val_fraction": 0.34,
        "val_pairs": 4,
        "progress": False,
        **overrides,
    }
    return TrainVisualConfig(**values)


def _single_camera_copy(dataset, out):
    """A copy of `dataset` that has only its top_down camera."""
    shutil.copytree(dataset, out)
    store = EpisodeStore.open(out, "a")
    store.update_attrs({"cameras": {"top_down": store.attrs["cameras"]["top_down"]}})
    return out


# -- pairs and pictures -----------------------------------------------------------------------------------
def test_pairs_are_seeded_and_of_the_asked_kind(small_dataset):
    store = EpisodeStore.open(small_dataset)
    episodes = np.array([0, 2])
    cross = PairSampler(store, episodes, PairConfig(num_matches=30, time_fraction=0.0))
    batch = cross.sample_batch(3, torch.Generator().manual_seed(0))
    assert batch.rgb.shape == (6, 3, 72, 96) and batch.mask.shape == (6, 72, 96) and len(batch) == 3
    assert batch.matches.uv_a.shape == (3, 30, 2) and batch.points_b.shape == (3, 30, 3)
    assert batch.matches.valid.sum(dim=1).min() >= PairConfig().min_matches
    again = cross.sample_batch(3, torch.Generator().manual_seed(0))
    assert torch.equal(batch.rgb, again.rgb) and torch.equal(batch.matches.uv_b, again.matches.uv_b)
    for seed in range(4):
        pair = cross.sample(torch.Generator().manual_seed(seed))
        assert not torch.equal(pair.view_a.T_world_camera, pair.view_b.T_world_camera)  # two cameras
        assert torch.equal(pair.view_a.T_world_object, pair.view_b.T_world_object)  # one moment
    across = PairSampler(store, episodes, PairConfig(time_fraction=1.0))
    moved = []
    for seed in range(4):
        pair = across.sample(torch.Generator().manual_seed(seed))
        assert torch.equal(pair.view_a.T_world_camera, pair.view_b.T_world_camera)  # one camera
        moved.append(float((pair.view_a.T_world_object - pair.view_b.T_world_object).abs().max()))
    assert max(moved) > 1e-3  # two moments of a pushed object
    mixed = PairSampler(store, episodes, PairConfig())  # the default: half of the pairs across time
    kinds = [mixed.sample(torch.Generator().manual_seed(seed)) for seed in range(12)]
    same_camera = [torch.equal(pair.view_a.T_world_camera, pair.view_b.T_world_camera) for pair in kinds]
    assert 0 < sum(same_camera) < len(kinds)
    with pytest.raises(ValueError, match="no episodes"):
        PairSampler(store, np.array([], dtype=np.int64), PairConfig())


def test_episode_pairs_match_frames_of_other_episodes_through_the_object_pose(small_dataset):
    """--pairs.episode-fraction 1: frame B of every across-time pair is any frame, of any episode and from
    any camera; its matches are the object points of A carried by the two object poses."""
    store = EpisodeStore.open(small_dataset)
    episodes = np.array([0, 2])
    episode_of = {}  # the object's pose in a frame -> its episode
    for episode in episodes:
        for frame in range(*store.episode_range(int(episode))):
            episode_of[load_view(store, "top_down", frame).T_world_object.numpy().tobytes()] = int(episode)

    def episodes_of(pair):
        return tuple(episode_of[view.T_world_object.numpy().tobytes()] for view in (pair.view_a, pair.view_b))

    sampler = PairSampler(store, episodes, PairConfig(time_fraction=1.0, episode_fraction=1.0))
    pairs = [sampler.sample(torch.Generator().manual_seed(seed)) for seed in range(12)]
    seen = [episodes_of(pair) for pair in pairs]
    assert any(a != b for a, b in seen) and {b for _, b in seen} == {0, 2}
    assert any(not torch.equal(p.view_a.T_world_camera, p.view_b.T_world_camera) for p in pairs)  # any camera
    for pair in pairs:
        matches = pair.matches
        world_a = unproject_to_world(
            matches.uv_a.double(), matches.depth_a.double(), pair.view_a.intrinsics, pair.view_a.T_world_camera
        )
        moved = transform_points(pair.view_b.T_world_object @ invert_transform(pair.view_a.T_world_object), world_a)
        assert (moved - matches.points_world).norm(dim=-1).max() < 1e-6
    within = PairSampler(store, episodes, PairConfig(time_fraction=1.0))  # the default: B from A's episode
    for seed in range(12):
        a, b = episodes_of(within.sample(torch.Generator().manual_seed(seed)))
        assert a == b
    with pytest.raises(ValueError, match="time-fraction"):
        PairConfig(time_fraction=0.0, episode_fraction=0.5)


def test_episode_pairs_of_mugs_keep_to_one_mug(tmp_path):
    """On `mugs` frame B of a pair across episodes shows the same mug as frame A (the match through the pose is
    exact only on one mug's geometry): drawn from another episode of that mug, never from another mug's."""
    from keydyn.data.collect import CollectConfig, collect

    store = collect(
        CollectConfig(
            tmp_path / "mugs", "mugs", episodes=12, steps=10, seed=0, workers=1, progress=False, width=80, height=60
        )
    )
    instances = store.episode_meta("mug_instance")
    assert len(set(instances.tolist())) < len(instances)  # some mug appears in two episodes
    episode_of = {}  # the object's pose in a frame -> its episode
    for episode in range(store.num_episodes):
        for frame in range(*store.episode_range(episode)):
            episode_of[load_view(store, "top_down", frame).T_world_object.numpy().tobytes()] = episode
    sampler = PairSampler(
        store, np.arange(store.num_episodes), PairConfig(time_fraction=1.0, episode_fraction=1.0, min_matches=1)
    )
    seen = []
    for seed in range(60):
        pair = sampler.sample(torch.Generator().manual_seed(seed))
        seen.append(tuple(episode_of[view.T_world_object.numpy().tobytes()] for view in (pair.view_a, pair.view_b)))
    assert all(instances[a] == instances[b] for a, b in seen)
    assert sum(a != b for a, b in seen) >= 5  # across episodes, of one mug


def test_descriptor_colours_share_one_basis_across_images():
    generator = torch.Generator().manual_seed(0)
    descriptors = torch.randn(1, 5, 12, 16, generator=generator)
    both = torch.cat([descriptors, descriptors.flip(-1)])  # the same descriptors, mirrored
    colours = descriptor_colours(both)
    assert colours.shape == (2, 12, 16, 3) and colours.dtype == torch.uint8
    assert torch.equal(colours[1], colours[0].flip(1))  # the same descriptor gets the same colour
    assert colours.float().std() > 30
    assert descriptor_colours(torch.randn(1, 2, 4, 4, generator=generator))[..., 2].eq(0).all()  # D < 3


# -- runs ---------------------------------------------------------------------------------------------------
def test_cli_writes_a_loadable_run(small_dataset, tmp_path, capsys):
    from keydyn.cli import main

    out = tmp_path / "run"
    argv = [
        "train-visual",
        *("--dataset", str(small_dataset), "--out", str(out), "--steps", "3", "--validate-every", "2"),
        *("--val-fraction", "0.34", "--val-pairs", "3", "--network.width", "8", "--no-progress"),
    ]
    with one_thread():
        assert main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    for name in ("config.json", "task.json", "last.json", "best.json", "last_optim.pt", "last.safetensors"):
        assert (out / name).exists(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3]
    assert {"loss_total", "loss_heatmap", "loss_pixel", "loss_depth", "lr"} <= rows[0].keys()
    validated = [row for row in rows if "val_pixel_error_median" in row]
    assert [row["step"] for row in validated] == [2, 3]  # every 2 steps and at the last
    for row in validated:
        assert row["val_pixel_error_median"] >= 0 and 0 <= row["val_within_3px"] <= 1
        assert np.isfinite(row["val_error_3d_mm_median"])
        assert 0 <= row["val_confidence_hidden"] <= 1 and 0 <= row["val_confidence_matched"] <= 1
    best = json.loads((out / "best.json").read_text())
    assert best["val_pixel_error_median"] == min(row["val_pixel_error_median"] for row in validated)
    assert json.loads((out / "task.json").read_text())["name"] == "top_down"
    assert json.loads((out / "config.json").read_text())["network"]["width"] == 8
    for picture in ("descriptors.png", "heatmap.png"):
        assert iio.imread(out / picture).ndim == 3
    net = load_descriptor_net(out, "last")
    assert isinstance(net, DescriptorNet) and net.config.width == 8 and not net.training
    weights = load_file(str(out / "last.safetensors"))
    assert all(torch.equal(value, weights[name]) for name, value in net.state_dict().items())
    rgb = EpisodeStore.open(small_dataset).frames("top_down/rgb", 0, 1)
    with one_thread():
        assert net.infer(rgb_to_tensor(torch.from_numpy(rgb))).shape == (1, 3, 72, 96)
    assert main(argv) == 2  # the run exists: refused without --resume


def test_loss_falls_on_real_pairs(small_dataset, tmp_path):
    config = _config(small_dataset, tmp_path / "run", steps=30, validate_every=30, lr=1e-3, precision="fp32")
    with one_thread():
        train_visual(config)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    first = np.mean([row["loss_total"] for row in rows[:5]])
    last = np.mean([row["loss_total"] for row in rows[-5:]])
    assert last < 0.6 * first


def test_a_diverging_run_stops_before_a_checkpoint_takes_its_loss_in(small_dataset, tmp_path):
    with one_thread(), pytest.raises(ValueError, match=r"training loss is (nan|inf) at step \d: training diverged"):
        train_visual(_config(small_dataset, tmp_path / "run", steps=6, lr=1e30, precision="fp32"))
    last = tmp_path / "run" / "last.json"
    assert not last.exists() or json.loads(last.read_text())["step"] < 6


def test_init_from_starts_from_another_runs_best_weights(small_dataset, tmp_path):
    with one_thread():
        source = train_visual(_config(small_dataset, tmp_path / "source", steps=2))
        tuned = train_visual(_config(small_dataset, tmp_path / "tuned", steps=1, lr=1e-12, init_from=source))
    # the weights (batch-norm statistics move with every step, whatever the learning rate)
    start = dict(load_descriptor_net(source, "best").named_parameters())
    after = dict(load_descriptor_net(tuned, "last").named_parameters())
    for name, value in start.items():
        torch.testing.assert_close(after[name].float(), value.float(), atol=1e-5, rtol=0, msg=name)
    with one_thread():
        fresh = train_visual(_config(small_dataset, tmp_path / "fresh", steps=1, lr=1e-12))
    moved = dict(load_descriptor_net(fresh, "last").named_parameters())
    assert any(not torch.allclose(moved[name].float(), value.float(), atol=1e-5) for name, value in start.items())
    wider = DescriptorNetConfig("resnet18", 3, "strided", 8, width=16)
    with pytest.raises(ValueError, match="same --network"):
        train_visual(_config(small_dataset, tmp_path / "wider", network=wider, init_from=source))
    assert not (tmp_path / "wider").exists()  # refused before anything was written


@pytest.mark.parametrize(("variant", "precision"), [("strided", "fp32"), ("dilated", "bf16")])
def test_resume_gives_the_same_weights_as_an_uninterrupted_run(small_dataset, tmp_path, variant, precision):
    network = DescriptorNetConfig("resnet18", 3, variant, 8, width=8)  # dilated: its head's dropout draws too
    with one_thread():
        whole = train_visual(_config(small_dataset, tmp_path / "whole", network=network, precision=precision))
        part = train_visual(_config(small_dataset, tmp_path / "part", network=network, precision=precision, steps=2))
        assert json.loads((part / "last.json").read_text())["step"] == 2
        train_visual(_config(small_dataset, part, network=network, precision=precision, resume=True))
    a, b = load_file(str(whole / "last.safetensors")), load_file(str(part / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    assert (whole / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    assert (whole / "best.json").read_text() == (part / "best.json").read_text()


def test_a_run_older_than_a_setting_resumes_with_that_setting_at_its_default(small_dataset, tmp_path):
    with one_thread():
        run = train_visual(_config(small_dataset, tmp_path / "old", steps=2))
        stored = json.loads((run / "config.json").read_text())
        del stored["pairs"]["episode_fraction"], stored["loss"]["hidden_weight"]  # as written before they existed
        stored["network"]["pretrained"] = False  # as written while that (never used) setting existed
        (run / "config.json").write_text(json.dumps(stored))
        with pytest.raises(ValueError, match=r"its pairs differ"):
            train_visual(_config(small_dataset, run, steps=3, resume=True, pairs=PairConfig(episode_fraction=0.5)))
        train_visual(_config(small_dataset, run, steps=3, resume=True))
    assert json.loads((run / "last.json").read_text())["step"] == 3
    best = json.loads((run / "best.json").read_text())
    best["network"]["pretrained"] = False
    (run / "best.json").write_text(json.dumps(best))
    assert load_descriptor_net(run).config == _config(small_dataset, run).network  # old runs' networks load


def test_clear_errors(small_dataset, tmp_path):
    with pytest.raises(FileNotFoundError, match="keydyn collect"):
        train_visual(_config(tmp_path / "missing", tmp_path / "a"))
    one_camera = _single_camera_copy(small_dataset, tmp_path / "one_camera")
    with pytest.raises(ValueError, match=r"single camera.*time-fraction 1"):
        train_visual(_config(one_camera, tmp_path / "b"))
    with one_thread():  # across-time pairs need only one camera
        run = train_visual(_config(one_camera, tmp_path / "c", steps=1, pairs=PairConfig(time_fraction=1.0)))
    with pytest.raises(ValueError, match=r"already exists.*--resume"):
        train_visual(_config(one_camera, run, steps=1, pairs=PairConfig(time_fraction=1.0)))
    with pytest.raises(ValueError, match="pairs"):
        train_visual(_config(one_camera, run, steps=2, resume=True))
    with pytest.raises(FileNotFoundError, match="nothing to resume"):
        train_visual(_config(small_dataset, tmp_path / "d", resume=True))
    with pytest.raises(FileNotFoundError, match="no best checkpoint"):
        load_descriptor_net(tmp_path / "nothing")
    with pytest.raises(ValueError, match="val-fraction"):
        _config(small_dataset, tmp_path / "e", val_fraction=0.0)

"""The Autoencoder baseline (--latent autoencoder): its networks, joint training with the dynamics on the real tiny
dataset, resumption, and control from the goal image."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from keydyn.control.mpc import MPCConfig
from keydyn.control.run import control_setup
from keydyn.data.store import EpisodeStore
from keydyn.dynamics.train import (
    Objective,
    TrainDynamicsConfig,
    build_model,
    evaluate,
    load_windows,
    train_dynamics,
    train_epoch,
)
from keydyn.evaluation.evaluate import EvaluateConfig
from keydyn.evaluation.evaluate import evaluate as evaluate_run
from keydyn.latents import AutoencoderConfig, get_latent
from keydyn.latents.autoencoder import AutoencoderEncoder, AutoencoderModule, dataset_images
from keydyn.planning import CEMConfig
from keydyn.planning.base import simulate
from keydyn.vision.autoencoder import ImageDecoder, ImageEncoder, prepare_images

Z = 16  # the smallest latent the paper tried; the networks' cost does not depend on it


def _config(dataset, out, **overrides) -> TrainDynamicsConfig:
    """Tiny joint training: n = 1, H = 2, one training episode (12 frames), every window of an epoch in one batch."""
    values = {"dataset": dataset, "out": out, "latent": "autoencoder", "autoencoder": AutoencoderConfig(z_dim=Z)}
    values.update(history=1, horizon=2, hidden=(32, 32), epochs=2, batch_size=32, lr=1e-3, val_fraction=0.67)
    values.update(progress=False, **overrides)
    return TrainDynamicsConfig(**values)


def test_networks_and_images_have_the_original_shapes():
    for z_dim in (16, 32, 64):
        encoder, decoder = ImageEncoder(z_dim), ImageDecoder(z_dim)
        assert encoder(torch.randn(2, 3, 64, 64)).shape == (2, z_dim)
        images = decoder(torch.randn(2, z_dim))
        assert images.shape == (2, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    convs = [m for m in ImageEncoder(64).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [m.kernel_size[0] for m in convs] == [3, 4, 3, 4, 4, 4]
    assert [m.stride[0] for m in convs] == [1, 2, 1, 2, 2, 2]
    assert [m.out_channels for m in convs] == [64, 64, 64, 128, 256, 256]
    rgb = np.zeros((5, 72, 96, 3), np.uint8)
    rgb[..., 1] = 200
    prepared = prepare_images(rgb)
    assert prepared.shape == (5, 3, 64, 64) and prepared.dtype == torch.uint8
    assert (prepared[:, 1] == 200).all() and (prepared[:, 0] == 0).all()  # a flat image stays flat
    with pytest.raises(ValueError, match="z-dim 48: use one of 16, 32, 64"):
        AutoencoderConfig(z_dim=48)
    with pytest.raises(ValueError, match="uint8 RGB"):
        prepare_images(rgb.astype(np.float32))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_joint_training_lowers_reconstruction_and_rollout_loss(small_dataset, tmp_path, precision):
    config = _config(small_dataset, tmp_path / "run", autoencoder=AutoencoderConfig(z_dim=Z, precision=precision))
    config.out.mkdir()
    train, _ = load_windows(config)
    assert train.latents.shape[1] == Z + 2 and train.inputs.shape[1:] == (3, 64, 64)
    method = config.method
    with torch.random.fork_rng(devices=[]):  # seeded as train_dynamics seeds it, whatever ran before this test
        torch.manual_seed(config.seed + 2)
        trainable = method.trainable(train.latents.shape[1], config)
    assert trainable.precision == precision
    model = build_model(config, train, trainable)
    assert torch.equal(model.latent_std, torch.ones(Z + 2))  # the original normalises nothing
    optimizer = torch.optim.Adam([*model.parameters(), *trainable.parameters()], lr=config.lr)
    generator = torch.Generator().manual_seed(0)
    before, _, before_terms = evaluate(model, trainable, train, method, 64, torch.device("cpu"))
    for _ in range(5):
        train_epoch(Objective(model, trainable, method), optimizer, train, config, generator)
    after, _, after_terms = evaluate(model, trainable, train, method, 64, torch.device("cpu"))
    assert after_terms["reconstruction"] < 0.8 * before_terms["reconstruction"]
    assert after < before


def test_bf16_runs_the_image_networks_in_bfloat16_and_returns_float32(small_dataset):
    images = dataset_images(EpisodeStore.open(small_dataset), "top_down")[:8]
    torch.manual_seed(0)
    fp32 = AutoencoderModule(Z)
    bf16 = AutoencoderModule(Z, "bf16")
    bf16.load_state_dict(fp32.state_dict())
    with torch.no_grad():
        z, z_bf16 = fp32.encode(torch.from_numpy(images)), bf16.encode(torch.from_numpy(images))
        decoded, decoded_bf16 = fp32.decode(z), bf16.decode(z)
    assert z.dtype == z_bf16.dtype == decoded.dtype == decoded_bf16.dtype == torch.float32
    assert not torch.equal(z, z_bf16)  # bfloat16 arithmetic, not float32 under another name
    assert (z - z_bf16).abs().max() <= 0.05 * z.abs().max()  # bfloat16 keeps 8 bits of mantissa
    assert (decoded - decoded_bf16).abs().max() < 0.02  # images in [0, 1]
    assert get_latent("autoencoder").trainable(Z + 2).precision == "fp32"  # control time encodes in float32


def test_train_dynamics_resumes_bit_for_bit_and_writes_its_metrics_and_picture(small_dataset, tmp_path):
    whole = train_dynamics(_config(small_dataset, tmp_path / "whole"))
    part = train_dynamics(_config(small_dataset, tmp_path / "part", epochs=1))
    train_dynamics(_config(small_dataset, part, epochs=2, resume=True))
    a, b = load_file(str(whole / "last.safetensors")), load_file(str(part / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(k.startswith("autoencoder.encoder.") for k in a) and any(k.startswith("autoencoder.decoder.") for k in a)
    assert (whole / "metrics.jsonl").read_text() == (part / "metrics.jsonl").read_text()
    rows = [json.loads(line) for line in (whole / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        assert 0 < row["val_reconstruction"] < 1 and 0 < row["train_reconstruction"] < 1
        assert row["val_total_loss"] == row["val_loss"] + row["val_reconstruction"]
    best = json.loads((whole / "best.json").read_text())
    assert best["val_total_loss"] == min(row["val_total_loss"] for row in rows)  # the original's criterion
    assert json.loads((whole / "autoencoder.json").read_text())["camera"] == "top_down"
    picture = (whole / "reconstructions.png").read_bytes()
    assert picture[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_run_made_before_the_precision_setting_resumes_in_float32(small_dataset, tmp_path):
    """Autoencoder runs made before --autoencoder.precision trained in float32: resuming one under the new default
    (bf16) is refused, not continued in another precision; --autoencoder.precision fp32 resumes it."""
    fp32 = AutoencoderConfig(z_dim=Z, precision="fp32")
    run = train_dynamics(_config(small_dataset, tmp_path / "old", epochs=1, autoencoder=fp32))
    stored = json.loads((run / "config.json").read_text())
    del stored["autoencoder"]["precision"]
    (run / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match="its autoencoder differ"):
        train_dynamics(_config(small_dataset, run, epochs=2, resume=True))
    train_dynamics(_config(small_dataset, run, epochs=2, autoencoder=fp32, resume=True))
    assert json.loads((run / "last.json").read_text())["epoch"] == 2


def test_the_planner_drives_a_tiny_models_z_toward_a_goals(small_dataset, tmp_path):
    """From a rendered frame's z, the controller's plan ends, in the model, near the goal z that a known
    non-constant push reaches in the model (so the goal is reachable), and much nearer than standing still does."""
    run = train_dynamics(_config(small_dataset, tmp_path / "run", epochs=1))
    horizon = 5
    mpc = MPCConfig(
        planner=CEMConfig(num_samples=256, num_elites=16, iterations=8),
        grid_seed=False,  # CEM alone, from its zero-mean first distribution
        horizon=horizon,
        shrinking_horizon=False,
        precision="fp32",
    )
    setup = control_setup(run, None, "best", mpc)
    observation, info = setup.env.reset(seed=3)
    start = setup.encoder.encode(observation, info)
    setup.env.close()
    controller, model = setup.controller, setup.controller.model
    controller.reset(start, seed=0)
    initial = controller.state()[None]

    def final_z(actions: torch.Tensor) -> torch.Tensor:
        """(Z,) z after (H, 2) `actions` from `start`, stepped by the planner's own dynamics."""
        return model.current_latent(simulate(controller.dynamics, initial, actions[None])[:, -1])[0, :Z]

    generator = torch.Generator().manual_seed(0)
    pushed = torch.rand(horizon, 2, generator=generator) * 0.4 - 0.2  # m/s, off the constant-velocity grid
    goal_z = final_z(pushed)
    goal = np.concatenate([goal_z.numpy(), start[Z:]])
    still = torch.linalg.norm(final_z(torch.zeros(horizon, 2)) - goal_z)
    controller.reset(start, seed=0)
    plan = controller.plan(start, controller.goal_cost(goal), horizon)
    planned_z = model.current_latent(plan.states[-1:])[0, :Z]
    assert torch.allclose(planned_z, final_z(plan.actions), atol=1e-5)  # the plan's states are its rollout
    assert still > 0  # the goal differs from where the model goes when the pusher stands still
    assert torch.linalg.norm(planned_z - goal_z) < 0.3 * still  # pushes of seeds 0-5: 0.05-0.18


@pytest.mark.slow
def test_evaluate_encodes_the_goal_image_and_reaches_the_end(small_dataset, tmp_path):
    run = train_dynamics(_config(small_dataset, tmp_path / "run", epochs=1))
    mpc = MPCConfig(planner=CEMConfig(num_samples=32, num_elites=4, iterations=1), grid_headings=12)
    setup = control_setup(run, None, "best", mpc)
    assert isinstance(setup.encoder, AutoencoderEncoder) and setup.method is get_latent("autoencoder")
    assert setup.controller.latent_part == slice(0, Z)  # costs compare z; the pusher is free
    observation, info = setup.env.reset(seed=1)
    goal = setup.encoder.encode(observation, info)
    assert goal.shape == (Z + 2,) and goal.dtype == np.float32 and np.isfinite(goal).all()
    np.testing.assert_array_equal(goal[Z:], observation["pusher_position"].astype(np.float32))
    setup.env.close()
    settings = {"run": run, "out": tmp_path / "eval", "episodes": 1, "workers": 0, "videos": 0, "mpc": mpc}
    results = evaluate_run(EvaluateConfig(**settings, progress=False))
    assert results["latent"] == "autoencoder" and results["label"] == "Autoencoder (CEM)"
    (episode,) = results["episodes"]
    assert episode["steps"] > 0 and np.isfinite(episode["final_position_error_cm"])

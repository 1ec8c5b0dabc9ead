"""The baselines' speed on this machine: training time and per-frame encoding time of the Transporter (2D and 3D
latents, both crops) and the autoencoder, beside the descriptor network's (the peer, measured in the same run).

Training: seconds per step of each trainer's real step on rendered frames at its default settings, and the projected
time of its default schedule:
- Transporter: one Adam step on 16 pairs of 64x64 crops (`keydyn train-transporter`), bf16 and fp32; the default
  schedule is 100 epochs x 6,000 pairs (375 steps an epoch);
- autoencoder: one step of `keydyn train-dynamics --preset autoencoder`'s objective (the encoder, the dynamics'
  rollout and the decoder trained jointly) on a batch of 352 distinct frames, as at 500 episodes, projected to
  its 500 epochs over a 500-episode dataset; bf16 (the default, `--autoencoder.precision`) and fp32;
- descriptors (peer): one `keydyn train-visual` step (2 pairs at 320x240, bf16) and its 12,000 steps.
Encoding: milliseconds from one observation to its latent (`LatentEncoder.encode`, what the control loop calls)
at 320x240, for each latent method with an untrained network of the method's default shape (the time does not
depend on the weights).

    python benchmarks/baselines.py                  # 2 threads
    python benchmarks/baselines.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from keydyn.data.collect import CollectConfig, collect
from keydyn.data.store import EpisodeStore
from keydyn.dynamics.model import DynamicsMLP
from keydyn.dynamics.train import Objective, TrainDynamicsConfig
from keydyn.dynamics.windows import window_starts
from keydyn.latents import get_latent
from keydyn.latents.autoencoder import AutoencoderEncoder, AutoencoderModule
from keydyn.latents.base import PUSHER_DIM
from keydyn.latents.descriptor.encoder import DescriptorEncoder
from keydyn.latents.descriptor.references import References
from keydyn.latents.transporter import TransporterEncoder
from keydyn.machine import machine
from keydyn.presets import from_preset
from keydyn.sim.env import PushingEnv
from keydyn.vision.train import TrainVisualConfig, build_network, make_samplers, train_step
from keydyn.vision.transporter import TransporterNet, TransporterNetConfig
from keydyn.vision.transporter_train import TrainTransporterConfig, TransporterModel, make_sources, reconstruct

ROLLOUT_EPISODES = 500  # the paper-scale dataset the schedules are projected onto
EPISODES = 24  # the measuring dataset: 40-step episodes at 320x240, as `keydyn collect`'s defaults (the first 6
# of the 500 average 10 windows of 11 frames, the first 24 18, all 500 18.2: the autoencoder's projection needs 24)


def median_s(fn, repeats: int, warmup: int = 1) -> float:
    """Median wall-clock seconds of `fn()` over `repeats` calls after `warmup` untimed ones."""
    times = []
    for index in range(warmup + repeats):
        start = time.perf_counter()
        fn()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def transporter_training(dataset: Path, precision: str, repeats: int) -> dict:
    """Seconds per Transporter training step (16 pairs, mask crop) and the default schedule's hours."""
    config = from_preset(
        TrainTransporterConfig, "train-transporter", dataset=dataset, out=Path("u"), precision=precision
    )
    store = EpisodeStore.open(dataset)
    train, _ = make_sources(config, store, store.camera(None))
    torch.manual_seed(0)
    net = TransporterNet(config.network)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        first, second = train.sample(config.batch_size, generator)
        target = train.batch(second, torch.device("cpu"))
        reconstruction, _ = reconstruct(net, train.batch(first, torch.device("cpu")), target, precision)
        loss = ((reconstruction - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    seconds = median_s(step, repeats)
    steps = config.epochs * math.ceil(config.pairs_per_epoch / config.batch_size)
    return {
        "precision": precision,
        "step_s": round(seconds, 4),
        "pairs_per_s": round(config.batch_size / seconds, 1),
        "default_steps": steps,
        "default_training_h": round(steps * seconds / 3600, 2),
    }


def autoencoder_training(dataset: Path, precision: str, repeats: int) -> dict:
    """Seconds per step of the autoencoder's joint training at its preset (`keydyn train-dynamics --preset
    autoencoder`: the encoder on every distinct frame of a batch, the 10-step rollout of the 500-1000-1000-500 MLP,
    the decoder; the trainer's own `Objective`), on the batch a 500-episode dataset gives: 32 windows of n + H = 11
    frames that share no frame (at that size they almost never do), so 352 distinct 64x64 images. The validation
    pass is timed on the same batch, forward only. Steps per epoch are projected from the windows per episode of
    `dataset` (collected as `keydyn collect` does) scaled to 500 episodes. The time depends on the shapes, not on
    the pixels, so the images are random.

    (An earlier version timed whole epochs of the trainer on a 6-episode dataset and scaled them by episodes. A
    batch there holds at most the ~120 frames of its 3 training episodes, a third of the 352 at scale, so it
    projected 12.6 h where a step-based projection gives days.)"""
    config = from_preset(TrainDynamicsConfig, "train-dynamics", "autoencoder", dataset=dataset, out=Path("u"))
    config = dataclasses.replace(config, autoencoder=dataclasses.replace(config.autoencoder, precision=precision))
    method = get_latent("autoencoder")
    frames = config.history + config.horizon
    latent_dim = config.autoencoder.z_dim + PUSHER_DIM
    torch.manual_seed(0)
    model = DynamicsMLP(latent_dim, config.history, config.hidden)
    objective = Objective(model, method.trainable(latent_dim, config), method)
    optimizer = torch.optim.Adam(objective.parameters(), lr=config.lr)
    batch = config.batch_size
    images = torch.randint(0, 256, (batch * frames, 3, 64, 64), dtype=torch.uint8)
    rows = torch.arange(batch * frames).reshape(batch, frames)
    latents = torch.rand(batch, frames, latent_dim)
    actions = torch.rand(batch, frames - 1, PUSHER_DIM)  # pusher velocities, one per transition

    def step() -> None:
        loss, terms = objective(latents, actions, (images, rows))
        optimizer.zero_grad(set_to_none=True)
        (loss + sum(terms.values())).backward()
        optimizer.step()

    def validate() -> None:
        with torch.no_grad():
            objective(latents, actions, (images, rows))

    step_s, validate_s = median_s(step, repeats), median_s(validate, repeats)
    store = EpisodeStore.open(dataset)
    windows_per_episode = len(window_starts(store.episode_ends, np.arange(store.num_episodes), frames)) / (
        store.num_episodes
    )
    windows = ROLLOUT_EPISODES * windows_per_episode
    train_steps = math.ceil(windows * (1 - config.val_fraction) / batch)
    val_steps = math.ceil(windows * config.val_fraction / batch)
    epoch_s = train_steps * step_s + val_steps * validate_s
    return {
        "precision": precision,
        "z_dim": config.autoencoder.z_dim,
        "distinct_frames_per_batch": batch * frames,
        "step_s": round(step_s, 3),
        "validation_step_s": round(validate_s, 3),
        "steps_per_epoch_500_episodes": train_steps,
        "epoch_min_500_episodes": round(epoch_s / 60, 1),
        "default_epochs": config.epochs,
        "default_training_h_500_episodes": round(config.epochs * epoch_s / 3600, 1),
    }


def descriptor_training(dataset: Path, repeats: int) -> dict:
    """The peer: seconds per `keydyn train-visual` step (bf16, 2 pairs at 320x240) and its default schedule."""
    config = from_preset(TrainVisualConfig, "train-visual", dataset=dataset, out=Path("unused"))
    torch.manual_seed(0)
    net = build_network(config)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    sampler, _ = make_samplers(config)
    generator = torch.Generator().manual_seed(0)
    seconds = median_s(
        lambda: train_step(net, optimizer, sampler.sample_batch(config.batch_size, generator), config, generator),
        repeats,
    )
    return {
        "step_s": round(seconds, 4),
        "default_steps": config.steps,
        "default_training_h": round(config.steps * seconds / 3600, 2),
    }


def encoding(observation: dict, camera: str, repeats: int) -> dict:
    """Milliseconds of `encode(observation)` for every latent method's encoder, untrained networks of the default
    shape."""
    torch.manual_seed(0)
    visual = build_network(from_preset(TrainVisualConfig, "train-visual", dataset=Path("u"), out=Path("u"))).eval()
    references = References(
        descriptors=torch.randn(5, visual.config.descriptor_dim),
        uv=torch.zeros(5, 2),
        confidence=torch.full((5,), float("nan")),
        camera=camera,
        frame=0,
        eta=5.0,
    )
    encoders = {"sds (descriptor network, K* = 5, bf16)": DescriptorEncoder(visual, references, bf16=True)}
    transporter = TransporterNet(TransporterNetConfig()).eval()
    for crop in ("mask", "full"):
        model = TransporterModel(transporter, crop, camera)
        encoders[f"transporter3d ({crop} crop)"] = TransporterEncoder(model, lift=True)
        encoders[f"transporter2d ({crop} crop)"] = TransporterEncoder(model, lift=False)
    encoders["autoencoder (z = 64)"] = AutoencoderEncoder(AutoencoderModule(64).eval(), camera)
    results = {}
    with torch.inference_mode():
        for name, encoder in encoders.items():
            encoder.reset(observation, {})
            try:
                results[name] = round(1e3 * median_s(lambda e=encoder: e.encode(observation, {}), repeats, 2), 2)
            except ValueError as error:  # an untrained Transporter's keypoints may fall off the depth
                results[name] = f"not measured: {error}"
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per figure (median reported)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = PushingEnv("top_down")
    observation, _ = env.reset(seed=0)
    camera = env.task.cameras[0].name
    env.close()
    observation = {key: np.asarray(value) for key, value in observation.items()}
    with tempfile.TemporaryDirectory() as directory:
        dataset = Path(directory) / "top_down"
        collect(CollectConfig(out=dataset, episodes=EPISODES, steps=40, workers=1, progress=False))
        training = {
            "transporter": [transporter_training(dataset, precision, args.repeats) for precision in ("bf16", "fp32")],
            "autoencoder": [
                autoencoder_training(dataset, precision, max(3, args.repeats // 2)) for precision in ("bf16", "fp32")
            ],
            "descriptors (peer)": descriptor_training(dataset, max(3, args.repeats // 2)),
        }
    for name in ("transporter", "autoencoder"):
        bf16, fp32 = training[name]
        training[f"{name}_step_bf16_over_fp32"] = round(bf16["step_s"] / fp32["step_s"], 2)
    document = {
        "benchmark": "baselines",
        "settings": {"threads": args.threads, "repeats": args.repeats, "torch": torch.__version__},
        "training": training,
        "encode_ms_320x240": encoding(observation, camera, args.repeats),
        "machine": machine(),
    }
    print(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()

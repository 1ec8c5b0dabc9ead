"""`keydyn train-transporter`: the Transporter's own training stage (the original key_dynam recipe).

Every frame of one camera is prepared once (`keydyn.vision.transporter.prepare_images`: the mask crop or the whole
image, 64x64). Each epoch draws `pairs_per_epoch` pairs (one episode and the run's camera; frame A from the first
half of the episode, frame B from the second) in batches of `batch_size` and minimises the L2 reconstruction error
of B from A (Adam); then the reconstruction MSE of fixed pairs of held-out episodes is measured, the learning rate
is reduced on a plateau of it (ReduceLROnPlateau, factor 0.6, patience 2, as the original code hard-codes), and the
run is checkpointed.

A run directory holds:
    config.json              the resolved TrainTransporterConfig
    task.json                the TaskConfig the dataset was collected with
    metrics.jsonl            one line per epoch: epoch, lr, loss (mean training MSE, images in [-1, 1]),
                             val_reconstruction_mse (held-out pairs)
    last.safetensors         the network (weights and batch-norm statistics) after the last epoch
    last_optim.pt            Adam's and the plateau scheduler's state and the pair generator's state of that epoch
    last.json                network config, crop, camera, epoch, best validation error and the files' SHA-256
    best.safetensors/json    the network of the lowest validation MSE so far
    keypoints.png            held-out inputs with their K keypoints
    reconstructions.png      held-out pairs: frame A, frame B and B reconstructed from A

Checkpoints are committed as a whole (`keydyn.runs.commit_checkpoint`), so a run cut at any moment resumes from its
last finished epoch with --resume and then gives the same weights and metrics as an uninterrupted run (on the CPU).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import imageio.v3 as iio
import numpy as np
import torch
from safetensors.torch import save_file
from tqdm import tqdm

from keydyn.data.split import split_episodes
from keydyn.data.store import EpisodeStore
from keydyn.files import write_atomic, write_json_atomic, write_lines
from keydyn.locks import one_writer
from keydyn.plots import pyplot, save_figure
from keydyn.runs import (
    LAST_STATE,
    LAST_WEIGHTS,
    METRICS,
    Resumed,
    check_finite_loss,
    commit_checkpoint,
    dataset_record,
    has_finished,
    load_checked,
    load_checkpoint,
    open_dataset,
    resolve_device,
    resumed_checkpoint,
    save_state,
    store_task,
)
from keydyn.sim.config import check_seed
from keydyn.vision.transporter import (
    CROP_MODES,
    CropMode,
    TransporterNet,
    TransporterNetConfig,
    check_masks,
    prepare_images,
    to_network_range,
)

_RESUMABLE_FIELDS = ("epochs", "resume", "progress", "device")  # may differ between a run and its resumption
HOW_TO_TRAIN = "`keydyn train-transporter`"


@dataclass(frozen=True)
class TrainTransporterConfig:
    """Train a Transporter keypoint network on one camera's frames of a dataset (defaults: the original code's)."""

    dataset: Path
    """Dataset directory written by `keydyn collect`."""
    out: Path
    """Run directory to create (or to continue with --resume)."""
    crop: CropMode = "mask"
    """mask: a 64x64 square around the object's (simulator) mask, background zeroed, as the original (privileged:
    it needs the segmentation at control time too); full: the whole image resized to 64x64, unmasked."""
    camera: str | None = None
    """The camera whose frames are used (default: the dataset's first); control uses the same one."""
    network: TransporterNetConfig = field(default_factory=TransporterNetConfig)
    epochs: int = 100
    """Epochs (original: 100)."""
    pairs_per_epoch: int = 6000
    """Training pairs drawn per epoch (original: 6000)."""
    batch_size: int = 16
    """Pairs per step (original: 16)."""
    lr: float = 1e-4
    """Adam learning rate (original: 1e-4)."""
    plateau_factor: float = 0.6
    """Multiply the learning rate by this when the validation error has not improved for --plateau-patience
    epochs (original: 0.6)."""
    plateau_patience: int = 2
    """(original: 2)"""
    val_fraction: float = 0.1
    """Fraction of episodes held out for validation (split by episode, seeded)."""
    val_pairs: int = 300
    """Held-out pairs (drawn once) reconstructed at each validation (original: 300)."""
    seed: int = 0
    device: str = "cpu"
    """Torch device; "auto" picks cuda when available."""
    precision: Literal["fp32", "bf16"] = "bf16"
    """bf16: the network under bfloat16 autocast (1.9x faster on the CPU, benchmarks/baselines.py; the loss stays in
    float32)."""
    resume: bool = False
    """Continue the run in --out from its last finished epoch."""
    progress: bool = True
    preset: str | None = None
    """The recipe these settings start from (keydyn/presets/train-transporter/<preset>.yaml), as `--preset` or
    `keydyn reproduce` chose it; None for settings built in code. Flags, and the task's own recipe under
    `keydyn reproduce`, override it. Recorded in config.json; resuming compares the settings, not this name."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", Path(self.dataset))
        object.__setattr__(self, "out", Path(self.out))
        if self.crop not in CROP_MODES:
            raise ValueError(f"--crop {self.crop!r}: use one of {', '.join(CROP_MODES)}")
        for name in ("epochs", "pairs_per_epoch", "batch_size", "val_pairs", "plateau_patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or not 0 < self.plateau_factor < 1:
            raise ValueError(f"need --lr > 0 and 0 < --plateau-factor < 1; got {self.lr}, {self.plateau_factor}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"--val-fraction must be in (0, 1): validation needs held-out episodes; got {self.val_fraction}"
            )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision {self.precision!r}: use 'fp32' or 'bf16'")
        check_seed(self.seed)

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON values."""
        values = {**dataclasses.asdict(self), "dataset": str(self.dataset), "out": str(self.out)}
        return json.loads(json.dumps(values))


# -- data -----------------------------------------------------------------------------------------------
def prepare_frames(
    store: EpisodeStore,
    camera: str,
    crop: CropMode,
    size: int,
    start: int = 0,
    stop: int | None = None,
    chunk: int = 256,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network inputs of frames start .. stop of `store` seen by `camera`: (N, 3, S, S) uint8 images and
    (N, 4) float64 crop boxes (`prepare_images`), read `chunk` frames at a time.

    Raises:
        ValueError: crop "mask" and a frame's object mask has no object pixel (`check_masks`).
    """
    stop = store.num_frames if stop is None else stop
    images, boxes = [], []
    for begin in range(start, stop, chunk):
        end = min(begin + chunk, stop)
        rgb = torch.as_tensor(store.frames(f"{camera}/rgb", begin, end))
        mask = torch.as_tensor(store.frames(f"{camera}/mask", begin, end)) if crop == "mask" else None
        if mask is not None:
            check_masks(mask, rgb.shape[:3], begin, f"{store.path}, camera {camera}")
        prepared = prepare_images(rgb, mask, crop, size)
        images.append(prepared.images)
        boxes.append(prepared.boxes)
    return torch.cat(images), torch.cat(boxes)


@dataclass(frozen=True)
class PairSource:
    """Pairs of one episode (frame A from its first half, B from its second) of some episodes' prepared frames.

    Attributes:
        images: (N, 3, S, S) uint8 inputs of every dataset frame.
        ranges: (E, 2) first and past-the-last frame row of each episode pairs are drawn from.
    """

    images: torch.Tensor
    ranges: torch.Tensor

    def sample(self, count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(count,) rows of frames A and of frames B."""
        episodes = torch.randint(len(self.ranges), (count,), generator=generator)
        start, stop = self.ranges[episodes, 0], self.ranges[episodes, 1]
        middle = (stop - start - 1) // 2  # A in [0, middle], B in [middle + 1, length - 1], as the original
        first = start + (torch.rand(count, generator=generator, dtype=torch.float64) * (middle + 1)).long()
        second_count = stop - start - middle - 1
        second = (
            start + middle + 1 + (torch.rand(count, generator=generator, dtype=torch.float64) * second_count).long()
        )
        return first, second

    def batch(self, rows: torch.Tensor, device: torch.device) -> torch.Tensor:
        """(B, 3, S, S) float32 network inputs in [-1, 1] of frame rows."""
        return to_network_range(self.images[rows].to(device))


def make_sources(config: TrainTransporterConfig, store: EpisodeStore, camera: str) -> tuple[PairSource, PairSource]:
    """The training and validation pair sources, from a seeded split by episode.

    Raises:
        ValueError: an episode has fewer than 2 frames (no pair of halves), or crop "mask" and a frame's object
            mask is empty.
    """
    train_episodes, val_episodes = split_episodes(store.num_episodes, config.val_fraction, config.seed)
    ranges = torch.tensor([store.episode_range(e) for e in range(store.num_episodes)], dtype=torch.long)
    short = torch.nonzero(ranges[:, 1] - ranges[:, 0] < 2).flatten().tolist()
    if short:
        raise ValueError(f"{store.path}: episodes {short[:5]} have fewer than 2 frames; collect longer episodes")
    images, _ = prepare_frames(store, camera, config.crop, config.network.image_size)
    return PairSource(images, ranges[torch.as_tensor(train_episodes)]), PairSource(
        images, ranges[torch.as_tensor(val_episodes)]
    )


def reconstruct(
    net: TransporterNet, source: torch.Tensor, target: torch.Tensor, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) float32 reconstructions of `target` from `source`, and the targets' (B, K, 2) keypoints; "bf16"
    runs the network under bfloat16 autocast."""
    with torch.autocast(device_type=source.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        reconstruction, keypoints = net(source, target)
    return reconstruction.float(), keypoints.float()


@torch.no_grad()
def validate(
    net: TransporterNet,
    source: PairSource,
    pairs: tuple[torch.Tensor, torch.Tensor],
    config: TrainTransporterConfig,
    device: torch.device,
) -> float:
    """Mean squared reconstruction error (images in [-1, 1]) of the fixed held-out pairs, eval mode."""
    net.eval()
    total, count = 0.0, 0
    for begin in range(0, len(pairs[0]), config.batch_size):
        first, second = (rows[begin : begin + config.batch_size] for rows in pairs)
        target = source.batch(second, device)
        reconstruction, _ = reconstruct(net, source.batch(first, device), target, config.precision)
        total += float(((reconstruction - target) ** 2).sum())
        count += target.numel()
    return total / count


def _as_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) images in [-1, 1] -> (B, S, S, 3) uint8."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


@torch.no_grad()
def draw_pictures(
    net: TransporterNet,
    source: PairSource,
    pairs: tuple[torch.Tensor, torch.Tensor],
    config: TrainTransporterConfig,
    device: torch.device,
    count: int = 4,
) -> None:
    """keypoints.png (held-out frames B with their keypoints) and reconstructions.png (rows: A, B, B
    reconstructed) of the first `count` held-out pairs."""
    net.eval()
    first, second = pairs[0][:count], pairs[1][:count]
    source_images, target = source.batch(first, device), source.batch(second, device)
    reconstruction, keypoints = reconstruct(net, source_images, target, config.precision)
    rows = [np.concatenate(list(_as_uint8(images)), axis=1) for images in (source_images, target, reconstruction)]
    write_atomic(config.out / "reconstructions.png", lambda p: iio.imwrite(p, np.concatenate(rows), extension=".png"))
    size = config.network.image_size
    cells = size // 4
    span = 0.5 - 0.5 / cells
    pixels = (size * (0.5 + span * keypoints) - 0.5).cpu().numpy()  # (B, K, 2) input pixels
    plt = pyplot()
    figure, axes = plt.subplots(1, len(first), figsize=(2.6 * len(first), 2.8))
    for axis, image, points in zip(np.atleast_1d(axes), _as_uint8(target), pixels, strict=True):
        axis.imshow(image)
        axis.scatter(
            points[:, 0], points[:, 1], c=np.arange(len(points)), cmap="tab10", vmin=0, vmax=9, s=40, edgecolors="white"
        )
        axis.set_axis_off()
    figure.suptitle(f"Transporter keypoints on held-out frames (crop {config.crop})", fontsize=10)
    figure.tight_layout()
    save_figure(figure, config.out / "keypoints.png", dpi=100)


# -- checkpoints ----------------------------------------------------------------------------------------
def _save_network(path: Path, net: TransporterNet, epoch: int) -> None:
    tensors = {name: value.detach().cpu().contiguous() for name, value in net.state_dict().items()}
    save_file(tensors, str(path), metadata={"epoch": str(epoch)})


def _network_info(config: TrainTransporterConfig, camera: str, epoch: int) -> dict[str, Any]:
    return {"network": config.network.to_json(), "crop": config.crop, "camera": camera, "epoch": epoch}


def save_checkpoints(
    net: TransporterNet,
    optimizer: Any,
    scheduler: Any,
    generator: torch.Generator,
    config: TrainTransporterConfig,
    camera: str,
    metrics: list[dict[str, Any]],
    best: float,
    improved: bool,
    dataset: dict[str, Any],
) -> None:
    """Commit best.safetensors/json when the last epoch (metrics[-1]) `improved` the validation error, then
    last.safetensors, last_optim.pt, metrics.jsonl and last.json (with `dataset`, `keydyn.runs.dataset_record`)
    together (`keydyn.runs.commit_checkpoint`)."""
    epoch = metrics[-1]["epoch"]
    info = _network_info(config, camera, epoch)
    if improved:
        files = {"best.safetensors": lambda path: _save_network(path, net, epoch)}
        commit_checkpoint(config.out, "best", files, {**info, "val_reconstruction_mse": best})
    state = {
        "epoch": epoch,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
    }
    files = {
        LAST_WEIGHTS: lambda path: _save_network(path, net, epoch),
        LAST_STATE: lambda path: save_state(state, path),
        METRICS: lambda path: write_lines(path, metrics),
    }
    commit_checkpoint(config.out, "last", files, {**info, **dataset, "best_val_reconstruction_mse": best})


@dataclass(frozen=True)
class TransporterModel:
    """A trained Transporter: its network (eval mode), the crop mode and the camera it was trained on."""

    net: TransporterNet
    crop: CropMode
    camera: str


def load_transporter(run_dir: str | Path, which: Literal["best", "last"] = "best") -> TransporterModel:
    """The network saved as `which` in a `keydyn train-transporter` run, in eval mode on the CPU, its weights
    verified (`keydyn.runs.load_checkpoint`).

    Raises:
        FileNotFoundError: the run directory or its checkpoint is missing.
        ValueError: the checkpoint is damaged.
    """
    run_dir = Path(run_dir)
    info, tensors = load_checkpoint(run_dir, which, HOW_TO_TRAIN, ("network", "crop", "camera"))
    net = TransporterNet(TransporterNetConfig.from_json(info["network"]))
    load_checked(net, tensors, run_dir / f"{which}.safetensors")
    return TransporterModel(net.eval(), info["crop"], info["camera"])


def _restore(
    out: Path, resumed: Resumed, net: TransporterNet, optimizer: Any, scheduler: Any, generator: torch.Generator
) -> None:
    load_checked(net, resumed.tensors, out / LAST_WEIGHTS)
    optimizer.load_state_dict(resumed.state["optimizer"])
    scheduler.load_state_dict(resumed.state["scheduler"])
    generator.set_state(resumed.state["generator"])


@one_writer("keydyn train-transporter")
def train_transporter(config: TrainTransporterConfig) -> Path:
    """Train (or resume) a Transporter network; returns the run directory `config.out`."""
    device = resolve_device(config.device)
    store = open_dataset(config.dataset)
    camera = store.camera(config.camera)
    task = store_task(store)
    resumed = resumed_checkpoint(
        config.out, config, _RESUMABLE_FIELDS, "epoch", store, ("best_val_reconstruction_mse",)
    )
    if has_finished(resumed, "epoch", config.epochs, config.out):  # its config.json stays the one it trained with
        return config.out
    train, val = make_sources(config, store, camera)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = TransporterNet(config.network)
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, factor=config.plateau_factor, patience=config.plateau_patience
    )
    generator = torch.Generator().manual_seed(config.seed)
    val_pairs = val.sample(config.val_pairs, torch.Generator().manual_seed(config.seed + 1))
    write_json_atomic(config.out / "config.json", {**config.to_json(), "device": str(device)})
    write_json_atomic(config.out / "task.json", task.to_dict())
    start, best, metrics, dataset = 0, math.inf, [], dataset_record(store)
    if resumed is not None:
        _restore(config.out, resumed, net, optimizer, scheduler, generator)
        start, best, metrics = resumed.info["epoch"], resumed.info["best_val_reconstruction_mse"], resumed.metrics
    steps = math.ceil(config.pairs_per_epoch / config.batch_size)
    bar = tqdm(range(start + 1, config.epochs + 1), desc="transporter", disable=not config.progress)
    for epoch in bar:
        net.train()
        lr, total = optimizer.param_groups[0]["lr"], 0.0
        for step in range(steps):
            size = min(config.batch_size, config.pairs_per_epoch - step * config.batch_size)
            first, second = train.sample(size, generator)
            target = train.batch(second, device)
            reconstruction, _ = reconstruct(net, train.batch(first, device), target, config.precision)
            loss = ((reconstruction - target) ** 2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * size
        check_finite_loss(total, f"epoch {epoch}")
        val_error = validate(net, val, val_pairs, config, device)
        scheduler.step(val_error)
        row = {
            "epoch": epoch,
            "lr": lr,
            "loss": total / config.pairs_per_epoch,
            "val_reconstruction_mse": val_error,
        }
        metrics.append(row)
        draw_pictures(net, val, val_pairs, config, device)
        improved = val_error < best
        best = min(best, val_error)
        save_checkpoints(net, optimizer, scheduler, generator, config, camera, metrics, best, improved, dataset)
        bar.set_postfix(loss=f"{row['loss']:.4f}", val=f"{val_error:.4f}")
    return config.out

"""Training of the dense descriptor network on pairs of RGB-D views (paper appendix 6).

Each step draws `batch_size` pairs from the training episodes (`keydyn.vision.pairs`), augments their colours
and backgrounds, and minimises the heatmap + spatial expectation losses (`keydyn.vision.losses`). Every
`validate_every` steps (and at the last) the descriptors of the A views of fixed held-out pairs are located
in their B views, the errors against the true matches are logged, and the run is checkpointed.

A run directory holds:
    config.json            the resolved TrainVisualConfig
    task.json              the TaskConfig the dataset was collected with
    metrics.jsonl          one line per step up to the last checkpointed step: step, lr, loss_total, loss_heatmap,
                           loss_pixel, loss_depth (and loss_hidden when weighted); at validation also
                           val_pixel_error_median (px), val_within_3px (fraction), val_error_3d_mm_median,
                           val_confidence_matched and val_confidence_hidden
    last.safetensors       network weights and batch-norm statistics after the last checkpointed step
    last_optim.pt          Adam state and the random generators' states of that step
    last.json              network and loss configs, step, best validation error and the SHA-256 of the three files
                           above; written after them (the commit, `keydyn.runs.commit_checkpoint`)
    best.safetensors/json  the network with the lowest validation median pixel error so far (best.json holds the
                           SHA-256 of best.safetensors)
    descriptors.png        held-out views and their descriptor images (first 3 principal components as RGB)
    heatmap.png            a reference pixel, its heatmap in the other view and the true match (paper fig. 2)

Every file is written atomically and each checkpoint as a whole, so a run killed at any moment resumes from its last
checkpoint with `resume=True` (one killed before its first starts again) and then produces the same weights and
metrics as an uninterrupted run (on the CPU: CUDA kernels and the CUDA generator that dropout uses there are not
reproduced).

Under torchrun (`keydyn.distributed`) every rank draws and augments the same global batch of --batch-size pairs and
trains on its share of the pairs (DistributedDataParallel averages the gradients; each rank's loss terms are
weighted by its share of the valid matches, and batch norm takes its statistics over the whole batch), so N
processes follow one process's run up to float reduction order (not the dilated head's dropout, drawn per rank).
Rank 0 validates, draws the pictures and writes every file; every rank resumes from the checkpoint rank 0 read.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file
from tqdm import tqdm

from keydyn.data.split import split_episodes
from keydyn.distributed import ONE_PROCESS, World, joined, synchronise_batch_norm
from keydyn.files import write_json_atomic, write_lines
from keydyn.locks import one_writer
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
from keydyn.vision.augment import AugmentConfig, jitter_colour, randomise_background
from keydyn.vision.geometry import bilinear_sample
from keydyn.vision.keypoints import locate_keypoints
from keydyn.vision.losses import DescriptorLossConfig, descriptor_losses
from keydyn.vision.network import DescriptorNet, DescriptorNetConfig
from keydyn.vision.pairs import PairBatch, PairConfig, PairSampler
from keydyn.vision.pictures import write_descriptor_picture, write_heatmap_picture

_RESUMABLE_FIELDS = ("steps", "resume", "progress", "device")  # may differ between a run and its resumption


def cpu_network() -> DescriptorNetConfig:
    """The default network for CPU training: ResNet-18 cut at output stride 8 with FCN-8s skips, D = 3.

    Several times cheaper than the paper's dilated ResNet-50 (`DescriptorNetConfig()`), which stays
    selectable with --network.backbone resnet50 --network.variant dilated.
    """
    return DescriptorNetConfig(backbone="resnet18", descriptor_dim=3, variant="strided", output_stride=8)


@dataclass(frozen=True)
class TrainVisualConfig:
    """Train a dense descriptor network on a dataset's camera views."""

    dataset: Path
    """Dataset directory written by `keydyn collect`."""
    out: Path
    """Run directory to create (or to continue with --resume)."""
    network: DescriptorNetConfig = field(default_factory=cpu_network)
    loss: DescriptorLossConfig = field(default_factory=DescriptorLossConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    steps: int = 8000
    """Optimiser steps (original DON: 3500 with one pair per step; from scratch on 2 CPU cores at 320x240, 8000
    steps take about 41 minutes; the held-out error still falls from 5000 to 8000 steps: 1.55 to 1.13 px on
    top_down)."""
    batch_size: int = 2
    """Pairs per step, 2 images each (original key_dynam: 2)."""
    lr: float = 5e-4
    """Adam learning rate (original: 1e-4 from ImageNet weights; from scratch 1e-4 learns several times slower,
    and the held-out error falls fastest once the rate is below ~4e-4: 5e-4 decayed beats 1e-3 decayed)."""
    weight_decay: float = 1e-4
    """Adam's L2 weight decay (original DON: 1e-4; key_dynam: 0)."""
    lr_decay: float = 0.9
    """Multiply the learning rate by this every --lr-decay-steps steps (original DON: 0.9 every 250)."""
    lr_decay_steps: int = 250
    """0 keeps the learning rate constant (as key_dynam did)."""
    jitter: bool = True
    """Random brightness, contrast, saturation and hue per training image."""
    background: bool = True
    """Replace training images' backgrounds by random colours and noise."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    val_fraction: float = 0.1
    """Fraction of episodes held out for validation (split by episode, seeded)."""
    val_pairs: int = 32
    """Held-out pairs (drawn once) located at each validation."""
    validate_every: int = 250
    """Validate, checkpoint and redraw the pictures every this many steps and at the last step."""
    seed: int = 0
    device: str = "cpu"
    """Torch device; "auto" picks cuda when available."""
    precision: Literal["fp32", "bf16"] = "bf16"
    """bf16: network forward and backward under bfloat16 autocast, channels-last (losses stay in float32)."""
    init_from: Path | None = None
    """Start from the best weights of another visual run with the same --network (to fine-tune it on other
    data or at another image size; beyond the paper); the steps and the learning-rate schedule start afresh."""
    resume: bool = False
    """Continue the run in --out from its last checkpoint."""
    progress: bool = True
    preset: str | None = None
    """The recipe these settings start from (keydyn/presets/train-visual/<preset>.yaml), as `--preset` or
    `keydyn reproduce` chose it; None for settings built in code. Flags, and the task's own recipe under
    `keydyn reproduce`, override it. Recorded in config.json; resuming compares the settings, not this name."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", Path(self.dataset))
        object.__setattr__(self, "out", Path(self.out))
        if self.init_from is not None:
            object.__setattr__(self, "init_from", Path(self.init_from))
        for name in ("steps", "batch_size", "val_pairs", "validate_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 < self.lr_decay <= 1 or self.lr_decay_steps < 0:
            raise ValueError(
                "need --lr > 0, --weight-decay >= 0, 0 < --lr-decay <= 1 and --lr-decay-steps >= 0; got "
                f"{self.lr}, {self.weight_decay}, {self.lr_decay}, {self.lr_decay_steps}"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(
                f"--val-fraction must be in (0, 1): validation needs held-out episodes; got {self.val_fraction}"
            )
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--precision {self.precision!r}: use 'fp32' or 'bf16'")
        check_seed(self.seed)

    def learning_rate(self, step: int) -> float:
        """The step-decayed learning rate of (1-based) `step`; a function of the step, so resuming needs no state."""
        if self.lr_decay_steps == 0:
            return self.lr
        return self.lr * self.lr_decay ** ((step - 1) // self.lr_decay_steps)

    def to_json(self) -> dict[str, Any]:
        """The configuration as JSON values (paths as strings, tuples as lists)."""
        values = {**dataclasses.asdict(self), "dataset": str(self.dataset), "out": str(self.out)}
        values["init_from"] = None if self.init_from is None else str(self.init_from)
        return json.loads(json.dumps(values))


# -- data -----------------------------------------------------------------------------------------------
def make_samplers(config: TrainVisualConfig) -> tuple[PairSampler, list[PairBatch]]:
    """The training pair sampler and the fixed validation batches, from a seeded split by episode."""
    store = open_dataset(config.dataset)
    train_episodes, val_episodes = split_episodes(store.num_episodes, config.val_fraction, config.seed)
    train = PairSampler(store, train_episodes, config.pairs)
    val = PairSampler(store, val_episodes, config.pairs)
    generator = torch.Generator().manual_seed(config.seed + 1)  # its own stream: the same pairs on resumption
    sizes = [
        min(config.batch_size, config.val_pairs - begin) for begin in range(0, config.val_pairs, config.batch_size)
    ]
    return train, [val.sample_batch(size, generator) for size in sizes]


def augment(batch: PairBatch, config: TrainVisualConfig, generator: torch.Generator) -> torch.Tensor:
    """The batch's (2B, 3, H, W) images with colour jitter and background randomisation, as configured."""
    rgb = batch.rgb
    if config.jitter:
        rgb = jitter_colour(rgb, generator, config.augment)
    if config.background:
        rgb = randomise_background(rgb, batch.mask, generator, config.augment)
    return rgb


# -- network, steps, validation -------------------------------------------------------------------------
def build_network(config: TrainVisualConfig) -> DescriptorNet:
    """The network with weights initialised from the seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return DescriptorNet(config.network)


def copy_initial_weights(net: DescriptorNet, run_dir: Path) -> None:
    """Load the best weights of the visual run `run_dir` into `net` (--init-from).

    Raises:
        ValueError: that run's network differs from `net`'s.
    """
    source = load_descriptor_net(run_dir, "best")
    if source.config != net.config:
        raise ValueError(
            f"--init-from {run_dir} has network {source.config}, not the --network asked for ({net.config}); "
            "pass the same --network.* options as that run"
        )
    net.load_state_dict(source.state_dict())


def describe(net: DescriptorNet, rgb: torch.Tensor, precision: str) -> torch.Tensor:
    """(B, 3, H, W) images -> (B, D, H, W) float32 descriptors; "bf16" runs the network under bfloat16
    autocast on channels-last images (the network's weights should be channels-last too)."""
    bf16 = precision == "bf16"
    if bf16:
        rgb = rgb.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device_type=rgb.device.type, dtype=torch.bfloat16, enabled=bf16):
        return net(rgb).float()


def train_step(
    net: DescriptorNet | torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: PairBatch,
    config: TrainVisualConfig,
    generator: torch.Generator,
    world: World = ONE_PROCESS,
) -> dict[str, float]:
    """One optimiser step on an (augmented) batch; returns its losses (total, heatmap, pixel, depth).

    Of several ranks (`world`; `net` in DistributedDataParallel), each describes its share of the pairs (the
    whole batch augmented on every rank, so the random numbers are those of one process) and weights its loss
    terms by its share of their valid matches (hidden points for the hidden term), so that the averaged gradient
    and the returned losses are those of the whole batch; a rank without pairs describes the first with weight 0.
    """
    net.train()
    augmented = dataclasses.replace(batch, rgb=augment(batch, config, generator))
    part = world.share(len(batch))
    empty = part.start == part.stop
    mine = augmented.pairs(slice(0, 1) if empty else part)
    size = len(mine)
    descriptors = describe(net, mine.rgb, config.precision)
    losses = descriptor_losses(descriptors[:size], descriptors[size:], mine.depth_b, mine.matches, config.loss)
    total, weights = losses.total, {"matched": 1.0, "hidden": 1.0}
    if world.distributed:
        for name, valid, whole in (
            ("matched", mine.matches.valid, batch.matches.valid),
            ("hidden", mine.matches.hidden_valid, batch.matches.hidden_valid),
        ):
            weights[name] = 0.0 if empty else world.weight(int(valid.sum()), int(whole.sum()))
        spatial = config.loss.spatial_weight * (losses.pixel + losses.depth)
        matched = weights["matched"] * (config.loss.heatmap_weight * losses.heatmap + spatial)
        total = matched + weights["hidden"] * config.loss.hidden_weight * losses.hidden
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    optimizer.step()
    terms = {
        "loss_total": (total, 1.0),
        "loss_heatmap": (losses.heatmap, weights["matched"]),
        "loss_pixel": (losses.pixel, weights["matched"]),
        "loss_depth": (losses.depth, weights["matched"]),
    }
    if config.loss.hidden_weight:
        terms["loss_hidden"] = (losses.hidden, weights["hidden"])
    values = world.total([float(value.detach()) * weight / world.size for value, weight in terms.values()])
    return dict(zip(terms, values, strict=True))


@torch.no_grad()
def validate(
    net: DescriptorNet, batches: list[PairBatch], config: TrainVisualConfig, device: torch.device
) -> dict[str, float | None]:
    """Errors of the held-out matches: each match's descriptor in view A located in view B (eval mode), and
    the confidence (eq. 15) of located matches against that of points B cannot see.

    Returns:
        val_pixel_error_median: median distance between located and true match, pixels.
        val_within_3px: fraction of matches located within 3 pixels.
        val_error_3d_mm_median: median distance between the located 3D point (expected pixel and depth,
            unprojected) and the true world point, millimetres.
        val_confidence_matched: mean confidence of the located matches, in [0, 1].
        val_confidence_hidden: mean confidence of the hidden points located in B (None if there were none):
            descriptors that tell the faces apart keep it well below the matched one.
    """
    net.eval()
    pixel_errors, errors_3d, confidence_matched, confidence_hidden = [], [], [], []
    for batch in batches:
        batch = batch.to(device)
        descriptors = describe(net, batch.rgb, config.precision)
        size = len(batch)
        matches = batch.matches
        uv_a = torch.cat([matches.uv_a, matches.hidden_uv_a], dim=1)
        references = bilinear_sample(descriptors[:size], uv_a)  # (B, N + M, D)
        located = locate_keypoints(
            descriptors[size:], references, batch.depth_b, batch.intrinsics_b, batch.T_world_camera_b, config.loss.eta
        )
        num_matches = matches.uv_a.shape[1]
        valid = matches.valid
        pixel_errors.append((located.uv[:, :num_matches] - matches.uv_b).norm(dim=-1)[valid].cpu())
        points = located.points_world[:, :num_matches].double()
        errors_3d.append((points - batch.points_b).norm(dim=-1)[valid].cpu())
        confidence_matched.append(located.confidence[:, :num_matches][valid].cpu())
        confidence_hidden.append(located.confidence[:, num_matches:][matches.hidden_valid].cpu())
    pixel, distance, hidden = torch.cat(pixel_errors), torch.cat(errors_3d), torch.cat(confidence_hidden)
    return {
        "val_pixel_error_median": float(pixel.median()),
        "val_within_3px": float((pixel <= 3.0).double().mean()),
        "val_error_3d_mm_median": float(1000.0 * distance.nan_to_num(math.inf).median()),  # no depth: lost
        "val_confidence_matched": float(torch.cat(confidence_matched).mean()),
        "val_confidence_hidden": float(hidden.mean()) if len(hidden) else None,
    }


@torch.no_grad()
def draw_pictures(net: DescriptorNet, batch: PairBatch, config: TrainVisualConfig, device: torch.device) -> None:
    """descriptors.png and heatmap.png of the first held-out pair (its first match as the reference)."""
    net.eval()
    batch = batch.to(device)
    size = len(batch)
    descriptors = describe(net, batch.rgb[[0, size]], config.precision)  # A and B of pair 0
    rgb = (batch.rgb[[0, size]] * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    write_descriptor_picture(config.out / "descriptors.png", rgb, descriptors)
    uv_a, uv_b = batch.matches.uv_a[0, 0], batch.matches.uv_b[0, 0]
    reference = bilinear_sample(descriptors[:1], uv_a.view(1, 1, 2))[0]  # (1, D)
    located = locate_keypoints(
        descriptors[1],
        reference,
        batch.depth_b[0],
        batch.intrinsics_b[0],
        batch.T_world_camera_b[0],
        config.loss.eta,
        return_heatmaps=True,
    )
    write_heatmap_picture(config.out / "heatmap.png", rgb[0], rgb[1], uv_a, uv_b, located)


# -- checkpoints ----------------------------------------------------------------------------------------
def _save_network(path: Path, net: DescriptorNet, step: int) -> None:
    tensors = {name: value.detach().cpu().contiguous() for name, value in net.state_dict().items()}
    save_file(tensors, str(path), metadata={"step": str(step)})


def _network_info(config: TrainVisualConfig, step: int) -> dict[str, Any]:
    return {"network": dataclasses.asdict(config.network), "loss": dataclasses.asdict(config.loss), "step": step}


def save_checkpoint(
    net: DescriptorNet,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    config: TrainVisualConfig,
    step: int,
    best_error: float,
    metrics: list[dict[str, Any]],
    dataset: dict[str, Any],
) -> None:
    """Commit last.safetensors, last_optim.pt, metrics.jsonl (the rows of steps 1 .. `step`) and last.json (with
    `dataset`, `keydyn.runs.dataset_record`) together (`keydyn.runs.commit_checkpoint`)."""
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),  # dropout of the dilated head draws from the global generator
    }
    files = {
        LAST_WEIGHTS: lambda path: _save_network(path, net, step),
        LAST_STATE: lambda path: save_state(state, path),
        METRICS: lambda path: write_lines(path, metrics),
    }
    commit_checkpoint(
        config.out, "last", files, {**_network_info(config, step), **dataset, "best_val_pixel_error_median": best_error}
    )


def save_best(net: DescriptorNet, config: TrainVisualConfig, step: int, metrics: dict[str, float]) -> None:
    """Commit best.safetensors and best.json with the validation metrics of `step`."""
    validation = {name: value for name, value in metrics.items() if name.startswith("val_")}
    files = {"best.safetensors": lambda path: _save_network(path, net, step)}
    commit_checkpoint(config.out, "best", files, {**_network_info(config, step), **validation})


def load_descriptor_net(
    run_dir: str | Path, which: Literal["best", "last"] = "best", device: str = "cpu"
) -> DescriptorNet:
    """The network saved as `which` in a training run directory, in eval mode (safetensors + JSON, no pickle),
    its weights verified (`keydyn.runs.load_checkpoint`).

    Raises:
        FileNotFoundError: the run directory or its checkpoint is missing.
        ValueError: the checkpoint is damaged (its JSON, or weights that are truncated or changed).
    """
    run_dir = Path(run_dir)
    info, tensors = load_checkpoint(run_dir, which, "`keydyn train-visual`", ("network",))
    net = DescriptorNet(DescriptorNetConfig.from_json(info["network"]))
    load_checked(net, tensors, run_dir / f"{which}.safetensors")
    return net.to(device).eval()


def _restore(
    out: Path, resumed: Resumed, net: DescriptorNet, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> None:
    load_checked(net, resumed.tensors, out / LAST_WEIGHTS)
    optimizer.load_state_dict(resumed.state["optimizer"])
    generator.set_state(resumed.state["generator"])
    torch.set_rng_state(resumed.state["torch_rng"])


@one_writer("keydyn train-visual")
def train_visual(config: TrainVisualConfig) -> Path:
    """Train (or resume) a descriptor network; returns the run directory `config.out`. Under torchrun, on every
    rank (`keydyn.distributed`; rank 0 writes the files)."""
    device = resolve_device(config.device)
    with joined(device) as world:
        return _train(config, world, world.device(device))


def _train(config: TrainVisualConfig, world: World, device: torch.device) -> Path:
    train, val_batches = make_samplers(config)  # checks the dataset before anything is written
    net = build_network(config)
    if config.init_from is not None and not (config.resume and (config.out / "last.json").exists()):
        copy_initial_weights(net, config.init_from)  # before anything is written: a wrong run is refused
    resumed = None
    if world.main:
        resumed = resumed_checkpoint(
            config.out, config, _RESUMABLE_FIELDS, "step", train.store, ("best_val_pixel_error_median",)
        )
    resumed = world.broadcast(resumed)
    if has_finished(resumed, "step", config.steps, config.out, quiet=not world.main):
        world.barrier()  # its config.json stays the one it trained with
        return config.out
    if world.distributed:
        synchronise_batch_norm(net)
    net = net.to(device)
    if config.precision == "bf16":
        net.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    if world.main:
        write_json_atomic(config.out / "config.json", {**config.to_json(), "device": str(device)})
        write_json_atomic(config.out / "task.json", store_task(train.store).to_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        start, best_error, metrics, dataset = 0, math.inf, [], dataset_record(train.store)
        if resumed is not None:
            _restore(config.out, resumed, net, optimizer, generator)
            start, best_error = resumed.info["step"], resumed.info["best_val_pixel_error_median"]
            metrics = resumed.metrics
        trained = world.wrap(net, device)
        bar = tqdm(range(start + 1, config.steps + 1), desc="descriptors", disable=not (config.progress and world.main))
        for step in bar:
            lr = config.learning_rate(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = train.sample_batch(config.batch_size, generator).to(device)
            row = {"step": step, "lr": lr, **train_step(trained, optimizer, batch, config, generator, world)}
            check_finite_loss(row["loss_total"], f"step {step}")
            metrics.append(row)
            bar.set_postfix(loss=f"{row['loss_total']:.3f}")
            if (step % config.validate_every and step != config.steps) or not world.main:
                continue  # rank 0 validates and writes; the others go on to the next step's gradient averaging
            row.update(validate(net, val_batches, config, device))
            draw_pictures(net, val_batches[0], config, device)
            if row["val_pixel_error_median"] < best_error:
                best_error = row["val_pixel_error_median"]
                save_best(net, config, step, row)
            save_checkpoint(net, optimizer, generator, config, step, best_error, metrics, dataset)
            bar.set_postfix(loss=f"{row['loss_total']:.3f}", val_px=f"{row['val_pixel_error_median']:.1f}")
    world.barrier()  # the last checkpoint is written when any rank returns
    return config.out

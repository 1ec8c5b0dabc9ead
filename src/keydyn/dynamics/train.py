"""Training of the keypoint dynamics model with the paper's multi-step open-loop rollout loss (eq. 1).

A run directory holds:
    config.json            the resolved TrainDynamicsConfig
    task.json              the TaskConfig the dataset was collected with (evaluation rebuilds the task from it)
    metrics.jsonl          one line per epoch: epoch, train_loss, val_loss (m^2), val_final_step_error_m
    last.safetensors       model weights and normaliser buffers after the last finished epoch
    last_optim.pt          Adam state and the training random generator's state of that epoch
    last.json              model config, epoch and best validation error; written last (the commit)
    best.safetensors/json  the model with the lowest validation final-step error so far

Every file is written atomically (temporary file, then os.replace), so a killed run resumes from its last
finished epoch with `resume=True` and then produces the same weights and metrics as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from keydyn.dynamics.augment import augment_windows
from keydyn.dynamics.latent import LatentLayout, ground_truth_latents, store_task
from keydyn.dynamics.model import PAPER_HIDDEN, DynamicsMLP
from keydyn.dynamics.windows import WindowSet, make_windows, split_episodes
from keydyn.files import read_lines, write_atomic, write_json_atomic, write_lines_atomic
from keydyn.runs import checkpoint_paths, load_training_state, open_dataset, resolve_device, resumed_checkpoint

_RESUMABLE_FIELDS = ("epochs", "resume", "progress", "device")  # may differ between a run and its resumption


@dataclass(frozen=True)
class TrainDynamicsConfig:
    """Train a keypoint dynamics model on a dataset's latents."""

    dataset: Path
    """Dataset directory written by `keydyn collect`."""
    out: Path
    """Run directory to create (or to continue with --resume)."""
    latent: Literal["gt3d"] = "gt3d"
    """Latent state: gt3d = 4 ground-truth 3D object keypoints + pusher xy."""
    history: int = 2
    """n: latents (and actions) the model sees per prediction (paper 1, original code 2)."""
    horizon: int = 10
    """H: open-loop rollout steps in the loss."""
    hidden: tuple[int, ...] = PAPER_HIDDEN
    """Hidden layer sizes (paper 500 500; original code 500 1000 1000 500)."""
    epochs: int = 100
    batch_size: int = 128
    lr: float = 1e-4
    lr_decay_epochs: int = 0
    """Multiply the learning rate by --lr-decay every this many epochs (0: constant; original code: 700)."""
    lr_decay: float = 0.1
    augment: bool = True
    """SE(2) augmentation of training windows (paper appendix 7.1)."""
    augment_translation: float = 0.4
    """Maximum augmentation translation per axis, metres."""
    augment_yaw: float = math.pi
    """Maximum augmentation yaw, radians."""
    val_fraction: float = 0.5
    """Fraction of episodes held out for validation (split by episode)."""
    seed: int = 0
    device: str = "cpu"
    """Torch device; "auto" picks cuda when available."""
    resume: bool = False
    """Continue the run in --out from its last finished epoch."""
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", Path(self.dataset))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if self.latent != "gt3d":
            raise ValueError(f"unknown latent {self.latent!r}; this trainer supports 'gt3d'")
        for name in ("history", "horizon", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"--hidden needs one or more positive layer sizes, got {self.hidden}")
        if self.lr <= 0 or not 0 < self.lr_decay <= 1 or self.lr_decay_epochs < 0:
            raise ValueError(
                f"need --lr > 0, 0 < --lr-decay <= 1 and --lr-decay-epochs >= 0; got {self.lr}, {self.lr_decay}, "
                f"{self.lr_decay_epochs}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")

    def learning_rate(self, epoch: int) -> float:
        """The step-decayed learning rate of (1-based) `epoch`; a function of the epoch, so resuming needs no state."""
        if self.lr_decay_epochs == 0:
            return self.lr
        return self.lr * self.lr_decay ** ((epoch - 1) // self.lr_decay_epochs)

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["dataset"], values["out"], values["hidden"] = str(self.dataset), str(self.out), list(self.hidden)
        return values


# -- atomic files ---------------------------------------------------------------------------------------
def save_model_atomic(path: Path, model: DynamicsMLP, epoch: int) -> None:
    """Weights and normaliser buffers as safetensors, tagged with the epoch."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    write_atomic(path, lambda p: save_file(tensors, str(p), metadata={"epoch": str(epoch)}))


# -- data -----------------------------------------------------------------------------------------------
def load_windows(config: TrainDynamicsConfig) -> tuple[WindowSet, WindowSet]:
    """(train, validation) windows of GT 3D latents, split by episode.

    Raises:
        ValueError: no episode is long enough for history + horizon frames, or a split has no windows.
    """
    store = open_dataset(config.dataset)
    if store.num_episodes == 0:
        raise ValueError(f"dataset {config.dataset} has no episodes; collect some first")
    ends = store.episode_ends
    lengths = np.diff(np.concatenate([[0], ends]))
    needed = config.history + config.horizon
    if lengths.max() < needed:
        raise ValueError(
            f"history + horizon = {needed} frames, but the longest episode of {config.dataset} has "
            f"{lengths.max()} frames; lower --horizon/--history or collect longer episodes (--steps)"
        )
    latents = ground_truth_latents(store)
    actions = np.asarray(store.frames("action"), dtype=np.float32)
    train_episodes, val_episodes = split_episodes(store.num_episodes, config.val_fraction, config.seed)
    train = make_windows(latents, actions, ends, train_episodes, config.history, config.horizon)
    val = make_windows(latents, actions, ends, val_episodes, config.history, config.horizon)
    if len(train) == 0 or (config.val_fraction > 0 and len(val) == 0):
        which = "training" if len(train) == 0 else "validation"
        raise ValueError(
            f"the {which} episodes of {config.dataset} are all shorter than history + horizon = {needed} frames; "
            "lower --horizon, change --val-fraction/--seed, or collect more or longer episodes"
        )
    return train, val


# -- model set-up, losses -------------------------------------------------------------------------------
def build_model(config: TrainDynamicsConfig, train: WindowSet) -> DynamicsMLP:
    """A seeded model with its normaliser fitted on (augmented, when enabled) training windows."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DynamicsMLP(train.latents.shape[1], config.history, config.hidden)
    latents, actions = train.batch(torch.arange(len(train)))
    if config.augment:
        generator = torch.Generator().manual_seed(config.seed + 1)
        latents, actions = augment_windows(latents, actions, generator, config.augment_translation, config.augment_yaw)
    model.fit_normalizer(latents, actions)
    return model


def rollout_loss(model: DynamicsMLP, latents: torch.Tensor, actions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper eq. (1): MSE (m^2) of the open-loop rollout over the horizon, and the (B,) final-step keypoint error.

    Args:
        latents: (B, n + H, D) window latents, metres.
        actions: (B, n + H - 1, 2) window actions, m/s.

    Returns:
        loss: scalar mean squared error over steps, samples and latent entries.
        final_error: (B,) mean Euclidean distance (metres) of the object keypoints at the last step.
    """
    n = model.history
    predicted = model.rollout(latents[:, :n], actions)
    target = latents[:, n:]
    loss = torch.mean((predicted - target) ** 2)
    layout = LatentLayout.from_dim(latents.shape[-1])
    difference = (predicted[:, -1, : layout.keypoint_dim] - target[:, -1, : layout.keypoint_dim]).detach()
    final_error = difference.reshape(len(difference), -1, 3).norm(dim=-1).mean(dim=-1)
    return loss, final_error


def train_epoch(
    model: DynamicsMLP,
    optimizer: torch.optim.Optimizer,
    windows: WindowSet,
    config: TrainDynamicsConfig,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """One pass over shuffled (and augmented) training windows; returns the mean loss (m^2)."""
    model.train()
    order = torch.randperm(len(windows), generator=generator)
    total, count = 0.0, 0
    for begin in range(0, len(order), config.batch_size):
        latents, actions = windows.batch(order[begin : begin + config.batch_size])
        if config.augment:
            latents, actions = augment_windows(
                latents, actions, generator, config.augment_translation, config.augment_yaw
            )
        loss, _ = rollout_loss(model, latents.to(device), actions.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(latents)
        count += len(latents)
    return total / count


@torch.no_grad()
def evaluate(model: DynamicsMLP, windows: WindowSet, batch_size: int, device: torch.device) -> tuple[float, float]:
    """(mean rollout loss in m^2, mean final-step keypoint error in metres) over all windows (no augmentation)."""
    model.eval()
    total, error, count = 0.0, 0.0, 0
    for begin in range(0, len(windows), batch_size):
        indices = torch.arange(begin, min(begin + batch_size, len(windows)))
        latents, actions = windows.batch(indices)
        loss, final_error = rollout_loss(model, latents.to(device), actions.to(device))
        total += float(loss) * len(indices)
        error += float(final_error.sum())
        count += len(indices)
    return total / count, error / count


# -- checkpoints ----------------------------------------------------------------------------------------
def save_checkpoint(
    out: Path,
    model: DynamicsMLP,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
    best_error: float,
) -> None:
    """Write last.safetensors, last_optim.pt, then last.json (which commits the checkpoint)."""
    save_model_atomic(out / "last.safetensors", model, epoch)
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
    write_atomic(out / "last_optim.pt", lambda p: torch.save(state, p))
    info = {"model": model.config(), "latent": "gt3d", "epoch": epoch, "best_val_final_step_error_m": best_error}
    write_json_atomic(out / "last.json", info)


def save_best(out: Path, model: DynamicsMLP, epoch: int, error: float) -> None:
    save_model_atomic(out / "best.safetensors", model, epoch)
    info = {"model": model.config(), "latent": "gt3d", "epoch": epoch, "val_final_step_error_m": error}
    write_json_atomic(out / "best.json", info)


def load_dynamics(run_dir: str | Path, which: Literal["best", "last"] = "best", device: str = "cpu") -> DynamicsMLP:
    """The model (with its normaliser) saved as `which` in a training run directory, in eval mode.

    Raises:
        FileNotFoundError: the run directory or its checkpoint is missing.
    """
    run_dir = Path(run_dir)
    info_path, weights_path = checkpoint_paths(run_dir, which, "keydyn.dynamics.train_dynamics")
    config = json.loads(info_path.read_text())["model"]
    model = DynamicsMLP(config["latent_dim"], config["history"], config["hidden"])
    model.load_state_dict(load_file(str(weights_path)))
    return model.to(device).eval()


def _restore(
    out: Path, info: dict, model: DynamicsMLP, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> None:
    state = load_training_state(out, info, "epoch")
    model.load_state_dict(load_file(str(out / "last.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])


def train_dynamics(config: TrainDynamicsConfig) -> Path:
    """Train (or resume) a dynamics model; returns the run directory `config.out`."""
    resumed = resumed_checkpoint(config.out, config.resume, config.to_json(), _RESUMABLE_FIELDS)
    train, val = load_windows(config)
    device = resolve_device(config.device)
    model = build_model(config, train)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))
    start_epoch, best_error = 0, math.inf
    metrics = []
    if resumed is not None:
        _restore(config.out, resumed, model, optimizer, generator)
        start_epoch, best_error = resumed["epoch"], resumed["best_val_final_step_error_m"]
        metrics = [row for row in read_lines(config.out / "metrics.jsonl") if row["epoch"] <= start_epoch]
    write_json_atomic(config.out / "config.json", {**config.to_json(), "device": str(device)})
    write_json_atomic(config.out / "task.json", store_task(open_dataset(config.dataset)).to_dict())
    bar = tqdm(range(start_epoch + 1, config.epochs + 1), desc="dynamics", disable=not config.progress)
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(epoch)
        train_loss = train_epoch(model, optimizer, train, config, generator, device)
        val_loss, val_error = evaluate(model, val, config.batch_size, device) if len(val) else (math.nan, math.nan)
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_final_step_error_m": val_error}
        metrics.append(row)
        write_lines_atomic(config.out / "metrics.jsonl", metrics)
        criterion = val_error if len(val) else train_loss
        if criterion < best_error:
            best_error = criterion
            save_best(config.out, model, epoch, criterion)
        save_checkpoint(config.out, model, optimizer, generator, epoch, best_error)
        bar.set_postfix(train=f"{train_loss:.2e}", val_err_m=f"{val_error:.4f}")
    return config.out

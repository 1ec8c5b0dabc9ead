"""Training of the keypoint dynamics model with the paper's multi-step open-loop rollout loss (eq. 1).

A run directory holds:
    config.json            the resolved TrainDynamicsConfig
    task.json              the TaskConfig the dataset was collected with (evaluation rebuilds the task from it)
    metrics.jsonl          one line per epoch: epoch, train_loss, val_loss (m^2), val_final_step_error_m
    last.safetensors       model weights and normaliser buffers after the last finished epoch
    last_optim.pt          Adam state and the training random generator's state of that epoch
    last.json              model config, epoch and best validation error; written last (the commit)
    best.safetensors/json  the model with the lowest validation final-step error so far

Descriptor latents (--latent ds/sds/wds/wsds with --visual-run) add the references, keypoints.png and the cached
dataset keypoints (`keydyn.keypoints.latents`). WDS / WSDS train the convex keypoint weights W jointly with the
model (windows are mapped by W before the loss, so prediction and target are both in z = W x) and store their
alpha in the same checkpoints under `keypoint_weights.`; validation errors are then those of z.

Every file is written atomically (temporary file, then os.replace), so a killed run resumes from its last
finished epoch with `resume=True` and then produces the same weights and metrics as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from keydyn.data.split import split_episodes
from keydyn.dynamics.augment import augment_windows
from keydyn.dynamics.latent import LatentLayout, ground_truth_latents
from keydyn.dynamics.model import PAPER_HIDDEN, DynamicsMLP
from keydyn.dynamics.windows import WindowSet, make_windows
from keydyn.files import read_lines, write_atomic, write_json_atomic, write_lines_atomic
from keydyn.keypoints.latents import DESCRIPTOR_LATENTS, WEIGHTED_LATENTS, descriptor_latents
from keydyn.keypoints.references import KeypointConfig
from keydyn.keypoints.weights import PARAMETER_PREFIX, KeypointWeights
from keydyn.runs import (
    checkpoint_paths,
    load_training_state,
    open_dataset,
    resolve_device,
    resumed_checkpoint,
    store_task,
)

_RESUMABLE_FIELDS = ("epochs", "resume", "progress", "device")  # may differ between a run and its resumption


@dataclass(frozen=True)
class TrainDynamicsConfig:
    """Train a keypoint dynamics model on a dataset's latents."""

    dataset: Path
    """Dataset directory written by `keydyn collect`."""
    out: Path
    """Run directory to create (or to continue with --resume)."""
    latent: Literal["gt3d", "ds", "sds", "wds", "wsds"] = "gt3d"
    """Latent state: gt3d = 4 ground-truth 3D object keypoints + pusher xy; ds / sds = descriptor keypoints
    (K = 50 random / K* = 5 spatial descriptors) located by --visual-run's network; wds / wsds = learnt convex
    combinations of those."""
    visual_run: Path | None = None
    """Run directory of `keydyn train-visual`, required by the descriptor latents."""
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    """How descriptor keypoints are chosen and located (descriptor latents only)."""
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
        if self.visual_run is not None:
            object.__setattr__(self, "visual_run", Path(self.visual_run))
        if self.latent not in ("gt3d", *DESCRIPTOR_LATENTS):
            raise ValueError(f"unknown latent {self.latent!r}; choose gt3d, {', '.join(DESCRIPTOR_LATENTS)}")
        if self.latent in DESCRIPTOR_LATENTS and self.visual_run is None:
            raise ValueError(
                f"--latent {self.latent} locates keypoints with a descriptor network: pass --visual-run with a "
                "run directory of `keydyn train-visual`"
            )
        if self.latent == "gt3d" and self.visual_run is not None:
            raise ValueError("--visual-run is only used by descriptor latents (ds, sds, wds, wsds); drop it for gt3d")
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
        values["visual_run"] = None if self.visual_run is None else str(self.visual_run)
        return values


# -- atomic files ---------------------------------------------------------------------------------------
def save_model_atomic(path: Path, model: DynamicsMLP, epoch: int, weights: KeypointWeights | None) -> None:
    """Weights and normaliser buffers (and the keypoint weights' alpha) as safetensors, tagged with the epoch."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if weights is not None:
        tensors.update(weights.tensors())
    write_atomic(path, lambda p: save_file(tensors, str(p), metadata={"epoch": str(epoch)}))


# -- data -----------------------------------------------------------------------------------------------
def load_windows(config: TrainDynamicsConfig) -> tuple[WindowSet, WindowSet]:
    """(train, validation) windows of the configured latents, split by episode.

    Descriptor latents write their references, picture and keypoint cache into `config.out`, which must exist.

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
    if config.latent in DESCRIPTOR_LATENTS:
        latents = descriptor_latents(store, config.latent, config.visual_run, config.keypoints, config.out)
    else:
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
def build_weights(config: TrainDynamicsConfig, train: WindowSet) -> KeypointWeights | None:
    """The initial convex keypoint weights of WDS / WSDS (None for the other latents)."""
    if config.latent not in WEIGHTED_LATENTS:
        return None
    return KeypointWeights(LatentLayout.from_dim(train.latents.shape[1]).num_keypoints)


def window_batch(
    windows: WindowSet,
    indices: torch.Tensor,
    weights: KeypointWeights | None,
    augment: tuple[torch.Generator, float, float] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows `indices` -> latents (B, n + H, D) and actions (B, n + H - 1, 2), moved by a random SE(2)
    motion when `augment` = (generator, max translation, max yaw) is given, then mapped by `weights`.

    The weights are applied after the motion (convex combinations commute with it), so gradients reach them.
    """
    latents, actions = windows.batch(indices)
    if augment is not None:
        latents, actions = augment_windows(latents, actions, *augment)
    if weights is not None:
        latents = weights(latents.to(weights.alpha.device))
    return latents, actions


def build_model(config: TrainDynamicsConfig, train: WindowSet, weights: KeypointWeights | None) -> DynamicsMLP:
    """A seeded model with its normaliser fitted on (augmented, when enabled) training windows, mapped by the
    initial `weights` for WDS / WSDS."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DynamicsMLP(train.latents.shape[1], config.history, config.hidden)
    augment = None
    if config.augment:
        augment = (torch.Generator().manual_seed(config.seed + 1), config.augment_translation, config.augment_yaw)
    with torch.no_grad():
        latents, actions = window_batch(train, torch.arange(len(train)), weights, augment)
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
    weights: KeypointWeights | None,
    optimizer: torch.optim.Optimizer,
    windows: WindowSet,
    config: TrainDynamicsConfig,
    generator: torch.Generator,
    device: torch.device,
) -> float:
    """One pass over shuffled (and augmented) training windows; returns the mean loss (m^2). The optimizer
    holds the keypoint weights too, when there are any."""
    model.train()
    order = torch.randperm(len(windows), generator=generator)
    augment = (generator, config.augment_translation, config.augment_yaw) if config.augment else None
    total, count = 0.0, 0
    for begin in range(0, len(order), config.batch_size):
        latents, actions = window_batch(windows, order[begin : begin + config.batch_size], weights, augment)
        loss, _ = rollout_loss(model, latents.to(device), actions.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(latents)
        count += len(latents)
    return total / count


@torch.no_grad()
def evaluate(
    model: DynamicsMLP, weights: KeypointWeights | None, windows: WindowSet, batch_size: int, device: torch.device
) -> tuple[float, float]:
    """(mean rollout loss in m^2, mean final-step keypoint error in metres) over all windows (no augmentation),
    of the latents mapped by `weights` when given."""
    model.eval()
    total, error, count = 0.0, 0.0, 0
    for begin in range(0, len(windows), batch_size):
        indices = torch.arange(begin, min(begin + batch_size, len(windows)))
        latents, actions = window_batch(windows, indices, weights, None)
        loss, final_error = rollout_loss(model, latents.to(device), actions.to(device))
        total += float(loss) * len(indices)
        error += float(final_error.sum())
        count += len(indices)
    return total / count, error / count


# -- checkpoints ----------------------------------------------------------------------------------------
def save_checkpoint(
    config: TrainDynamicsConfig,
    model: DynamicsMLP,
    weights: KeypointWeights | None,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
    best_error: float,
) -> None:
    """Write last.safetensors, last_optim.pt, then last.json (which commits the checkpoint)."""
    out = config.out
    save_model_atomic(out / "last.safetensors", model, epoch, weights)
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
    write_atomic(out / "last_optim.pt", lambda p: torch.save(state, p))
    info = {"model": model.config(), "latent": config.latent, "epoch": epoch, "best_val_final_step_error_m": best_error}
    write_json_atomic(out / "last.json", info)


def save_best(
    config: TrainDynamicsConfig, model: DynamicsMLP, weights: KeypointWeights | None, epoch: int, error: float
) -> None:
    save_model_atomic(config.out / "best.safetensors", model, epoch, weights)
    info = {"model": model.config(), "latent": config.latent, "epoch": epoch, "val_final_step_error_m": error}
    write_json_atomic(config.out / "best.json", info)


def load_dynamics(run_dir: str | Path, which: Literal["best", "last"] = "best", device: str = "cpu") -> DynamicsMLP:
    """The model (with its normaliser) saved as `which` in a training run directory, in eval mode.

    Raises:
        FileNotFoundError: the run directory or its checkpoint is missing.
    """
    run_dir = Path(run_dir)
    info_path, weights_path = checkpoint_paths(run_dir, which, "keydyn.dynamics.train_dynamics")
    config = json.loads(info_path.read_text())["model"]
    model = DynamicsMLP(config["latent_dim"], config["history"], config["hidden"])
    tensors = load_file(str(weights_path))
    model.load_state_dict({name: value for name, value in tensors.items() if not name.startswith(PARAMETER_PREFIX)})
    return model.to(device).eval()


def load_keypoint_weights(run_dir: str | Path, which: Literal["best", "last"] = "best") -> KeypointWeights | None:
    """The WDS / WSDS keypoint weights saved with the `which` checkpoint of a run (eval mode), None if it has none."""
    _, weights_path = checkpoint_paths(Path(run_dir), which, "keydyn.dynamics.train_dynamics")
    tensors = load_file(str(weights_path))
    if not any(name.startswith(PARAMETER_PREFIX) for name in tensors):
        return None
    return KeypointWeights.from_tensors(tensors).eval()


def _restore(
    out: Path,
    info: dict,
    model: DynamicsMLP,
    weights: KeypointWeights | None,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    state = load_training_state(out, info, "epoch")
    tensors = load_file(str(out / "last.safetensors"))
    model.load_state_dict({name: value for name, value in tensors.items() if not name.startswith(PARAMETER_PREFIX)})
    if weights is not None:
        weights.load_state_dict({"alpha": tensors[f"{PARAMETER_PREFIX}alpha"]})
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])


def train_dynamics(config: TrainDynamicsConfig) -> Path:
    """Train (or resume) a dynamics model; returns the run directory `config.out`."""
    resumed = resumed_checkpoint(config.out, config, _RESUMABLE_FIELDS)
    train, val = load_windows(config)
    device = resolve_device(config.device)
    weights = build_weights(config, train)
    model = build_model(config, train, weights)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    parameters = list(model.parameters())
    if weights is not None:
        parameters += list(weights.to(device).parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.lr, betas=(0.9, 0.999))
    start_epoch, best_error = 0, math.inf
    metrics = []
    if resumed is not None:
        _restore(config.out, resumed, model, weights, optimizer, generator)
        start_epoch, best_error = resumed["epoch"], resumed["best_val_final_step_error_m"]
        metrics = [row for row in read_lines(config.out / "metrics.jsonl") if row["epoch"] <= start_epoch]
    write_json_atomic(config.out / "config.json", {**config.to_json(), "device": str(device)})
    write_json_atomic(config.out / "task.json", store_task(open_dataset(config.dataset)).to_dict())
    bar = tqdm(range(start_epoch + 1, config.epochs + 1), desc="dynamics", disable=not config.progress)
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(epoch)
        train_loss = train_epoch(model, weights, optimizer, train, config, generator, device)
        val_loss, val_error = (
            evaluate(model, weights, val, config.batch_size, device) if len(val) else (math.nan, math.nan)
        )
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_final_step_error_m": val_error}
        metrics.append(row)
        write_lines_atomic(config.out / "metrics.jsonl", metrics)
        criterion = val_error if len(val) else train_loss
        if criterion < best_error:
            best_error = criterion
            save_best(config, model, weights, epoch, criterion)
        save_checkpoint(config, model, weights, optimizer, generator, epoch, best_error)
        bar.set_postfix(train=f"{train_loss:.2e}", val_err_m=f"{val_error:.4f}")
    return config.out

"""Training of the keypoint dynamics model with the paper's multi-step open-loop rollout loss (eq. 1).

A run directory holds:
    config.json            the resolved TrainDynamicsConfig
    task.json              the TaskConfig the dataset was collected with (evaluation rebuilds the task from it)
    metrics.jsonl          one line per epoch: epoch, train_loss, val_loss (m^2), val_final_step_error_m (and,
                           for a method with `trainable_losses`, train_<term>, val_<term>, train_total_loss and
                           val_total_loss)
    last.safetensors       model weights and normaliser buffers after the last finished epoch
    last_optim.pt          Adam state and the training random generator's state of that epoch
    last.json              model config, epoch, best validation error and the SHA-256 of the three files above;
                           written after them (the commit, `keydyn.runs.commit_checkpoint`)
    best.safetensors/json  the model with the lowest validation final-step error so far (or the lowest
                           metrics entry the method's `selects_by` names; best.json holds the SHA-256 of
                           best.safetensors)

config.json is written first: a directory holding anything of a run holds its config.json.

The latent method --latent names (`keydyn.latents.get_latent`) makes the latents of every dataset frame and may
write files of its own into the run (descriptor latents: the references and keypoints.png, see
`keydyn.latents.descriptor.method`). A method's `trainable` module (WDS / WSDS: the convex keypoint weights W) is
trained jointly with the model: windows are mapped by it before the loss, so prediction and target are both in
z = W x; its tensors are stored in the same checkpoints under the method's `parameter_prefix`, and validation
errors are those of z. Training windows are SE(2)-augmented only for `augmentable` methods.

A method whose latent is computed from images while training (the Autoencoder) gives `frame_inputs`, per-frame
inputs that the windows carry beside the latents; its module then maps (latents, inputs) to z, its
`trainable_losses` (e.g. image reconstruction) are added to the rollout loss and logged, `write_picture` draws it on
held-out frames whenever the best checkpoint is saved, and `normalizes = False` keeps the model's normaliser the
identity (nothing to fit before the encoder is trained).

Every file is written atomically (temporary file, then os.replace) and each checkpoint as a whole, so a run killed
at any moment resumes from its last finished epoch with `resume=True` (one killed before its first starts again)
and then produces the same weights and metrics as an uninterrupted run.

Under torchrun (`keydyn.distributed`) every rank draws the same shuffled, augmented global batch of --batch-size
windows and trains on its share of it (DistributedDataParallel averages the gradients, each rank's loss weighted by
its share), so N processes follow one process's run up to float reduction order (exactly for per-window losses; a
method's `trainable_losses` over the distinct frames of a batch count each rank's frames once). Rank 0 computes the
latents and writes every file, validates and checkpoints; every rank resumes from the checkpoint rank 0 read.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from tqdm import tqdm

from keydyn.data.split import split_episodes
from keydyn.data.store import EpisodeStore
from keydyn.distributed import ONE_PROCESS, World, joined
from keydyn.dynamics.augment import augment_windows
from keydyn.dynamics.model import PAPER_HIDDEN, DynamicsMLP
from keydyn.dynamics.windows import WindowSet, make_windows, window_starts
from keydyn.files import write_json_atomic, write_lines
from keydyn.latents import AutoencoderConfig, KeypointConfig, LatentMethod, get_latent, latent_names
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

RESUMABLE_FIELDS = ("epochs", "resume", "progress", "device")  # may differ between a run and its resumption


@dataclass(frozen=True)
class TrainDynamicsConfig:
    """Train a latent dynamics model on a dataset's latents."""

    dataset: Path
    """Dataset directory written by `keydyn collect`."""
    out: Path
    """Run directory to create (or to continue with --resume)."""
    latent: str = "gt3d"
    """Latent method (`keydyn.latents` registry): gt3d = 4 ground-truth 3D object keypoints + pusher xy;
    ds / sds = descriptor keypoints (K = 50 random / K* = 5 spatial descriptors) located by --visual-run's
    network; wds / wsds = learnt convex combinations of those; transporter3d / transporter2d = the keypoints of
    --transporter-run's Transporter, lifted to world points with depth / as normalised image xy; autoencoder = z
    of a convolutional autoencoder of one camera's image trained jointly with the dynamics (--autoencoder.*;
    --preset autoencoder: the original's training)."""
    visual_run: Path | None = None
    """Run directory of `keydyn train-visual`, required by the descriptor latents."""
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    """How descriptor keypoints are chosen and located (descriptor latents only)."""
    transporter_run: Path | None = None
    """Run directory of `keydyn train-transporter`, required by the transporter3d / transporter2d latents."""
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    """The autoencoder's latent size and camera (--latent autoencoder only)."""
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
    """SE(2) augmentation of training windows (paper appendix 7.1), for latents that allow it (keypoints)."""
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
    preset: str | None = None
    """The recipe these settings start from (keydyn/presets/train-dynamics/<preset>.yaml), as `--preset` or
    `keydyn reproduce` chose it; None for settings built in code. Flags, and the task's own recipe under
    `keydyn reproduce`, override it. Recorded in config.json; resuming compares the settings, not this name."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "dataset", Path(self.dataset))
        object.__setattr__(self, "out", Path(self.out))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        for name in ("visual_run", "transporter_run"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        self.method.check_config(self)
        for name in ("visual_run", "transporter_run"):
            if getattr(self, name) is not None and name not in self.method.settings:
                users = [latent for latent in latent_names() if name in get_latent(latent).settings]
                flag = f"--{name.replace('_', '-')}"
                raise ValueError(f"{flag} is only used by the latents {', '.join(users)}; drop it for {self.latent}")
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
        check_seed(self.seed)

    @property
    def method(self) -> LatentMethod:
        """The registered latent method named by `latent` (ValueError naming the registered ones if unknown)."""
        return get_latent(self.latent)

    @property
    def augments(self) -> bool:
        """Whether training windows are SE(2)-augmented: asked for, and the latent method allows it."""
        return self.augment and self.method.augmentable

    def learning_rate(self, epoch: int) -> float:
        """The step-decayed learning rate of (1-based) `epoch`; a function of the epoch, so resuming needs no state."""
        if self.lr_decay_epochs == 0:
            return self.lr
        return self.lr * self.lr_decay ** ((epoch - 1) // self.lr_decay_epochs)

    def to_json(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["dataset"], values["out"], values["hidden"] = str(self.dataset), str(self.out), list(self.hidden)
        values["visual_run"] = None if self.visual_run is None else str(self.visual_run)
        values["transporter_run"] = None if self.transporter_run is None else str(self.transporter_run)
        cache_dir = self.keypoints.cache_dir
        values["keypoints"]["cache_dir"] = None if cache_dir is None else str(cache_dir)
        return values


def upgrade_stored_config(values: dict[str, Any]) -> dict[str, Any]:
    """A stored TrainDynamicsConfig of a run made by an older keydyn, in the current layout (others unchanged), so
    that such a run resumes with the precisions it was trained with: `keypoints.bf16` (before `keypoints.precision`
    replaced it) as that precision; an `autoencoder` without `precision` (before 2026-11-28, when its networks
    trained only in float32) as fp32, where the new default is bf16."""
    keypoints = values.get("keypoints")
    if isinstance(keypoints, dict) and "bf16" in keypoints:
        upgraded = {name: value for name, value in keypoints.items() if name != "bf16"}
        upgraded["precision"] = "bf16" if keypoints["bf16"] else "fp32"
        values = {**values, "keypoints": upgraded}
    autoencoder = values.get("autoencoder")
    if isinstance(autoencoder, dict) and "precision" not in autoencoder:
        values = {**values, "autoencoder": {**autoencoder, "precision": "fp32"}}
    return values


# -- data -----------------------------------------------------------------------------------------------
def split_dataset(config: TrainDynamicsConfig) -> tuple[EpisodeStore, np.ndarray, np.ndarray]:
    """The dataset and its (training, validation) episodes, checked to give windows of history + horizon frames.

    Raises:
        FileNotFoundError: the dataset is missing.
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
    train_episodes, val_episodes = split_episodes(store.num_episodes, config.val_fraction, config.seed)
    for which, episodes in (("training", train_episodes), ("validation", val_episodes)):
        if (which == "training" or config.val_fraction > 0) and len(window_starts(ends, episodes, needed)) == 0:
            raise ValueError(
                f"the {which} episodes of {config.dataset} are all shorter than history + horizon = {needed} "
                "frames; lower --horizon, change --val-fraction/--seed, or collect more or longer episodes"
            )
    return store, train_episodes, val_episodes


def load_windows(
    config: TrainDynamicsConfig,
    world: World = ONE_PROCESS,
    split: tuple[EpisodeStore, np.ndarray, np.ndarray] | None = None,
) -> tuple[WindowSet, WindowSet]:
    """(train, validation) windows of the configured latents, split by episode (`split`, the result of
    `split_dataset(config)`, which is called when not given).

    The latent method may write files into `config.out` (e.g. descriptor references), which must exist; of several
    ranks (`world`), rank 0 computes the latents and frame inputs and the others receive them.
    """
    store, train_episodes, val_episodes = split if split is not None else split_dataset(config)
    arrays = None
    if world.main:
        arrays = (
            config.method.dataset_latents(store, config, config.out),
            config.method.frame_inputs(store, config, config.out),
        )
    latents, inputs = world.broadcast(arrays)
    actions = np.asarray(store.frames("action"), dtype=np.float32)
    ends = store.episode_ends
    train = make_windows(latents, actions, ends, train_episodes, config.history, config.horizon, inputs)
    val = make_windows(latents, actions, ends, val_episodes, config.history, config.horizon, inputs)
    for which, windows in (("training", train), ("validation", val)):
        if len(windows) == 0 and (which == "training" or config.val_fraction > 0):
            lost = int((~np.isfinite(latents).all(axis=1)).sum())
            raise ValueError(
                f"every {which} window of {config.dataset} holds a frame that --latent {config.latent} could not "
                f"encode ({lost} of {len(latents)} frames have no latent); check those frames (keydyn dataset "
                "video) or the network the latents come from"
            )
    return train, val


# -- model set-up, losses -------------------------------------------------------------------------------
def window_batch(
    windows: WindowSet,
    indices: torch.Tensor,
    trainable: nn.Module | None,
    augment: tuple[torch.Generator, float, float] | None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """Windows `indices` -> latents (B, n + H, D), actions (B, n + H - 1, 2) and frame inputs or None (the
    (U, *F) inputs of the batch's distinct frames and the (B, n + H) row of each entry among them,
    `WindowSet.batch_inputs`). The latents are moved by a random SE(2) motion when `augment` = (generator, max
    translation, max yaw) is given, then mapped by the latent method's `trainable` module (`map_windows`) when
    there is one.
    """
    latents, actions, inputs = drawn_windows(windows, indices, augment)
    if trainable is not None:
        latents, inputs = map_windows(trainable, latents, inputs)
    return latents, actions, inputs


def drawn_windows(
    windows: WindowSet,
    indices: torch.Tensor,
    augment: tuple[torch.Generator, float, float] | None,
    part: slice | None = None,
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """`window_batch` before the `trainable` module, of the windows `part` (a rank's share,
    `keydyn.distributed.World.share`) of `indices`: the motions are drawn for all of `indices` (the same random
    numbers whatever the part), then the part is taken."""
    latents, actions = windows.batch(indices)
    if augment is not None:
        latents, actions = augment_windows(latents, actions, *augment)
    if part is not None:
        latents, actions, indices = latents[part], actions[part], indices[part]
    return latents, actions, windows.batch_inputs(indices)


def map_windows(
    trainable: nn.Module, latents: torch.Tensor, inputs: tuple[torch.Tensor, torch.Tensor] | None
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """(B, n + H, D) window latents mapped by the latent method's `trainable` module (on its device), which also
    reads the frame inputs (moved to its device) when the windows carry them.

    The module is applied after the motion (WDS / WSDS: convex combinations commute with it), so gradients
    reach it.
    """
    device = next(trainable.parameters()).device
    if inputs is None:
        return trainable(latents.to(device)), None
    inputs = (inputs[0].to(device), inputs[1].to(device))
    return trainable(latents.to(device), *inputs), inputs


def build_model(config: TrainDynamicsConfig, train: WindowSet, trainable: nn.Module | None) -> DynamicsMLP:
    """A seeded model with its normaliser fitted on (augmented, when enabled) training windows, mapped by the
    method's initial `trainable` module when there is one (left the identity when the method does not
    `normalizes`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = DynamicsMLP(train.latents.shape[1], config.history, config.hidden)
    if not config.method.normalizes:
        return model
    augment = None
    if config.augments:
        augment = (torch.Generator().manual_seed(config.seed + 1), config.augment_translation, config.augment_yaw)
    with torch.no_grad():
        latents, actions, _ = window_batch(train, torch.arange(len(train)), trainable, augment)
    model.fit_normalizer(latents, actions)
    return model


def rollout_loss(
    model: DynamicsMLP, latents: torch.Tensor, actions: torch.Tensor, method: LatentMethod
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paper eq. (1): MSE (m^2) of the open-loop rollout over the horizon, and the (B,) final-step error.

    Args:
        latents: (B, n + H, D) window latents, metres.
        actions: (B, n + H - 1, 2) window actions, m/s.
        method: the latent method, whose `final_error` measures the last step.

    Returns:
        loss: scalar mean squared error over steps, samples and latent entries.
        final_error: (B,) error of the last predicted step (keypoint latents: the mean Euclidean distance of the
            object keypoints, metres).
    """
    n = model.history
    predicted = model.rollout(latents[:, :n], actions)
    target = latents[:, n:]
    loss = torch.mean((predicted - target) ** 2)
    final_error = method.final_error(predicted[:, -1].detach(), target[:, -1].detach())
    return loss, final_error


def method_losses(
    method: LatentMethod,
    trainable: nn.Module | None,
    latents: torch.Tensor,
    inputs: tuple[torch.Tensor, torch.Tensor] | None,
) -> dict[str, torch.Tensor]:
    """The latent method's `trainable_losses` of a batch of mapped window latents and its frame inputs (as
    `window_batch` gives them); none without a module."""
    if trainable is None:
        return {}
    return method.trainable_losses(trainable, latents, *(inputs or (None, None)))


class Objective(nn.Module):
    """The training loss of a batch as one module holding the model and the method's `trainable` module (or
    None), so that DistributedDataParallel (`keydyn.distributed.World.wrap`) wraps all that is trained."""

    def __init__(self, model: DynamicsMLP, trainable: nn.Module | None, method: LatentMethod) -> None:
        super().__init__()
        self.model, self.trainable, self.method = model, trainable, method

    def forward(
        self, latents: torch.Tensor, actions: torch.Tensor, inputs: tuple[torch.Tensor, torch.Tensor] | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Drawn windows (`drawn_windows`) -> the rollout loss (m^2) and the method's `trainable_losses`."""
        if self.trainable is not None:
            latents, inputs = map_windows(self.trainable, latents, inputs)
        device = next(self.model.parameters()).device
        loss, _ = rollout_loss(self.model, latents.to(device), actions.to(device), self.method)
        return loss, method_losses(self.method, self.trainable, latents, inputs)


def train_epoch(
    objective: nn.Module,
    optimizer: torch.optim.Optimizer,
    windows: WindowSet,
    config: TrainDynamicsConfig,
    generator: torch.Generator,
    world: World = ONE_PROCESS,
) -> tuple[float, dict[str, float]]:
    """One pass over shuffled (and augmented) training windows, minimising the rollout loss plus the method's
    `trainable_losses` (`objective`: an `Objective`, in DistributedDataParallel for several ranks); returns the
    mean rollout loss (m^2) and the mean of each of those terms over all ranks. The optimizer holds the method's
    trainable module too, when there is one.

    Each rank of `world` trains on its share of every batch, its loss weighted by that share; a rank whose share
    is empty (a last batch smaller than the world) computes the loss of the batch's first window with weight 0,
    so that it still takes part in DDP's gradient averaging.
    """
    objective.train()
    order = torch.randperm(len(windows), generator=generator)
    augment = (generator, config.augment_translation, config.augment_yaw) if config.augments else None
    total, count, term_totals = 0.0, 0, {}
    for begin in range(0, len(order), config.batch_size):
        indices = order[begin : begin + config.batch_size]
        part = world.share(len(indices))
        size = part.stop - part.start
        latents, actions, inputs = drawn_windows(windows, indices, augment, part if size else slice(0, 1))
        loss, terms = objective(latents, actions, inputs)
        value = loss + sum(terms.values()) if terms else loss
        optimizer.zero_grad(set_to_none=True)
        (value * world.weight(size, len(indices))).backward()
        optimizer.step()
        total += float(loss.detach()) * size
        for name, term in terms.items():
            term_totals[name] = term_totals.get(name, 0.0) + float(term.detach()) * size
        count += size
    total, count, *sums = world.total([total, count, *term_totals.values()])
    return total / count, {name: value / count for name, value in zip(term_totals, sums, strict=True)}


@torch.no_grad()
def evaluate(
    model: DynamicsMLP,
    trainable: nn.Module | None,
    windows: WindowSet,
    method: LatentMethod,
    batch_size: int,
    device: torch.device,
) -> tuple[float, float, dict[str, float]]:
    """(mean rollout loss in m^2, mean final-step error, `method.final_error`, the mean of each of the method's
    `trainable_losses`) over all windows (no augmentation), of the latents mapped by the `trainable` module when
    given."""
    model.eval()
    total, error, count, term_totals = 0.0, 0.0, 0, {}
    for begin in range(0, len(windows), batch_size):
        indices = torch.arange(begin, min(begin + batch_size, len(windows)))
        latents, actions, inputs = window_batch(windows, indices, trainable, None)
        loss, final_error = rollout_loss(model, latents.to(device), actions.to(device), method)
        for name, value in method_losses(method, trainable, latents, inputs).items():
            term_totals[name] = term_totals.get(name, 0.0) + float(value) * len(indices)
        total += float(loss) * len(indices)
        error += float(final_error.sum())
        count += len(indices)
    return total / count, error / count, {name: value / count for name, value in term_totals.items()}


# -- checkpoints ----------------------------------------------------------------------------------------
def save_model(path: Path, model: DynamicsMLP, epoch: int, method: LatentMethod, trainable: nn.Module | None) -> None:
    """Weights and normaliser buffers (and the method's jointly trained module) as safetensors, tagged with the
    epoch."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if trainable is not None:
        tensors.update(method.trainable_tensors(trainable))
    save_file(tensors, str(path), metadata={"epoch": str(epoch)})


def best_key(method: LatentMethod) -> str:
    """The last.json entry holding the best value so far of the metric that picks the best checkpoint."""
    return f"best_{method.selects_by}"


def picture_frames(windows: WindowSet, count: int = 8) -> torch.Tensor:
    """Up to `count` frame inputs (M, *F) spread evenly over `windows` (the first frame of each chosen window)."""
    chosen = torch.linspace(0, len(windows) - 1, min(count, len(windows))).round().long()
    return windows.inputs[windows.starts[chosen]]


def save_checkpoint(
    config: TrainDynamicsConfig,
    model: DynamicsMLP,
    trainable: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    epoch: int,
    best_error: float,
    metrics: list[dict[str, Any]],
    dataset: dict[str, Any],
) -> None:
    """Commit last.safetensors, last_optim.pt, metrics.jsonl (the rows of epochs 1 .. `epoch`) and last.json (with
    `dataset`, `keydyn.runs.dataset_record`) together (`keydyn.runs.commit_checkpoint`)."""
    state = {"epoch": epoch, "optimizer": optimizer.state_dict(), "generator": generator.get_state()}
    info = {
        "model": model.config(),
        "latent": config.latent,
        "epoch": epoch,
        **dataset,
        best_key(config.method): best_error,
    }
    files = {
        LAST_WEIGHTS: lambda path: save_model(path, model, epoch, config.method, trainable),
        LAST_STATE: lambda path: save_state(state, path),
        METRICS: lambda path: write_lines(path, metrics),
    }
    commit_checkpoint(config.out, "last", files, info)


def save_best(
    config: TrainDynamicsConfig, model: DynamicsMLP, trainable: nn.Module | None, epoch: int, error: float
) -> None:
    """Commit best.safetensors and best.json of `epoch`; `error` is the value of the method's `selects_by`."""
    info = {"model": model.config(), "latent": config.latent, "epoch": epoch, config.method.selects_by: error}
    files = {"best.safetensors": lambda path: save_model(path, model, epoch, config.method, trainable)}
    commit_checkpoint(config.out, "best", files, info)


def load_dynamics(run_dir: str | Path, which: Literal["best", "last"] = "best", device: str = "cpu") -> DynamicsMLP:
    """The model (with its normaliser) saved as `which` in a training run directory, in eval mode, its weights
    verified (`keydyn.runs.load_checkpoint`).

    Raises:
        FileNotFoundError: the run directory or its checkpoint is missing.
        ValueError: the checkpoint is damaged (its JSON, or weights that are truncated or changed).
    """
    run_dir = Path(run_dir)
    info, tensors = load_checkpoint(run_dir, which, "keydyn train-dynamics", ("model",))
    config = info["model"]
    model = DynamicsMLP(config["latent_dim"], config["history"], config["hidden"])
    _load_model_tensors(model, tensors, run_dir / f"{which}.safetensors")
    return model.to(device).eval()


def _load_model_tensors(model: DynamicsMLP, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load the model's own tensors of checkpoint `source` (the latent method's trainable ones sit beside them).

    Raises:
        ValueError: a tensor is missing or of another shape than the model's configuration gives.
    """
    names = model.state_dict().keys()
    load_checked(model, {name: value for name, value in tensors.items() if name in names}, source)


def _restore(
    config: TrainDynamicsConfig,
    resumed: Resumed,
    model: DynamicsMLP,
    trainable: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
) -> None:
    _load_model_tensors(model, resumed.tensors, config.out / LAST_WEIGHTS)
    if trainable is not None:
        config.method.restore_trainable(trainable, resumed.tensors)
    optimizer.load_state_dict(resumed.state["optimizer"])
    generator.set_state(resumed.state["generator"])


def epoch_row(
    epoch: int,
    train_loss: float,
    val_loss: float,
    val_error: float,
    train_terms: dict[str, float],
    val_terms: dict[str, float],
) -> dict[str, Any]:
    """One metrics.jsonl line: the rollout losses and the final-step error, then (for a method with
    `trainable_losses`) each term and the totals that training minimises."""
    row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_final_step_error_m": val_error}
    if train_terms:
        row.update({f"train_{name}": value for name, value in train_terms.items()})
        row.update({f"val_{name}": value for name, value in val_terms.items()})
        row["train_total_loss"] = train_loss + sum(train_terms.values())
        row["val_total_loss"] = val_loss + sum(val_terms.values())
    return row


def selection_value(method: LatentMethod, row: dict[str, Any]) -> float:
    """The value of `row` that picks the best checkpoint (the method's `selects_by`).

    Raises:
        ValueError: the method names an entry the row lacks.
    """
    if method.selects_by not in row:
        raise ValueError(
            f"latent {method.name!r} picks its best checkpoint by {method.selects_by!r}, which metrics.jsonl lacks "
            f"(its entries: {', '.join(row)}); set the method's selects_by to one of those"
        )
    return float(row[method.selects_by])


def unread_settings(method: LatentMethod) -> tuple[str, ...]:
    """The method-specific settings (other latent methods' `settings`) that `method` does not read: a run resumed
    with other values of them trains the same (GT 3D resumed under a recipe with other keypoint settings)."""
    every = {name for latent in latent_names() for name in get_latent(latent).settings}
    return tuple(sorted(every - set(method.settings)))


@one_writer("keydyn train-dynamics")
def train_dynamics(config: TrainDynamicsConfig) -> Path:
    """Train (or resume) a dynamics model; returns the run directory `config.out`. Under torchrun, on every rank
    (`keydyn.distributed`; rank 0 writes the files)."""
    device = resolve_device(config.device)
    with joined(device) as world:
        return _train(config, world, world.device(device))


def _train(config: TrainDynamicsConfig, world: World, device: torch.device) -> Path:
    split = split_dataset(config)  # checks the dataset before anything is written
    store = split[0]
    resumed = None
    if world.main:
        resumed = resumed_checkpoint(
            config.out,
            config,
            RESUMABLE_FIELDS + unread_settings(config.method),
            "epoch",
            store,
            (best_key(config.method),),
            upgrade_stored_config,
        )
        if resumed is not None:
            config.method.check_sources(config.out)  # before a finished run is taken as it is
    resumed = world.broadcast(resumed)
    if has_finished(resumed, "epoch", config.epochs, config.out, quiet=not world.main):
        world.barrier()  # its config.json stays the one it trained with
        return config.out
    if world.main:
        write_json_atomic(config.out / "config.json", {**config.to_json(), "device": str(device)})
        write_json_atomic(config.out / "task.json", store_task(store).to_dict())
    train, val = load_windows(config, world, split)
    with torch.random.fork_rng(devices=[]):  # a module with random initial weights starts the same every run
        torch.manual_seed(config.seed + 2)
        trainable = config.method.trainable(train.latents.shape[1], config)
    model = build_model(config, train, trainable)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device)
    parameters = list(model.parameters())
    if trainable is not None:
        parameters += list(trainable.to(device).parameters())
    optimizer = torch.optim.Adam(parameters, lr=config.lr, betas=(0.9, 0.999))
    start_epoch, best_error, dataset = 0, math.inf, dataset_record(store)
    metrics = []
    if resumed is not None:
        _restore(config, resumed, model, trainable, optimizer, generator)
        start_epoch, best_error = resumed.info["epoch"], resumed.info[best_key(config.method)]
        metrics = resumed.metrics
    objective = world.wrap(Objective(model, trainable, config.method), device)
    pictured = picture_frames(val) if trainable is not None and val.inputs is not None and len(val) else None
    progress = config.progress and world.main
    bar = tqdm(range(start_epoch + 1, config.epochs + 1), desc="dynamics", disable=not progress)
    for epoch in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate(epoch)
        train_loss, train_terms = train_epoch(objective, optimizer, train, config, generator, world)
        check_finite_loss(train_loss + sum(train_terms.values()), f"epoch {epoch}")
        if not world.main:
            continue  # rank 0 validates and writes; the others go on to the next epoch's gradient averaging
        val_loss, val_error, val_terms = math.nan, math.nan, dict.fromkeys(train_terms, math.nan)
        if len(val):
            val_loss, val_error, val_terms = evaluate(model, trainable, val, config.method, config.batch_size, device)
        row = epoch_row(epoch, train_loss, val_loss, val_error, train_terms, val_terms)
        metrics.append(row)
        criterion = selection_value(config.method, row) if len(val) else train_loss + sum(train_terms.values())
        if criterion < best_error:
            best_error = criterion
            save_best(config, model, trainable, epoch, criterion)
            if pictured is not None:
                with torch.no_grad():
                    config.method.write_picture(trainable, pictured.to(next(trainable.parameters()).device), config.out)
        save_checkpoint(config, model, trainable, optimizer, generator, epoch, best_error, metrics, dataset)
        bar.set_postfix(train=f"{train_loss:.2e}", val_err_m=f"{val_error:.4f}")
    world.barrier()  # the last checkpoint is written when any rank returns
    return config.out

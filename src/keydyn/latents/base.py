"""The contract every latent method fulfils, shared by dynamics, control and evaluation.

A latent state z is a flat float32 vector of size D that ends with the pusher's world xy (PUSHER_DIM entries,
metres); the entries before it describe the object. Dynamics, planning, control and evaluation never look
inside them except through the run's `LatentMethod`. Keypoint latents (GT 3D, the descriptor latents) lay
them out as D = 3 K + 2 (`LatentLayout`):

    z = [x_1, y_1, z_1, ..., x_K, y_K, z_K, pusher_x, pusher_y]

the K object keypoints in the world frame (metres), which SE(2) augmentation moves and videos draw.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from keydyn.data.store import EpisodeStore
from keydyn.runs import load_checkpoint
from keydyn.sim.config import TaskConfig
from keydyn.sim.observations import ObservationError

PUSHER_DIM = 2  # the pusher's world xy, metres


class SourceChangedError(ValueError):
    """A network that a dynamics run's latents were computed with (a descriptor or Transporter run) has changed
    since the dynamics run was trained: its model no longer matches the latents the network gives."""


@dataclass(frozen=True)
class LatentLayout:
    """Where things sit in a keypoint latent of `num_keypoints` object keypoints plus the pusher xy."""

    num_keypoints: int

    @property
    def dim(self) -> int:
        """D = 3 K + 2."""
        return 3 * self.num_keypoints + PUSHER_DIM

    @property
    def keypoint_dim(self) -> int:
        """3 K: the object-keypoint part of the latent."""
        return 3 * self.num_keypoints

    @staticmethod
    def from_dim(dim: int) -> LatentLayout:
        """The layout of a latent of size `dim` (must be 3 K + 2 with K >= 1)."""
        if dim < 5 or (dim - PUSHER_DIM) % 3:
            raise ValueError(f"a latent has 3 K + 2 entries (K object keypoints, pusher xy); got size {dim}")
        return LatentLayout((dim - PUSHER_DIM) // 3)

    def pack(self, keypoints: np.ndarray, pusher_xy: np.ndarray) -> np.ndarray:
        """(..., K, 3) keypoints and (..., 2) pusher xy, metres -> (..., D) latents."""
        keypoints = np.asarray(keypoints)
        flat = keypoints.reshape(*keypoints.shape[:-2], self.keypoint_dim)
        return np.concatenate([flat, np.asarray(pusher_xy, dtype=flat.dtype)], axis=-1)

    def keypoints(self, latents: np.ndarray) -> np.ndarray:
        """(..., D) latents -> (..., K, 3) object keypoints, metres."""
        return latents[..., : self.keypoint_dim].reshape(*latents.shape[:-1], self.num_keypoints, 3)

    def pusher(self, latents: np.ndarray) -> np.ndarray:
        """(..., D) latents -> (..., 2) pusher xy, metres."""
        return latents[..., self.keypoint_dim :]


class LatentEncoder(Protocol):
    """Maps an environment observation to a (D,) float32 latent (ending with the pusher xy, metres).

    needs_images: whether `encode` reads camera images (the environment may skip rendering otherwise).
    """

    needs_images: bool

    def reset(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Prepare for an episode whose first observation is given (e.g. pick the object's keypoints)."""

    def encode(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> np.ndarray:
        """(D,) float32 latent of the current observation."""


@runtime_checkable
class BatchLatentEncoder(LatentEncoder, Protocol):
    """An encoder that also encodes B observations in one call (one network call per camera: what a GPU needs of B
    environments in lockstep). It keeps no per-episode state, so B closed loops may share one."""

    def encode_batch(
        self, observations: Sequence[Mapping[str, Any]], infos: Sequence[Mapping[str, Any]]
    ) -> list[np.ndarray | ObservationError]:
        """Each observation's (D,) float32 latent, as `encode` gives it alone (to float tolerance), or the
        ObservationError that refuses it (the others are still encoded)."""

    def to(self, device: torch.device) -> None:
        """Run the encoder's networks on `device` (cuda for a GPU); the latents are still CPU float32 arrays."""


class LatentMethod(ABC):
    """A way of turning observations into latent states, chosen by name (`keydyn.latents.register_latent`).

    A method sets `name` (the --latent value), `label` (its name in result tables) and implements
    `dataset_latents` (training data) and `make_encoder` (control time). The other hooks default to a plain
    vector latent: no augmentation, nothing trained jointly, costs on the L2 distance of everything but the
    pusher, nothing drawn in videos.
    """

    name: str
    label: str
    augmentable: bool = False
    """Whether SE(2) augmentation (`keydyn.dynamics.augment`) may move the latents: only for `LatentLayout`
    keypoint latents in the world frame."""
    settings: tuple[str, ...] = ()
    """The TrainDynamicsConfig fields beyond the common ones that the method reads (e.g. visual_run)."""
    parameter_prefix: str = "latent."
    """Key prefix of the `trainable` module's tensors inside the dynamics checkpoints."""
    normalizes: bool = True
    """Whether the dynamics model's normaliser is fitted on the training windows; False leaves it the identity
    (a latent learned jointly from images has no scale to fit before training)."""
    selects_by: str = "val_final_step_error_m"
    """The metrics.jsonl entry whose lowest value picks the best checkpoint (stored in best.json under this name,
    in last.json as `best_<name>`): the validation final-step error, or `val_total_loss`, the validation rollout
    loss plus the method's `trainable_losses`."""

    @abstractmethod
    def dataset_latents(self, store: EpisodeStore, config: Any, out: Path) -> np.ndarray:
        """(N, D) float32 latents of every frame of `store`.

        config: the TrainDynamicsConfig (read only the fields in `settings`); out: the dynamics run directory,
        where the method may write what its encoder needs later (e.g. reference descriptors).
        """

    @abstractmethod
    def make_encoder(self, run_dir: Path, task: TaskConfig, which: str) -> LatentEncoder:
        """The control-time encoder of a dynamics run of this method, on the CPU.

        run_dir: the run directory; task: the task being controlled; which: the checkpoint ("best" or "last")
        whose jointly trained module (`load_trainable`) the encoder applies.
        """

    def check_config(self, config: Any) -> None:  # noqa: B027 (optional: most methods need no settings)
        """Raise ValueError when `config` (a TrainDynamicsConfig) lacks a setting the method needs."""

    def check_sources(self, run_dir: Path) -> None:  # noqa: B027 (optional: most methods read no other run)
        """Raise SourceChangedError when a network whose outputs are this method's latents in dynamics run `run_dir` has
        changed since `dataset_latents` recorded it there; nothing when the run has recorded none yet. Called before
        a run is resumed, so that a finished run is not reused on a network trained further since."""

    def trainable(self, latent_dim: int, config: Any = None) -> nn.Module | None:
        """A fresh module trained jointly with the dynamics, mapping (..., D) window latents to the (..., D)
        latents the loss compares (prediction and target alike); None when the method has none. A method with
        `frame_inputs` gets a module called as `module(latents (B, T, D), inputs (U, *F), rows (B, T))`: the
        inputs of the batch's U distinct frames and the row of each window entry among them (windows overlap, so
        each frame is computed once).

        config: the TrainDynamicsConfig being trained (read only the fields in `settings`, e.g. a precision to
        train the module in); None at control time (`load_trainable`), where the module runs in float32."""
        return None

    def frame_inputs(self, store: EpisodeStore, config: Any, out: Path) -> np.ndarray | None:
        """(N, *F) inputs of every frame of `store` that the `trainable` module reads beside the latents (e.g. the
        frames' images, from which it computes the latents); None (default) when it reads the latents only.

        Windows carry them beside their latents; config and out as in `dataset_latents`.
        """
        return None

    def trainable_losses(
        self, module: nn.Module, latents: torch.Tensor, inputs: torch.Tensor | None, rows: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """Loss terms the method adds to the rollout loss, by name (e.g. {"reconstruction": ...}); each a scalar
        of (B, T, D) window latents already mapped by `module` and the batch's frame inputs as the module got
        them ((U, *F) distinct frames, (B, T) rows; None without `frame_inputs`). Training minimises the rollout
        loss plus their sum; metrics.jsonl logs each as `train_<name>` and `val_<name>`. Default: none."""
        return {}

    def write_picture(self, module: nn.Module, inputs: torch.Tensor, out: Path) -> None:  # noqa: B027 (optional)
        """Draw the `trainable` module on (M, *F) held-out `frame_inputs` into the run directory `out` (e.g.
        reconstructions), each time the best checkpoint is saved. Default: nothing."""

    def trainable_tensors(self, module: nn.Module) -> dict[str, torch.Tensor]:
        """`module`'s state under `parameter_prefix`, as saved beside the dynamics model's tensors."""
        return {f"{self.parameter_prefix}{k}": v.detach().cpu().contiguous() for k, v in module.state_dict().items()}

    def restore_trainable(self, module: nn.Module, tensors: Mapping[str, torch.Tensor]) -> None:
        """Load `module`'s state from a dynamics checkpoint's `tensors` (those under `parameter_prefix`)."""
        prefix = self.parameter_prefix
        module.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})

    def load_trainable(self, run_dir: Path, which: str) -> nn.Module | None:
        """The module trained with the `which` checkpoint of a dynamics run (eval mode, CPU); None if none."""
        info, tensors = load_checkpoint(Path(run_dir), which, "keydyn train-dynamics", ("model",))
        module = self.trainable(int(info["model"]["latent_dim"]))
        if module is None:
            return None
        self.restore_trainable(module, tensors)
        return module.eval()

    def cost_part(self, latent_dim: int) -> slice:
        """The entries of a (D,) latent that goal-reaching and tracking costs compare (L2, times
        MPCConfig.cost_scale): all but the pusher xy, which is free."""
        return slice(0, latent_dim - PUSHER_DIM)

    def final_error(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, D) predicted and true latents -> (B,) error logged as val_final_step_error_m (and choosing the
        best checkpoint): the L2 distance of the `cost_part`."""
        part = self.cost_part(predicted.shape[-1])
        return (predicted[..., part] - target[..., part]).norm(dim=-1)

    def video_points(self, latent: np.ndarray) -> np.ndarray | None:
        """(D,) latent -> (P, 3) world points (metres) drawn on episode videos; None draws nothing."""
        return None


class KeypointLatent(LatentMethod):
    """The hooks of a `LatentLayout` latent (K world keypoints, then the pusher xy): augmented, costs on the
    3 K keypoint entries, errors as the mean keypoint distance, keypoints drawn in videos."""

    augmentable = True

    def cost_part(self, latent_dim: int) -> slice:
        return slice(0, LatentLayout.from_dim(latent_dim).keypoint_dim)

    def final_error(self, predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """(B, D) predicted and true latents -> (B,) mean Euclidean distance of the K keypoints, metres."""
        part = self.cost_part(predicted.shape[-1])
        difference = predicted[..., part] - target[..., part]
        return difference.reshape(len(difference), -1, 3).norm(dim=-1).mean(dim=-1)

    def video_points(self, latent: np.ndarray) -> np.ndarray:
        """(D,) latent -> (K, 3) world keypoints, metres."""
        return LatentLayout.from_dim(latent.shape[-1]).keypoints(latent)

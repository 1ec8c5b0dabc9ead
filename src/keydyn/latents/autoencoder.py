"""--latent autoencoder: the paper's Autoencoder baseline, a convolutional autoencoder trained jointly with the
dynamics (the contrastive forward model's encoder and decoder, `keydyn.vision.autoencoder`).

z = [e(I), pusher_x, pusher_y]: the encoder's z_dim entries (--autoencoder.z-dim, 64 by default; 16 and 32 as the
paper tried) of the whole RGB image of one camera (--autoencoder.camera, default the task's first) resized to
64 x 64, then the pusher's world xy (metres). The latent cannot be precomputed: the dataset latents hold only the
pusher, the windows carry each frame's 64 x 64 image (`frame_inputs`) and the jointly trained module
(`AutoencoderModule`) encodes them inside the loss, so the rollout loss in [z, pusher] trains the encoder too
(the targets are the encoder's own outputs, no stop-gradient, as the original), and the reconstruction of every
window frame by the decoder (mean squared error on images in [0, 1], weight 1) is added to it. The dynamics
model's normaliser stays the identity (the original normalises nothing), no SE(2) augmentation applies, and the
best checkpoint is the one with the lowest validation total loss (`val_total_loss`: rollout plus reconstruction),
as the original.

A run holds, besides the dynamics files, `autoencoder.json` (the camera and the image size) and
`reconstructions.png` (held-out validation frames and their reconstructions, redrawn with each best checkpoint);
the encoder and decoder live in the dynamics checkpoints under `autoencoder.`. At control time the observation's
image of that camera is encoded the same way (the goal image too), and costs compare the z entries (L2).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from keydyn.data.store import EpisodeStore
from keydyn.files import read_json, write_json_atomic
from keydyn.latents.base import PUSHER_DIM, LatentMethod
from keydyn.latents.registry import register_latent
from keydyn.runs import store_task
from keydyn.sim.config import TaskConfig
from keydyn.sim.observations import check_observation, observed_rgb
from keydyn.vision.autoencoder import (
    IMAGE_SIZE,
    Z_DIMS,
    ImageDecoder,
    ImageEncoder,
    encoder_input,
    prepare_images,
    reconstruction_target,
    write_reconstruction_picture,
)

SETTINGS_FILE = "autoencoder.json"  # the camera and image size of a run of --latent autoencoder
PICTURE_FILE = "reconstructions.png"
EPISODES_PER_READ = 8  # episodes read from the store at once while preparing the images


@dataclass(frozen=True)
class AutoencoderConfig:
    """The Autoencoder latent's settings (--latent autoencoder)."""

    z_dim: Literal[16, 32, 64] = 64
    """Size of the encoder's latent (the paper tried 16 to 64 and used 64)."""
    camera: str | None = None
    """Camera whose whole image is encoded; default the task's first camera."""
    precision: Literal["fp32", "bf16"] = "bf16"
    """Beyond the original (fp32): bf16 trains the encoder and decoder under bfloat16 autocast (their outputs cast to
    float32; the dynamics model and the losses stay float32): 0.41x the time of a training step on the CPU
    (benchmarks/baselines.py). Control time encodes in float32 either way."""

    def __post_init__(self) -> None:
        if self.z_dim not in Z_DIMS:
            raise ValueError(f"--autoencoder.z-dim {self.z_dim}: use one of {', '.join(map(str, Z_DIMS))}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"--autoencoder.precision {self.precision!r}: use 'fp32' or 'bf16'")


class AutoencoderModule(nn.Module):
    """The encoder and decoder trained jointly with the dynamics.

    Called as `module(latents (B, T, D), images (U, 3, 64, 64) uint8, rows (B, T)) -> (B, T, D)`: the first D - 2
    entries of each window entry become the encoder's z of its image `images[rows]` (each distinct image encoded
    once), the last two (the pusher xy, metres) are kept. With precision "bf16" the encoder and decoder run under
    bfloat16 autocast; what they return is cast to float32.
    """

    def __init__(self, z_dim: int, precision: str = "fp32") -> None:
        super().__init__()
        self.z_dim, self.precision = z_dim, precision
        self.encoder = ImageEncoder(z_dim)
        self.decoder = ImageDecoder(z_dim)

    def _autocast(self, images: torch.Tensor) -> torch.autocast:
        return torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(..., 3, 64, 64) uint8 images -> (..., z_dim) float32 latents."""
        flat = images.reshape(-1, *images.shape[-3:])
        with self._autocast(images):
            z = self.encoder(encoder_input(flat))
        return z.float().reshape(*images.shape[:-3], self.z_dim)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z_dim) latents -> (B, 3, 64, 64) float32 images in [0, 1]."""
        with self._autocast(z):
            return self.decoder(z).float()

    def forward(self, latents: torch.Tensor, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.encode(images)[rows], latents[..., -PUSHER_DIM:]], dim=-1)

    def reconstruction_error(self, latents: torch.Tensor, images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Mean over every window entry of the squared error of its image's reconstruction (images in [0, 1]),
        each distinct image decoded once from the z of the (B, T, D) `latents` that the module gave it; images
        (U, 3, 64, 64) uint8 and rows (B, T) as in `forward`."""
        flat_rows = rows.flatten()
        entries = torch.arange(len(flat_rows), device=rows.device)
        first = torch.full((len(images),), len(flat_rows), device=rows.device)
        first = first.scatter_reduce(0, flat_rows, entries, "amin")  # an entry of each distinct image
        z = latents.reshape(-1, latents.shape[-1])[first, : self.z_dim]
        errors = ((self.decode(z) - reconstruction_target(images)) ** 2).mean(dim=(1, 2, 3))
        return errors[flat_rows].mean()


def run_camera(task: TaskConfig, camera: str | None) -> str:
    """The camera the autoencoder reads: `camera`, or the task's first.

    Raises:
        ValueError: the task has no camera of that name.
    """
    name = task.camera_names[0] if camera is None else camera
    if name not in task.camera_names:
        raise ValueError(
            f"--autoencoder.camera {name!r}: task {task.name!r} has the cameras {', '.join(task.camera_names)}"
        )
    return name


def dataset_images(store: EpisodeStore, camera: str) -> np.ndarray:
    """(N, 3, 64, 64) uint8 images of every frame of `store` seen by `camera` (read a few episodes at a time)."""
    parts = []
    for first in range(0, store.num_episodes, EPISODES_PER_READ):
        start = store.episode_range(first)[0]
        stop = store.episode_range(min(first + EPISODES_PER_READ, store.num_episodes) - 1)[1]
        parts.append(prepare_images(store.frames(f"{camera}/rgb", start, stop)).numpy())
    return np.concatenate(parts)


class AutoencoderEncoder:
    """The Autoencoder at control time: the chosen camera's image -> [z, pusher xy] (D,) float32."""

    needs_images = True

    def __init__(self, module: AutoencoderModule, camera: str, image_size: tuple[int, int] | None = None) -> None:
        """module: the trained encoder (eval mode); image_size: the camera's (width, height), None accepts any."""
        self.module, self.camera, self.image_size = module, camera, image_size

    def reset(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Nothing to prepare: each image is encoded on its own."""

    @torch.no_grad()
    def encode(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> np.ndarray:
        check_observation(observation)  # the pusher position
        rgb = observed_rgb(observation, self.camera, self.image_size)
        z = self.module.encode(prepare_images(rgb)[None])[0].numpy()
        return np.concatenate([z, np.asarray(observation["pusher_position"], dtype=np.float32)]).astype(np.float32)


class AutoencoderLatent(LatentMethod):
    """--latent autoencoder: z of an autoencoder trained jointly with the dynamics, then the pusher xy."""

    name = "autoencoder"
    label = "Autoencoder"
    settings = ("autoencoder",)
    parameter_prefix = "autoencoder."
    normalizes = False
    selects_by = "val_total_loss"

    def dataset_latents(self, store: EpisodeStore, config: Any, out: Path) -> np.ndarray:
        """(N, z_dim + 2) float32: zeros where the encoder's z goes (computed while training), then the pusher xy.

        Writes autoencoder.json (the camera, resolved against the dataset's task) into `out`.
        """
        camera = run_camera(store_task(store), config.autoencoder.camera)
        write_json_atomic(out / SETTINGS_FILE, {"camera": camera, "image_size": IMAGE_SIZE})
        pusher = np.asarray(store.frames("pusher_position"), dtype=np.float32)
        return np.concatenate([np.zeros((len(pusher), config.autoencoder.z_dim), np.float32), pusher], axis=1)

    def frame_inputs(self, store: EpisodeStore, config: Any, out: Path) -> np.ndarray:
        """(N, 3, 64, 64) uint8: every frame's image of the chosen camera, resized."""
        return dataset_images(store, run_camera(store_task(store), config.autoencoder.camera))

    def trainable(self, latent_dim: int, config: Any = None) -> AutoencoderModule:
        """The encoder and decoder for a latent of `latent_dim` = z_dim + 2, in config.autoencoder.precision."""
        return AutoencoderModule(latent_dim - PUSHER_DIM, "fp32" if config is None else config.autoencoder.precision)

    def trainable_losses(
        self, module: nn.Module, latents: torch.Tensor, inputs: torch.Tensor | None, rows: torch.Tensor | None
    ) -> dict[str, torch.Tensor]:
        """{"reconstruction": the mean squared error of every window frame's reconstruction, images in [0, 1]}."""
        return {"reconstruction": module.reconstruction_error(latents, inputs, rows)}

    def write_picture(self, module: nn.Module, inputs: torch.Tensor, out: Path) -> None:
        """reconstructions.png: the held-out frames (top row) and their reconstructions (bottom row)."""
        write_reconstruction_picture(out / PICTURE_FILE, inputs, module.decode(module.encode(inputs)))

    def make_encoder(self, run_dir: Path, task: TaskConfig, which: str) -> AutoencoderEncoder:
        """The `which` checkpoint's encoder, reading autoencoder.json's camera at the task's resolution.

        Raises:
            FileNotFoundError: the run has no autoencoder.json (not a run of --latent autoencoder).
        """
        path = Path(run_dir) / SETTINGS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run of --latent autoencoder")
        camera = run_camera(task, read_json(path, ("camera",))["camera"])
        return AutoencoderEncoder(self.load_trainable(run_dir, which), camera, (task.width, task.height))


register_latent(AutoencoderLatent())

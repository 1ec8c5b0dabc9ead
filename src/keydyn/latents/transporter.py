"""Transporter 3D and Transporter 2D (the paper's Table 2 baselines): keypoints of a frozen Transporter network
(`keydyn train-transporter`, --transporter-run) as the latent state.

    transporter3d   z = [K world points (metres), pusher xy]: each keypoint's depth read at its (rounded) pixel of
                    the full depth image, unprojected with the camera's intrinsics and pose (D = 3 K + 2); a
                    `KeypointLatent`, so SE(2) augmentation applies, as the original's `_T_aug` variant
    transporter2d   z = [K normalised full-image (x, y) in [-1, 1], pusher xy] (D = 2 K + 2); not augmented

Both read one camera (the one the Transporter was trained on). With a Transporter trained on mask crops the
encoder crops the live image around the observation's object mask (NAME/mask), the simulator's segmentation, as
the original did at evaluation (privileged). A dynamics run of these latents holds transporter_network.json: the
Transporter run (its path relative to the dynamics run) and the SHA-256 of its best weights.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keydyn.data.store import EpisodeStore
from keydyn.files import read_json, write_json_atomic
from keydyn.latents.base import KeypointLatent, LatentMethod, SourceChangedError
from keydyn.latents.descriptor.dataset import network_hash
from keydyn.latents.registry import register_latent
from keydyn.sim.config import TaskConfig
from keydyn.sim.observations import FORMAT, ObservationError, check_observation, observed_mask, observed_rgb
from keydyn.vision.geometry import unproject_to_world
from keydyn.vision.transporter import check_masks, full_image_pixels, normalised_image_xy, prepare_images
from keydyn.vision.transporter_train import TransporterModel, load_transporter

IDENTITY = "transporter_network.json"  # inside a dynamics run: which Transporter run it was trained with
BATCH = 256  # frames located at a time


@dataclass(frozen=True)
class LocatedKeypoints:
    """Transporter keypoints of B frames.

    Attributes:
        pixels: (B, K, 2) float64 full-image pixels (u, v).
        xy: (B, K, 2) float64 normalised full-image coordinates in [-1, 1] (the 2D latent).
        points_world: (B, K, 3) float64 world points, metres (NaN where the depth at the pixel is unknown); None
            when no depth was given.
    """

    pixels: torch.Tensor
    xy: torch.Tensor
    points_world: torch.Tensor | None


@torch.no_grad()
def locate(
    model: TransporterModel,
    rgb: torch.Tensor,
    mask: torch.Tensor | None,
    depth: torch.Tensor | None = None,
    intrinsics: torch.Tensor | None = None,
    T_world_camera: torch.Tensor | None = None,
) -> LocatedKeypoints:
    """The Transporter's keypoints in full camera images, lifted to 3D when `depth` is given.

    Args:
        model: a trained Transporter (`load_transporter`).
        rgb: (B, H, W, 3) uint8 images of the model's camera.
        mask: (B, H, W) object masks (crop "mask" only; else None).
        depth: (B, H, W) z-depth, metres; intrinsics (3, 3) K in pixels; T_world_camera (4, 4), metres.
    """
    size = model.net.config.image_size
    prepared = prepare_images(rgb, mask if model.crop == "mask" else None, model.crop, size)
    keypoints = model.net.keypoints(prepared.images.float() / 127.5 - 1.0)
    pixels = full_image_pixels(keypoints, prepared.boxes, size // 4)
    height, width = rgb.shape[1:3]
    xy = normalised_image_xy(pixels, width, height).clamp(-1.0, 1.0)
    if depth is None:
        return LocatedKeypoints(pixels, xy, None)
    u = pixels[..., 0].round().long().clamp(0, width - 1)
    v = pixels[..., 1].round().long().clamp(0, height - 1)
    # (B, K): the depth of the pixel the keypoint lies in (the original truncates its edge-based coordinate: same pixel)
    z = depth.double()[torch.arange(len(depth))[:, None], v, u]
    z = torch.where(torch.isfinite(z) & (z > 0), z, torch.nan)
    points = unproject_to_world(pixels, z, intrinsics.double(), T_world_camera.double())
    return LocatedKeypoints(pixels, xy, points)


def load_run_transporter(run_dir: Path) -> TransporterModel:
    """The Transporter (best checkpoint) a dynamics run of transporter3d / transporter2d was trained with.

    Raises:
        FileNotFoundError: `run_dir` has no transporter_network.json (not a run of these latents).
        SourceChangedError: the Transporter's weights changed since the dynamics run was trained.
    """
    path = Path(run_dir) / IDENTITY
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run of a transporter --latent")
    identity = read_json(path, ("transporter_run", "network_sha256"))
    model = load_transporter(Path(run_dir) / identity["transporter_run"], "best")
    if network_hash(model.net) != identity["network_sha256"]:
        raise SourceChangedError(
            f"the best network of {identity['transporter_run']} changed since {run_dir} was trained; train the "
            "dynamics anew on the current network (keydyn train-dynamics --transporter-run, in a new --out)"
        )
    return model


class TransporterEncoder:
    """Transporter latents at control time, from observation[f"{camera}/rgb"] (and NAME/mask for the mask crop,
    NAME/depth, NAME/intrinsics and NAME/pose for 3D) and observation["pusher_position"]; nothing from `info`."""

    needs_images = True

    def __init__(self, model: TransporterModel, lift: bool, image_size: tuple[int, int] | None = None) -> None:
        self.model, self.lift, self.image_size = model, lift, image_size

    def reset(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Nothing to prepare."""

    def encode(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> np.ndarray:
        """(3 K + 2,) (transporter3d, metres) or (2 K + 2,) (transporter2d) float32 latent."""
        camera = self.model.camera
        check_observation(observation, (camera,) if self.lift else (), self.image_size)  # 2D reads no depth
        rgb = observed_rgb(observation, camera, self.image_size)
        mask = None
        if self.model.crop == "mask":
            if f"{camera}/mask" not in observation:
                raise ObservationError(
                    f"the observation has no {camera}/mask: this Transporter was trained on mask crops and needs the "
                    f"object mask at control time too; give it, or train with --crop full ({FORMAT})"
                )
            mask = torch.as_tensor(observed_mask(observation, camera, rgb.shape[:2]))[None]
        rgb = torch.as_tensor(rgb)[None]
        pusher = np.asarray(observation["pusher_position"], dtype=np.float64)
        if not self.lift:
            located = locate(self.model, rgb, mask)
            return np.concatenate([located.xy[0].flatten().numpy(), pusher]).astype(np.float32)
        located = locate(
            self.model,
            rgb,
            mask,
            torch.as_tensor(np.asarray(observation[f"{camera}/depth"]))[None],
            torch.as_tensor(np.asarray(observation[f"{camera}/intrinsics"])),
            torch.as_tensor(np.asarray(observation[f"{camera}/pose"])),
        )
        points = located.points_world[0]
        lost = torch.nonzero(~torch.isfinite(points).all(dim=-1)).flatten().tolist()
        if lost:
            raise ObservationError(
                f"Transporter keypoints {', '.join(map(str, lost))} fall on pixels without depth in observation "
                f"{camera}/depth; fill the depth image's holes ({FORMAT})"
            )
        return np.concatenate([points.flatten().numpy(), pusher]).astype(np.float32)


class _TransporterMethod:
    """What transporter3d and transporter2d share: the --transporter-run setting, the dataset's keypoints and the
    encoder."""

    name: str
    lift: bool
    settings = ("transporter_run",)

    def check_config(self, config: Any) -> None:
        if config.transporter_run is None:
            raise ValueError(
                f"--latent {self.name} reads the keypoints of a trained Transporter: pass --transporter-run with a "
                "run directory of `keydyn train-transporter`"
            )

    def check_sources(self, run_dir: Path) -> None:
        if (Path(run_dir) / IDENTITY).exists():
            load_run_transporter(run_dir)

    def dataset_latents(self, store: EpisodeStore, config: Any, out: Path) -> np.ndarray:
        """(N, D) float32 latents of every dataset frame of the Transporter's camera; writes transporter_network.json.

        Raises:
            ValueError: the dataset lacks the Transporter's camera, a frame's object mask is empty (a mask-crop
                Transporter), a keypoint falls where depth is unknown (transporter3d), or a resumed run's
                Transporter changed.
        """
        run = Path(config.transporter_run)
        model = load_transporter(run, "best")
        camera = model.camera
        cameras = store.attrs["cameras"]
        if camera not in cameras:
            raise ValueError(f"{run} was trained on camera {camera!r}, which {store.path} lacks ({', '.join(cameras)})")
        identity = {
            "transporter_run": os.path.relpath(run.resolve(), out.resolve()),  # relative: the runs can move together
            "network_sha256": network_hash(model.net),
        }
        if (out / IDENTITY).exists():
            trained_with = read_json(out / IDENTITY, ("network_sha256",))["network_sha256"]
            if trained_with != identity["network_sha256"]:
                raise SourceChangedError(
                    f"the best network of {run} changed since {out} started; train the dynamics anew in a new --out"
                )
        write_json_atomic(out / IDENTITY, identity)
        intrinsics = torch.tensor(cameras[camera]["intrinsics"], dtype=torch.float64)
        pose = torch.tensor(cameras[camera]["pose"], dtype=torch.float64)
        parts = []
        for begin in range(0, store.num_frames, BATCH):
            stop = min(begin + BATCH, store.num_frames)
            rgb = torch.as_tensor(store.frames(f"{camera}/rgb", begin, stop))
            mask = torch.as_tensor(store.frames(f"{camera}/mask", begin, stop)) if model.crop == "mask" else None
            if mask is not None:
                check_masks(mask, rgb.shape[:3], begin, f"{store.path}, camera {camera}")
            if not self.lift:
                parts.append(locate(model, rgb, mask).xy.flatten(1))
                continue
            depth = torch.as_tensor(store.frames(f"{camera}/depth", begin, stop))
            parts.append(locate(model, rgb, mask, depth, intrinsics, pose).points_world.flatten(1))
        values = torch.cat(parts).numpy() if parts else np.zeros((0, 0))
        lost = ~np.isfinite(values).all(axis=1)
        if lost.any():
            raise ValueError(
                f"{int(lost.sum())} frames of {store.path} (first: row {int(np.flatnonzero(lost)[0])}) have "
                f"Transporter keypoints on pixels without depth in camera {camera}; use --latent transporter2d"
            )
        pusher = np.asarray(store.frames("pusher_position"), dtype=np.float64)
        return np.concatenate([values, pusher], axis=1).astype(np.float32)

    def make_encoder(self, run_dir: Path, task: TaskConfig, which: str) -> TransporterEncoder:
        """The run's Transporter (its best checkpoint, as the paper uses; `which` picks the dynamics only)."""
        return TransporterEncoder(load_run_transporter(run_dir), self.lift, (task.width, task.height))


class Transporter3DLatent(_TransporterMethod, KeypointLatent):
    """--latent transporter3d: K Transporter keypoints lifted to world points with depth, and the pusher xy."""

    name, label, lift = "transporter3d", "Transporter 3D", True


class Transporter2DLatent(_TransporterMethod, LatentMethod):
    """--latent transporter2d: K Transporter keypoints as normalised image (x, y), and the pusher xy; the costs
    compare the 2 K image coordinates (no augmentation: image coordinates do not move with a world SE(2))."""

    name, label, lift = "transporter2d", "Transporter 2D", False


register_latent(Transporter3DLatent())
register_latent(Transporter2DLatent())

"""The descriptor keypoint encoder used at control time: camera image -> latent, with no ground truth."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from keydyn.latents.base import LatentLayout
from keydyn.latents.descriptor.references import References, locate_references
from keydyn.latents.descriptor.rigid import RigidFilter
from keydyn.latents.descriptor.weights import KeypointWeights
from keydyn.vision.network import DescriptorNet


class DescriptorEncoder:
    """DS / SDS / WDS / WSDS latents: the references located in one camera's RGB-D image (or fused over the
    references' cameras, `References.fused_cameras`).

    encode() runs the network on observation[f"{camera}/rgb"], locates the K references with that camera's
    depth, intrinsics and pose (world points, metres), replaces outliers with the rigid filter when given,
    applies the fixed weights W when given (WDS / WSDS), and appends observation["pusher_position"]. It reads
    nothing from `info`.
    """

    needs_images = True

    def __init__(
        self,
        net: DescriptorNet,
        references: References,
        weights: KeypointWeights | None = None,
        bf16: bool = False,
        rigid: RigidFilter | None = None,
    ) -> None:
        self.net = net.eval()
        self.references = references
        self.weights = None if weights is None else weights.eval()
        self.bf16 = bf16
        self.rigid = rigid

    @property
    def layout(self) -> LatentLayout:
        return LatentLayout(len(self.references))

    def reset(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Nothing to prepare: the references are fixed."""

    @torch.no_grad()
    def encode(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> np.ndarray:
        """(3 K + 2,) float32 latent of the observation, metres."""
        images = {}
        for camera in self.references.cameras:
            if f"{camera}/rgb" not in observation:
                raise KeyError(f"the observation has no {camera}/rgb; make the environment with images=True")
            images[camera] = (
                torch.as_tensor(np.asarray(observation[f"{camera}/rgb"]))[None],
                torch.as_tensor(np.asarray(observation[f"{camera}/depth"]))[None],
                torch.as_tensor(np.asarray(observation[f"{camera}/intrinsics"]), dtype=torch.float64),
                torch.as_tensor(np.asarray(observation[f"{camera}/pose"]), dtype=torch.float64),
            )
        located = locate_references(self.net, self.references, images, self.bf16)
        pusher = torch.as_tensor(np.asarray(observation["pusher_position"]), dtype=torch.float32)
        points = located.points_world[0]  # (K, 3)
        if self.rigid is not None:
            points = self.rigid(points)[0]
        latent = torch.cat([points.flatten(), pusher])
        if self.weights is not None:
            latent = self.weights(latent)
        return latent.numpy().astype(np.float32)

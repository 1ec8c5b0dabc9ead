"""The descriptor keypoint encoder used at control time: camera image -> latent, with no ground truth."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from keydyn.dynamics.latent import LatentLayout
from keydyn.keypoints.references import References
from keydyn.keypoints.weights import KeypointWeights
from keydyn.vision.keypoints import locate_keypoints
from keydyn.vision.network import DescriptorNet, rgb_to_tensor


class DescriptorEncoder:
    """DS / SDS / WDS / WSDS latents: the references located in one camera's RGB-D image.

    encode() runs the network on observation[f"{camera}/rgb"], locates the K references with that camera's
    depth, intrinsics and pose (world points, metres), applies the fixed weights W when given (WDS / WSDS),
    and appends observation["pusher_position"]. It reads nothing from `info`.
    """

    needs_images = True

    def __init__(
        self,
        net: DescriptorNet,
        references: References,
        weights: KeypointWeights | None = None,
        bf16: bool = False,
    ) -> None:
        self.net = net.eval()
        self.references = references
        self.weights = None if weights is None else weights.eval()
        self.bf16 = bf16

    @property
    def camera(self) -> str:
        return self.references.camera

    @property
    def layout(self) -> LatentLayout:
        return LatentLayout(len(self.references))

    def reset(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Nothing to prepare: the references are fixed."""

    @torch.no_grad()
    def encode(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> np.ndarray:
        """(3 K + 2,) float32 latent of the observation, metres."""
        camera = self.camera
        if f"{camera}/rgb" not in observation:
            raise KeyError(f"the observation has no {camera}/rgb; make the environment with images=True")
        rgb = rgb_to_tensor(torch.as_tensor(np.asarray(observation[f"{camera}/rgb"])))[None]
        descriptors = self.net.infer(rgb, bf16=self.bf16)[0]
        located = locate_keypoints(
            descriptors,
            self.references.descriptors,
            torch.as_tensor(np.asarray(observation[f"{camera}/depth"])),
            torch.as_tensor(np.asarray(observation[f"{camera}/intrinsics"]), dtype=torch.float64),
            torch.as_tensor(np.asarray(observation[f"{camera}/pose"]), dtype=torch.float64),
            self.references.eta,
            depth_mode=self.references.depth_mode,
        )
        pusher = torch.as_tensor(np.asarray(observation["pusher_position"]), dtype=torch.float32)
        latent = torch.cat([located.points_world.flatten(), pusher])
        if self.weights is not None:
            latent = self.weights(latent)
        return latent.numpy().astype(np.float32)

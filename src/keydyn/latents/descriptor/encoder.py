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
from keydyn.sim.observations import FORMAT, ObservationError, check_observation
from keydyn.vision.keypoints import MIN_DEPTH_SUPPORT
from keydyn.vision.network import DescriptorNet


class DescriptorEncoder:
    """DS / SDS / WDS / WSDS latents: the references located in one camera's RGB-D image (or fused over the
    references' cameras, `References.fused_cameras`).

    encode() runs the network on observation[f"{camera}/rgb"], locates the K references with that camera's
    depth, intrinsics and pose (world points, metres), replaces outliers with the rigid filter when given,
    applies the fixed weights W when given (WDS / WSDS), and appends observation["pusher_position"]. It reads
    nothing from `info`. The observation is checked first (`keydyn.sim.observations`; images at `image_size` =
    (width, height) pixels when given), and a keypoint left without depth (`MIN_DEPTH_SUPPORT`) that the rigid
    filter does not replace is refused: both raise ObservationError.
    """

    needs_images = True

    def __init__(
        self,
        net: DescriptorNet,
        references: References,
        weights: KeypointWeights | None = None,
        bf16: bool = False,
        rigid: RigidFilter | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> None:
        self.net = net.eval()
        self.image_size = image_size
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
        check_observation(observation, self.references.cameras, self.image_size)
        images = {}
        for camera in self.references.cameras:
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
        lost = torch.nonzero(~torch.isfinite(points).all(dim=-1)).flatten().tolist()
        if lost:
            depths = ", ".join(f"{camera}/depth" for camera in self.references.cameras)
            raise ObservationError(
                f"keypoints {', '.join(map(str, lost))} of {len(points)} have no depth: less than "
                f"{MIN_DEPTH_SUPPORT:.0%} of their heatmaps' weight lies on valid depth in observation {depths} (the "
                f"object is a hole there); fill the holes or locate with another camera (--keypoints.camera) ({FORMAT})"
            )
        latent = torch.cat([points.flatten(), pusher])
        if self.weights is not None:
            latent = self.weights(latent)
        return latent.numpy().astype(np.float32)

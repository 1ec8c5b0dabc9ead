"""The descriptor keypoint encoder used at control time: camera image -> latent, with no ground truth."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

    def to(self, device: torch.device) -> None:
        """Run the descriptor network on `device`; the keypoints are still located on the CPU."""
        self.net.to(device)

    def reset(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> None:
        """Nothing to prepare: the references are fixed."""

    def encode(self, observation: Mapping[str, Any], info: Mapping[str, Any]) -> np.ndarray:
        """(3 K + 2,) float32 latent of the observation, metres."""
        (latent,) = self.encode_batch([observation], [info])
        if isinstance(latent, ObservationError):
            raise latent
        return latent

    @torch.no_grad()
    def encode_batch(
        self, observations: Sequence[Mapping[str, Any]], infos: Sequence[Mapping[str, Any]]
    ) -> list[np.ndarray | ObservationError]:
        """The latents of B observations, each the (3 K + 2,) latent that `encode` gives it alone (to float
        tolerance), or the ObservationError that refuses it. The network runs once per camera over every frame
        whose cameras have the same intrinsics and pose (keydyn's fixed cameras: all of them), which is what a GPU
        needs of B environments evaluated in lockstep; the encoder keeps no state between calls."""
        results: list[np.ndarray | ObservationError | None] = [None] * len(observations)
        groups: dict[bytes, list[int]] = {}
        for b, observation in enumerate(observations):
            try:
                check_observation(observation, self.references.cameras, self.image_size)
            except ObservationError as error:
                results[b] = error
                continue
            geometry = b"".join(
                np.asarray(observation[f"{camera}/{entry}"], np.float64).tobytes()
                for camera in self.references.cameras
                for entry in ("intrinsics", "pose")
            )
            groups.setdefault(geometry, []).append(b)
        for frames in groups.values():
            for b, result in zip(frames, self._locate([observations[b] for b in frames]), strict=True):
                results[b] = result
        return results

    def _locate(self, observations: Sequence[Mapping[str, Any]]) -> list[np.ndarray | ObservationError]:
        """Latents (or refusals) of B checked observations whose cameras share intrinsics and pose."""
        first = observations[0]
        images = {
            camera: (
                torch.stack([torch.as_tensor(np.asarray(o[f"{camera}/rgb"])) for o in observations]),
                torch.stack([torch.as_tensor(np.asarray(o[f"{camera}/depth"])) for o in observations]),
                torch.as_tensor(np.asarray(first[f"{camera}/intrinsics"]), dtype=torch.float64),
                torch.as_tensor(np.asarray(first[f"{camera}/pose"]), dtype=torch.float64),
            )
            for camera in self.references.cameras
        }
        points = locate_references(self.net, self.references, images, self.bf16).points_world  # (B, K, 3)
        if self.rigid is not None:
            points = self.rigid(points)[0]
        pushers = torch.stack(
            [torch.as_tensor(np.asarray(o["pusher_position"]), dtype=torch.float32) for o in observations]
        )
        latents = torch.cat([points.flatten(1), pushers], dim=1)
        if self.weights is not None:
            latents = self.weights(latents)
        results: list[np.ndarray | ObservationError] = []
        for frame_points, latent in zip(points, latents, strict=True):
            lost = torch.nonzero(~torch.isfinite(frame_points).all(dim=-1)).flatten().tolist()
            results.append(self._no_depth(lost, len(frame_points)) if lost else latent.numpy().astype(np.float32))
        return results

    def _no_depth(self, lost: list[int], count: int) -> ObservationError:
        depths = ", ".join(f"{camera}/depth" for camera in self.references.cameras)
        return ObservationError(
            f"keypoints {', '.join(map(str, lost))} of {count} have no depth: less than "
            f"{MIN_DEPTH_SUPPORT:.0%} of their heatmaps' weight lies on valid depth in observation {depths} (the "
            f"object is a hole there); fill the holes or locate with another camera (--keypoints.camera) ({FORMAT})"
        )

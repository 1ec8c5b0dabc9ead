"""One RGB-D camera view of one moment, as tensors, and reading views from an episode store."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from keydyn.data.store import EpisodeStore
from keydyn.vision.geometry import pose_matrix


@dataclass(frozen=True)
class RGBDView:
    """A camera image with everything the geometry needs.

    Attributes:
        rgb: (H, W, 3) uint8.
        depth: (H, W) float32 z-depth, metres; 0 or non-finite where unknown.
        mask: (H, W) bool, True where the object is visible.
        intrinsics: (3, 3) float64 K, pixels.
        T_world_camera: (4, 4) float64 camera pose (OpenCV frame), metres.
        T_world_object: (4, 4) float64 object pose at this moment, or None when unknown (needed only to
            match the object across moments).
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    intrinsics: torch.Tensor
    T_world_camera: torch.Tensor
    T_world_object: torch.Tensor | None = None

    @property
    def height(self) -> int:
        return int(self.depth.shape[0])

    @property
    def width(self) -> int:
        return int(self.depth.shape[1])

    def to(self, device: torch.device | str) -> RGBDView:
        """The same view with every tensor on `device`."""
        pose = None if self.T_world_object is None else self.T_world_object.to(device)
        return RGBDView(
            self.rgb.to(device),
            self.depth.to(device),
            self.mask.to(device),
            self.intrinsics.to(device),
            self.T_world_camera.to(device),
            pose,
        )


def load_view(store: EpisodeStore, camera: str, frame: int) -> RGBDView:
    """Frame `frame` (a global row of the store) of camera `camera`, with the object's true pose.

    The object pose comes from the ground-truth arrays; it is used for training correspondences only.
    """
    info = store.attrs["cameras"][camera]
    position = torch.as_tensor(store.frames("object_position", frame, frame + 1)[0], dtype=torch.float64)
    quaternion = torch.as_tensor(store.frames("object_quaternion", frame, frame + 1)[0], dtype=torch.float64)
    return RGBDView(
        rgb=torch.as_tensor(store.frames(f"{camera}/rgb", frame, frame + 1)[0]),
        depth=torch.as_tensor(store.frames(f"{camera}/depth", frame, frame + 1)[0]),
        mask=torch.as_tensor(store.frames(f"{camera}/mask", frame, frame + 1)[0]).bool(),
        intrinsics=torch.tensor(info["intrinsics"], dtype=torch.float64),
        T_world_camera=torch.tensor(info["pose"], dtype=torch.float64),
        T_world_object=pose_matrix(position, quaternion),
    )

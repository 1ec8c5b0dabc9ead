"""Descriptor keypoints of every frame of a dataset, computed once and cached (the original's precomputed keypoints).

The cache file `keypoints-<hash>.safetensors` is keyed by a hash of the network weights, the references,
the dataset (its path, number of frames and collection settings) and the cameras that locate the references,
so a changed network or reference set is never served stale keypoints; it holds the digest of the dataset's
contents too, and a dataset collected anew at the same path is located again. It is written atomically.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from keydyn.data.store import EpisodeStore
from keydyn.latents.descriptor.references import References, locate_references
from keydyn.locks import taking_turns
from keydyn.runs import read_checked_tensors, write_tensors
from keydyn.vision.network import DescriptorNet


@dataclass(frozen=True)
class DatasetKeypoints:
    """Keypoints of every frame of a dataset, from the references' camera (fused with their other cameras').

    Attributes:
        points: (N, K, 3) float32 world points, metres (NaN where a keypoint has no valid depth).
        confidence: (N, K) float32 confidences in [0, 1] (eq. 15).
    """

    points: torch.Tensor
    confidence: torch.Tensor


def network_hash(net: DescriptorNet) -> str:
    """SHA-256 of the network's weights and buffers (names, shapes, dtypes and values)."""
    digest = hashlib.sha256()
    for name, value in sorted(net.state_dict().items()):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}{tuple(value.shape)}{value.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def cache_key(net: DescriptorNet, references: References, store: EpisodeStore, bf16: bool) -> str:
    """A hash of what the keypoints depend on: weights, references, camera, precision, the dataset's identity (its
    path, frames and collection settings; its contents are checked apart, `content_digest`)."""
    digest = hashlib.sha256(network_hash(net).encode())
    for tensor in (references.descriptors, references.uv):
        digest.update(tensor.detach().float().contiguous().numpy().tobytes())
    identity = {
        "camera": references.camera,
        **({"fused_cameras": list(references.fused_cameras)} if references.fused_cameras else {}),
        "eta": references.eta,
        "depth_mode": references.depth_mode,
        "bf16": bf16,
        "dataset": str(store.path.resolve()),
        "frames": store.num_frames,
        "collection": store.attrs.get("collection", {}),
    }
    digest.update(json.dumps(identity, sort_keys=True, default=str).encode())
    return digest.hexdigest()[:20]


@torch.no_grad()
def compute_keypoints(
    net: DescriptorNet, references: References, store: EpisodeStore, batch_size: int, bf16: bool
) -> DatasetKeypoints:
    """Locate the references in every frame of `store` from `references.cameras`, `batch_size` frames at a time;
    a keypoint whose heatmap lies on too little valid depth (`MIN_DEPTH_SUPPORT`: a hole of a real depth camera)
    is NaN, for the rigid filter to replace or `require_lifted` to refuse."""
    geometry = {
        camera: (
            torch.tensor(store.attrs["cameras"][camera]["intrinsics"], dtype=torch.float64),
            torch.tensor(store.attrs["cameras"][camera]["pose"], dtype=torch.float64),
        )
        for camera in references.cameras
    }
    points, confidence = [], []
    for begin in range(0, store.num_frames, batch_size):
        stop = min(begin + batch_size, store.num_frames)
        images = {
            camera: (
                torch.as_tensor(store.frames(f"{camera}/rgb", begin, stop)),
                torch.as_tensor(store.frames(f"{camera}/depth", begin, stop)),
                *geometry[camera],
            )
            for camera in references.cameras
        }
        located = locate_references(net, references, images, bf16)
        points.append(located.points_world)
        confidence.append(located.confidence)
    return DatasetKeypoints(torch.cat(points), torch.cat(confidence))


MAX_UNLIFTED_FRACTION = 0.01
"""The largest fraction of a dataset's frames whose keypoints may stay without depth (left out of training)."""


def require_lifted(points: torch.Tensor, store: EpisodeStore, cameras: Sequence[str], filtered: bool) -> None:
    """Check (N, K, 3) dataset keypoints, after the rigid filter when `filtered`: frames with a keypoint not lifted
    to 3D (NaN: no valid depth under it) stay NaN, so that no training window uses them (`make_windows`), and
    are reported; more than MAX_UNLIFTED_FRACTION of them are refused.

    Raises:
        ValueError: naming how many frames, the first, and the fixes.
    """
    lost = ~torch.isfinite(points).all(dim=(1, 2))
    if not lost.any():
        return
    first = int(np.flatnonzero(lost.numpy())[0])
    if filtered:
        why = "even after the rigid filter (fewer than 3 keypoints of the frame agree)"
    else:
        why = "and no rigid filter replaces them (--keypoints.rigid-outlier-mm)"
    problem = (
        f"{int(lost.sum())} of {len(points)} frames of {store.path} (first: row {first}) have keypoints without "
        f"valid depth in camera {', '.join(cameras)} {why}"
    )
    if lost.float().mean() > MAX_UNLIFTED_FRACTION:
        raise ValueError(f"{problem}; fill the depth holes or pick another --keypoints.camera")
    print(f"keydyn: {problem}: no training window uses them", file=sys.stderr)


def dataset_keypoints(
    net: DescriptorNet,
    references: References,
    store: EpisodeStore,
    cache_dir: Path,
    batch_size: int = 16,
    bf16: bool = False,
) -> DatasetKeypoints:
    """The keypoints of every frame of `store`, loaded from `cache_dir` when computed before, else computed
    (see `compute_keypoints`) and cached there."""
    path = Path(cache_dir) / f"keypoints-{cache_key(net, references, store, bf16)}.safetensors"
    content = content_digest(store)
    with taking_turns(path.with_name(path.name + ".lock")):  # runs side by side (reproduce on Ray) locate them once
        if path.exists():
            fix = "delete it (the keypoints are located again) and run the command again"
            tensors = read_checked_tensors(path, fix)
            # None: a cache of an older keydyn, without its digest: located again, replaced. A cache without the
            # dataset's content digest is of a keydyn before 2026-11-29, taken as it is.
            if tensors is not None and torch.equal(tensors.get("dataset_content", content), content):
                return DatasetKeypoints(tensors["points"], tensors["confidence"])
            if tensors is not None:
                print(
                    f"keydyn: {store.path} holds other frames than when {path.name} was cached: located again",
                    file=sys.stderr,
                )
        result = compute_keypoints(net, references, store, batch_size, bf16)
        write_tensors(path, {"points": result.points, "confidence": result.confidence, "dataset_content": content})
    return result


def content_digest(store: EpisodeStore) -> torch.Tensor:
    """(32,) uint8 SHA-256 of every episode's content SHA-256: the dataset's frames themselves (a store collected
    anew at the same path, with the same settings, differs)."""
    return torch.frombuffer(bytearray(bytes.fromhex(store.content_sha256())), dtype=torch.uint8)

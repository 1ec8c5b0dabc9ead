"""How well descriptor keypoints track the object: located points against the true positions of the same
object points, on held-out frames (the ground-truth poses are used here only, never by the controller).

Each reference descriptor marks one object point: its pixel in the reference image, lifted with that image's
depth and camera pose and carried into the object frame by the object's true pose then. In any other frame
the same point's true position is the object's true pose applied to it. A point counts as visible when it
projects inside the image onto a pixel whose rendered depth is within `visibility_tolerance` of the point's
own depth (so points behind an occluder, or on a face turned away, are occluded).

The error splits into a bias and a jitter: in the object frame a keypoint's located positions scatter
(jitter: distance to their median) around a point that may differ from the reference pixel's (bias: distance
from that median to the reference point). In every frame the error is at most bias + jitter. A constant bias
cancels between the goal image and the current one; the jitter does not.

The keypoints of a frame also give the object's rotation, as the rigid latent and the controller read it: the
rigid fit of the true points onto the located ones turns by the rotation error. Near 180 deg the keypoints are
found as a whole on the object turned about (e.g. a box's hidden face matched to the opposite face that looks
the same): a flip, which no per-keypoint outlier test sees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from keydyn.data.store import EpisodeStore
from keydyn.latents.descriptor.references import References, locate_in_frames
from keydyn.latents.descriptor.rigid import MIN_INLIERS, RigidFilter, rigid_fit
from keydyn.vision.geometry import invert_transform, seen_points, transform_points, unproject_to_world
from keydyn.vision.network import DescriptorNet
from keydyn.vision.views import load_view

VISIBILITY_TOLERANCE_M = 0.005  # a point is visible when the rendered depth at its pixel is within 5 mm of its own
FLIP_DEG = 90.0  # a frame's keypoints are flipped when their rigid fit is turned more than this from the truth
MIN_SPREAD_M = 0.005  # keypoints within this (RMS) of one line fix no turn about it: no rotation error


@dataclass(frozen=True)
class KeypointErrors:
    """Per frame and keypoint errors of located keypoints.

    Attributes:
        error_3d: (F, K) float64 distance between the located and the true point, metres (NaN: no depth).
        error_px: (F, K) float64 distance between the located pixel and the true point's projection, pixels.
        confidence: (F, K) float32 eq.-15 confidence of the located keypoint, in [0, 1].
        visible: (F, K) bool, whether the true point is seen by the camera in that frame.
        located_object: (F, K, 3) float64 the located points in the object frame of their frame, metres.
        object_points: (K, 3) float64 the reference pixels' points in the object frame, metres.
        rotation_error: (F,) float64 angle of the rigid fit of the true points onto the located ones, degrees
            (`rotation_error_deg`; NaN where fewer than 3 keypoints have depth or the points lie on a line).
    """

    error_3d: np.ndarray
    error_px: np.ndarray
    confidence: np.ndarray
    visible: np.ndarray
    located_object: np.ndarray
    object_points: np.ndarray
    rotation_error: np.ndarray

    def visible_points(self) -> np.ndarray:
        """(F, K, 3) the located points in the object frame, NaN where the true point is not visible, metres."""
        return np.where(self.visible[..., None], self.located_object, np.nan)

    def median_points(self) -> np.ndarray:
        """(K, 3) each keypoint's median located point in the object frame over its visible frames, metres
        (NaN for a keypoint never visible)."""
        return np.nanmedian(self.visible_points(), axis=0)

    def jitter(self) -> np.ndarray:
        """(F, K) distance of each located point (object frame) to its keypoint's median over the visible
        frames, metres; NaN where the point is not visible."""
        return np.linalg.norm(self.visible_points() - self.median_points()[None], axis=-1)

    def bias(self) -> np.ndarray:
        """(K,) distance of each keypoint's median located point to its reference point (object frame), metres."""
        return np.linalg.norm(self.median_points() - self.object_points, axis=-1)

    def summary(self) -> dict[str, float]:
        """Medians (and the mean and 95th percentile of the 3D error) of the errors of visible points, and the
        confidence of visible vs occluded points (their means and `confidence_auc`). The rotation figures are over
        the frames that fix a rotation (`rotation_error_deg`), from all their keypoints, occluded ones included."""
        visible = self.visible
        summary = {
            "frames": int(self.visible.shape[0]),
            "keypoints": int(self.visible.shape[1]),
            "visible_fraction": float(visible.mean()),
            "error_3d_mm_median": float(1000.0 * np.nanmedian(np.where(visible, self.error_3d, np.nan))),
            "error_3d_mm_mean": float(1000.0 * np.nanmean(np.where(visible, self.error_3d, np.nan))),
            "error_3d_mm_p95": float(1000.0 * np.nanpercentile(np.where(visible, self.error_3d, np.nan), 95)),
            "error_px_median": float(np.nanmedian(np.where(visible, self.error_px, np.nan))),
            "jitter_mm_median": float(1000.0 * np.nanmedian(self.jitter())),
            "bias_mm_median": float(1000.0 * np.nanmedian(self.bias())),
            "within_3px": float((self.error_px[visible] <= 3.0).mean()) if visible.any() else float("nan"),
            "confidence_visible_mean": float(self.confidence[visible].mean()) if visible.any() else float("nan"),
        }
        occluded = ~visible
        summary["confidence_occluded_mean"] = float(self.confidence[occluded].mean()) if occluded.any() else None
        summary["confidence_visibility_auc"] = (
            confidence_auc(self.confidence[visible], self.confidence[occluded])
            if visible.any() and occluded.any()
            else None
        )
        summary["error_3d_mm_median_occluded"] = (
            float(1000.0 * np.nanmedian(self.error_3d[occluded])) if occluded.any() else None
        )
        fitted = np.isfinite(self.rotation_error)
        summary["rotation_error_deg_median"] = float(np.median(self.rotation_error[fitted])) if fitted.any() else None
        summary["flipped_frames"] = float((self.rotation_error[fitted] > FLIP_DEG).mean()) if fitted.any() else None
        return summary


def rotation_error_deg(truth: torch.Tensor, located: torch.Tensor) -> torch.Tensor:
    """(B,) float64 how far the located keypoints are turned from the true ones: the angle of the least-squares
    rigid motion (Kabsch) taking the true points onto the located ones, degrees in [0, 180].

    Args:
        truth: (B, K, 3) true points, metres (finite).
        located: (B, K, 3) located points, metres (NaN where a keypoint has no depth: left out of the fit).

    Returns:
        The angles; NaN for a frame whose located keypoints fix no rotation: fewer than 3 of them, or their true
        points within `MIN_SPREAD_M` (root mean square) of one line, about which any turn would fit.
    """
    truth, located = truth.double(), located.double()
    weights = torch.isfinite(located).all(-1).double()  # (B, K)
    count = weights.sum(-1)  # (B,)
    centre = (weights[..., None] * truth).sum(1) / count.clamp_min(1.0)[:, None]
    spread = torch.linalg.svdvals(weights[..., None] * (truth - centre[:, None]))[:, 1] / count.clamp_min(1.0).sqrt()
    rotation, _ = rigid_fit(truth, torch.nan_to_num(located), weights)
    cosine = ((rotation.diagonal(dim1=1, dim2=2).sum(-1) - 1.0) / 2.0).clamp(-1.0, 1.0)
    fixed = (count >= MIN_INLIERS) & (spread >= MIN_SPREAD_M)
    return torch.where(fixed, torch.rad2deg(torch.arccos(cosine)), math.nan)


def confidence_auc(visible: np.ndarray, occluded: np.ndarray) -> float:
    """How well confidence tells visible sightings from occluded ones: the chance that a random visible
    sighting is more confident than a random occluded one, ties counting half (the area under the ROC curve of
    confidence as a visibility detector; 0.5: no better than chance, 1: a threshold separates them all).

    Args:
        visible: (N,) confidences of sightings of visible points.
        occluded: (M,) confidences of sightings of occluded points.
    """
    occluded = np.sort(np.asarray(occluded, dtype=np.float64))
    visible = np.asarray(visible, dtype=np.float64)
    below = np.searchsorted(occluded, visible, side="left")
    not_above = np.searchsorted(occluded, visible, side="right")
    return float((below + 0.5 * (not_above - below)).sum() / (len(visible) * len(occluded)))


def reference_object_points(store: EpisodeStore, references: References) -> torch.Tensor:
    """(K, 3) float64 the reference pixels lifted into the object frame of the reference image, metres."""
    view = load_view(store, references.camera, references.frame)
    pixel = references.uv.round().long()
    depth = view.depth[pixel[:, 1], pixel[:, 0]].double()
    if not torch.isfinite(depth).all() or (depth <= 0).any():
        raise ValueError("a reference pixel has no depth in the reference image; choose another reference frame")
    world = unproject_to_world(references.uv.double(), depth, view.intrinsics, view.T_world_camera)
    return transform_points(invert_transform(view.T_world_object), world)


@torch.no_grad()
def keypoint_errors(
    net: DescriptorNet,
    store: EpisodeStore,
    references: References,
    frames: np.ndarray,
    batch_size: int = 16,
    bf16: bool = False,
    visibility_tolerance: float = VISIBILITY_TOLERANCE_M,
    rigid: RigidFilter | None = None,
) -> KeypointErrors:
    """Locate the references in dataset rows `frames` (F,) from their camera and compare with the truth.

    Args:
        net: the descriptor network, in eval mode.
        store: the dataset (images, depth, camera and true object poses).
        references: the keypoints' reference descriptors (their reference frame defines the object points).
        frames: (F,) global dataset rows, e.g. of held-out episodes.
        batch_size: images per network call.
        bf16: bfloat16 autocast for the network.
        visibility_tolerance: metres between rendered and point depth for a point to count as visible.
        rigid: the rigid filter of a run that has one, applied to the located points as the run applies it.
    """
    object_points = reference_object_points(store, references)  # (K, 3)
    names = ("error_3d", "error_px", "confidence", "visible", "located_object", "rotation_error")
    parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for views, located in locate_in_frames(net, store, references, frames.tolist(), batch_size, bf16):
        depth = torch.stack([view.depth for view in views])  # (B, H, W)
        intrinsics, camera_pose = views[0].intrinsics, views[0].T_world_camera
        object_poses = torch.stack([view.T_world_object for view in views])  # (B, 4, 4)
        truth = transform_points(object_poses.unsqueeze(1), object_points)  # (B, K, 3)
        uv, visible = seen_points(truth, depth, intrinsics, camera_pose, visibility_tolerance)
        parts["visible"].append(visible)
        located_world = located.points_world.double()
        if rigid is not None:
            located_world = rigid(located_world)[0]
        parts["error_3d"].append((located_world - truth).norm(dim=-1))
        parts["rotation_error"].append(rotation_error_deg(truth, located_world))
        parts["error_px"].append((located.uv.double() - uv).norm(dim=-1))
        parts["confidence"].append(located.confidence)
        parts["located_object"].append(transform_points(invert_transform(object_poses).unsqueeze(1), located_world))
    arrays = {name: torch.cat(values).numpy() for name, values in parts.items()}
    return KeypointErrors(**arrays, object_points=object_points.numpy())

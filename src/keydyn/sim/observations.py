"""The observation format every keydyn environment gives, checked where observations enter the pipeline.

An observation (see `PushingEnv` and docs/extending.md, "A new robot or environment") is a mapping with:

    pusher_position: (2,) finite world xy of the pusher, metres;
    per camera NAME: NAME/rgb (H, W, 3) uint8 0-255; NAME/depth (H, W) float z-depth in metres, registered to
        the RGB image; NAME/intrinsics (3, 3) finite pinhole K, pixels; NAME/pose (4, 4) finite T_world_camera.
    and, read only by a Transporter trained on mask crops (a privileged segmentation): NAME/mask (H, W), nonzero
        on the object, registered to the RGB image.

Depth may have holes, as real sensors give: pixels that are 0, negative, NaN or inf are unknown, and the keypoint
locator leaves them out (`keydyn.vision.heatmap.expectations_from_logits`); a depth image without one valid pixel
is refused, and one whose valid pixels' median is over 20 m (depth in millimetres). `check_observation` raises
`ObservationError`, a ValueError with one line naming the entry, the problem and the fix; the closed control
loops (`keydyn.evaluation.episodes`) stop the pusher on it instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

FORMAT = 'docs/extending.md, "A new robot or environment"'
"""Where the observation format is described, named by every error."""

MAX_MEDIAN_DEPTH_M = 20.0
"""A depth image whose valid pixels' median is farther (metres) is refused: a table scene is never that far, and
depth in millimetres would read 1000 times too far."""


class ObservationError(ValueError):
    """An observation that keydyn cannot read (a missing entry, a wrong dtype or shape, no valid depth, keypoints
    without depth); a closed control loop commands zero velocity and ends the episode on it."""


def _entry(observation: Mapping[str, Any], key: str, camera: str | None = None) -> np.ndarray:
    """observation[key] as an array, or an ObservationError naming what is missing."""
    if key in observation:
        return np.asarray(observation[key])
    keys = ", ".join(sorted(observation)) or "none"
    if camera is not None and not any(name.startswith(f"{camera}/") for name in observation):
        fix = f"give camera {camera}'s images (PushingEnv: images=True)"
    else:
        fix = f"give {key}"
    raise ObservationError(f"the observation has no {key} (its keys: {keys}); {fix} ({FORMAT})")


def _finite(
    observation: Mapping[str, Any], key: str, shape: tuple[int, ...], meaning: str, camera: str | None = None
) -> None:
    """Check that observation[key] is a finite numeric array of `shape`."""
    value = _entry(observation, key, camera)
    numeric = np.issubdtype(value.dtype, np.number)
    if value.shape != shape or not numeric or not np.isfinite(value).all():
        nonfinite = " with NaN or inf" if value.shape == shape and numeric else ""
        raise ObservationError(
            f"observation {key} is {value.dtype} {value.shape}{nonfinite}; give a finite {shape} {meaning} ({FORMAT})"
        )


def _rgb(observation: Mapping[str, Any], camera: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Camera `camera`'s (H, W, 3) uint8 RGB image, checked (at `size` = (width, height) pixels when given)."""
    key = f"{camera}/rgb"
    rgb = _entry(observation, key, camera)
    if rgb.dtype != np.uint8:
        values = f" with values {rgb.min():.3g} to {rgb.max():.3g}" if rgb.size and rgb.dtype.kind in "fiu" else ""
        raise ObservationError(
            f"observation {key} is {rgb.dtype}{values}, not uint8 0-255 (float RGB would read as a dark image); "
            f"convert it to uint8 (RGB in [0, 1]: (rgb * 255).round().astype(np.uint8)) ({FORMAT})"
        )
    expected = (*rgb.shape[:2], 3) if rgb.ndim == 3 else ("H", "W", 3)  # checks the layout only
    if size is not None:
        expected = (size[1], size[0], 3)
    if rgb.ndim != 3 or rgb.shape != expected:
        resolution = "" if size is None else f" (the camera's {size[0]}x{size[1]})"
        raise ObservationError(
            f"observation {key} has shape {rgb.shape}, not {expected}{resolution}; give one (H, W, 3) RGB image "
            f"per camera, rows first, at the camera's resolution ({FORMAT})"
        )
    return rgb


def _depth(observation: Mapping[str, Any], camera: str, image_shape: tuple[int, int]) -> np.ndarray:
    """Camera `camera`'s (H, W) float depth image in metres, checked to be `image_shape` (the RGB image's) and
    to have at least one valid (finite, positive) pixel; holes are left to the keypoint locator."""
    key = f"{camera}/depth"
    depth = _entry(observation, key, camera)
    if not np.issubdtype(depth.dtype, np.floating):
        raise ObservationError(
            f"observation {key} is {depth.dtype}, not float z-depth in metres; convert it (from millimetres: "
            f"depth.astype(np.float32) / 1000) ({FORMAT})"
        )
    if depth.shape != image_shape:
        raise ObservationError(
            f"observation {key} has shape {depth.shape}, the RGB image {image_shape}; give the depth image "
            f"registered to the RGB image, one z-depth per pixel ({FORMAT})"
        )
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        raise ObservationError(
            f"observation {key} has no valid depth (every pixel is NaN, inf or <= 0); check that the depth camera "
            f"sees the scene and that depth is in metres ({FORMAT})"
        )
    median = float(np.median(depth[valid]))
    if median > MAX_MEDIAN_DEPTH_M:
        raise ObservationError(
            f"observation {key} has a median valid depth of {median:.4g} m: depth in millimetres? give it in metres "
            f"(depth / 1000; a RealSense z16 image times its depth_scale) ({FORMAT})"
        )
    return depth


def check_observation(
    observation: Mapping[str, Any], cameras: Sequence[str] = (), size: tuple[int, int] | None = None
) -> None:
    """Check the pusher position and the images of `cameras` in `observation` (see the module docstring).

    Args:
        observation: an environment observation.
        cameras: the cameras whose images are read (none: only the pusher position is).
        size: (width, height) the cameras' configured resolution, pixels; None accepts any (each depth image
            must still match its RGB image).

    Raises:
        ObservationError: an entry is missing, of the wrong dtype or shape, non-finite, or a depth image has no
            valid pixel.
    """
    _finite(observation, "pusher_position", (2,), "world xy of the pusher, metres")
    for camera in cameras:
        rgb = _rgb(observation, camera, size)
        _depth(observation, camera, rgb.shape[:2])
        _finite(observation, f"{camera}/intrinsics", (3, 3), "pinhole K in pixels", camera)
        _finite(observation, f"{camera}/pose", (4, 4), "T_world_camera in metres", camera)


def observed_rgb(observation: Mapping[str, Any], camera: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Camera `camera`'s (H, W, 3) uint8 RGB image, checked (at `size` = (width, height) pixels when given), for
    encoders that read RGB only (no depth, intrinsics or pose).

    Raises:
        ObservationError: the image is missing, not uint8, or of another shape.
    """
    return _rgb(observation, camera, size)


def observed_mask(observation: Mapping[str, Any], camera: str, image_shape: tuple[int, int]) -> np.ndarray:
    """Camera `camera`'s (H, W) object mask (nonzero on the object), checked to be `image_shape` (the RGB image's)
    and to hold an object pixel, for encoders that crop around the object.

    Raises:
        ObservationError: the mask is missing, of another shape, or has no object pixel.
    """
    key = f"{camera}/mask"
    mask = _entry(observation, key, camera)
    if mask.shape != image_shape:
        raise ObservationError(
            f"observation {key} has shape {mask.shape}, the RGB image {image_shape}; give the object mask "
            f"registered to the RGB image, one value per pixel ({FORMAT})"
        )
    if not mask.any():
        raise ObservationError(
            f"observation {key} has no object pixel: the object is out of view or its segmentation failed, and "
            f"the mask crop has nothing to crop around ({FORMAT})"
        )
    return mask

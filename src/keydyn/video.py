"""Videos and simple drawing on RGB frames (no OpenCV): points and polylines in pixel coordinates."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import imageio.v2 as imageio
import numpy as np


def write_video(frames: Sequence[np.ndarray], out: Path, fps: float = 10.0) -> Path:
    """Write (H, W, 3) uint8 frames as an MP4 or GIF (by suffix), atomically; returns the path."""
    out = Path(out)
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ValueError(f"--out {out}: use a .mp4 or .gif file name")
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(out.stem + ".partial" + out.suffix)
    if out.suffix.lower() == ".mp4":
        # macro_block_size=1 keeps the exact pixels (no resize to multiples of 16).
        imageio.mimwrite(temporary, list(frames), fps=fps, macro_block_size=1, quality=8)
    else:
        imageio.mimwrite(temporary, list(frames), duration=1000 / fps, loop=0)
    temporary.replace(out)
    return out


def draw_points(image: np.ndarray, uv: np.ndarray, colour: Sequence[int], radius: int = 2) -> None:
    """Draw filled discs of `radius` pixels at (N, 2) pixel positions (NaN skipped) on an (H, W, 3) image."""
    h, w = image.shape[:2]
    for u, v in np.asarray(uv):
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        cu, cv = round(u), round(v)
        v0, v1, u0, u1 = max(cv - radius, 0), min(cv + radius + 1, h), max(cu - radius, 0), min(cu + radius + 1, w)
        if v0 >= v1 or u0 >= u1:
            continue
        yy, xx = np.mgrid[v0:v1, u0:u1]
        inside = (yy - cv) ** 2 + (xx - cu) ** 2 <= radius**2
        image[yy[inside], xx[inside]] = colour


def draw_polyline(image: np.ndarray, uv: np.ndarray, colour: Sequence[int], closed: bool = True) -> None:
    """Draw 1-pixel segments between consecutive (N, 2) pixel positions (and back to the first when closed)."""
    h, w = image.shape[:2]
    points = np.asarray(uv, dtype=np.float64)
    ends = np.roll(points, -1, axis=0) if closed else points[1:]
    for (u0, v0), (u1, v1) in zip(points, ends, strict=False):
        if not np.all(np.isfinite([u0, v0, u1, v1])):
            continue
        count = int(max(abs(u1 - u0), abs(v1 - v0))) + 2
        us = np.rint(np.linspace(u0, u1, count)).astype(int)
        vs = np.rint(np.linspace(v0, v1, count)).astype(int)
        keep = (us >= 0) & (us < w) & (vs >= 0) & (vs < h)
        image[vs[keep], us[keep]] = colour

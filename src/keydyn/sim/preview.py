"""A picture of a task: every camera's RGB, depth and object mask after a reset."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from keydyn.sim.config import task_config
from keydyn.sim.environment import PushingEnvironment, make_environment


def depth_to_image(depth: np.ndarray) -> np.ndarray:
    """(H, W) metres to a (H, W, 3) uint8 grey image: nearest = white, the median depth and beyond = black, as
    are holes (pixels that are 0, negative, NaN or inf)."""
    valid = np.isfinite(depth) & (depth > 0)
    readings = depth[valid] if valid.any() else np.zeros(1)
    near, far = float(readings.min()), float(np.median(readings))
    scaled = np.where(valid, 1.0 - np.clip((depth - near) / max(far - near, 1e-6), 0.0, 1.0), 0.0)
    return np.repeat((scaled * 255).astype(np.uint8)[..., None], 3, axis=2)


def task_picture(env: PushingEnvironment, seed: int = 0) -> np.ndarray:
    """One row per camera: RGB | depth | RGB with the object mask highlighted, (C*H, 3*W, 3) uint8."""
    obs, _ = env.reset(seed=seed)
    rows = []
    for camera in env.task.camera_names:
        rgb = obs[f"{camera}/rgb"]
        mask = obs[f"{camera}/mask"].astype(bool)
        highlighted = rgb.copy()
        highlighted[~mask] = (highlighted[~mask] * 0.3).astype(np.uint8)
        rows.append(np.concatenate([rgb, depth_to_image(obs[f"{camera}/depth"]), highlighted], axis=1))
    return np.concatenate(rows, axis=0)


PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")


def check_picture_path(out: Path) -> None:
    """Raise ValueError naming `out` unless it ends in an image extension `write_task_picture` writes."""
    if Path(out).suffix.lower() not in PICTURE_SUFFIXES:
        raise ValueError(f"--out {out}: a task picture is a .png, .jpg or .jpeg file; end the name with one (task.png)")


def write_task_picture(task: str, out: Path, seed: int = 0, **overrides) -> Path:
    """Save `task_picture` of a task as a PNG or JPEG (by `out`'s extension)."""
    check_picture_path(out)
    env = make_environment(task_config(task, **overrides))
    try:
        image = task_picture(env, seed)
    finally:
        env.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(out, image)
    return out

"""Human-readable summaries and videos of an episode store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from keydyn.data.store import EpisodeStore
from keydyn.video import write_video


def dataset_summary(store: EpisodeStore) -> dict[str, Any]:
    """Counts, lengths, cameras and configuration of a store, JSON-serialisable."""
    attrs = store.attrs
    ends = store.episode_ends
    lengths = np.diff(np.concatenate([[0], ends])) if len(ends) else np.zeros(0, dtype=np.int64)
    terminations = attrs.get("terminations", [])
    codes = store.episode_meta("termination") if store.num_episodes else np.zeros(0, dtype=np.int8)
    return {
        "path": str(store.path),
        "task": attrs.get("task"),
        "format_version": attrs.get("format_version"),
        "keydyn_version": attrs.get("keydyn_version"),
        "created": attrs.get("created"),
        "episodes": store.num_episodes,
        "target_episodes": attrs.get("target_episodes"),
        "frames": store.num_frames,
        "transitions": int(store.num_frames - store.num_episodes),
        "episode_length": {
            "min": int(lengths.min()) if len(lengths) else 0,
            "mean": float(lengths.mean()) if len(lengths) else 0.0,
            "max": int(lengths.max()) if len(lengths) else 0,
        },
        "ended_early": {name: int(np.sum(codes == k)) for k, name in enumerate(terminations) if name},
        "cameras": {
            name: {
                "width": cam["width"],
                "height": cam["height"],
                "intrinsics": cam["intrinsics"],
                "pose": cam["pose"],
            }
            for name, cam in attrs.get("cameras", {}).items()
        },
        "collection": attrs.get("collection"),
        "size_bytes": sum(p.stat().st_size for p in Path(store.path).rglob("*") if p.is_file()),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as aligned text lines."""
    lengths = summary["episode_length"]
    lines = [
        f"dataset      {summary['path']}",
        f"task         {summary['task']}",
        f"episodes     {summary['episodes']} (target {summary['target_episodes']})",
        f"frames       {summary['frames']} ({summary['transitions']} transitions)",
        f"length       min {lengths['min']}  mean {lengths['mean']:.1f}  max {lengths['max']} frames",
        "ended early  " + ", ".join(f"{k}: {v}" for k, v in summary["ended_early"].items()),
        f"size         {summary['size_bytes'] / 1e6:.1f} MB",
        f"format       v{summary['format_version']}, written by keydyn {summary['keydyn_version']} "
        f"on {summary['created']}",
    ]
    for name, cam in summary["cameras"].items():
        k = np.asarray(cam["intrinsics"])
        position = np.asarray(cam["pose"])[:3, 3]
        lines.append(
            f"camera       {name}: {cam['width']}x{cam['height']} px, fx={k[0, 0]:.1f} px, "
            f"at ({position[0]:.3f}, {position[1]:.3f}, {position[2]:.3f}) m"
        )
    collection = summary.get("collection") or {}
    if collection:
        lines.append(f"collection   seed {collection.get('seed')}, {collection.get('steps')} steps per episode")
    return "\n".join(lines)


def outline(mask: np.ndarray) -> np.ndarray:
    """Boundary pixels of a (H, W) mask: mask pixels with a 4-neighbour outside it, (H, W) bool."""
    inside = mask.astype(bool)
    padded = np.pad(inside, 1, mode="constant")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return inside & ~interior


def episode_frames(store: EpisodeStore, episode: int, colour=(255, 0, 255)) -> np.ndarray:
    """Video frames of an episode: every camera side by side, object mask outlined, (T+1, H, W*C, 3) uint8."""
    cameras = list(store.attrs["cameras"])
    data = store.episode(episode, [f"{c}/{k}" for c in cameras for k in ("rgb", "mask")])
    panels = []
    for camera in cameras:
        rgb = data[f"{camera}/rgb"].copy()
        for t, mask in enumerate(data[f"{camera}/mask"]):
            rgb[t][outline(mask)] = colour
        panels.append(rgb)
    return np.concatenate(panels, axis=2)


def write_episode_video(store: EpisodeStore, episode: int, out: Path, fps: float = 10.0) -> Path:
    """Write an MP4 (or GIF, by suffix) of one episode; returns the path."""
    if not 0 <= episode < store.num_episodes:
        raise ValueError(
            f"--episode {episode} is out of range: {store.path} holds episodes 0..{store.num_episodes - 1}"
        )
    return write_video(episode_frames(store, episode), out, fps)

"""Training windows: n history latents followed by H future latents, with the actions between them.

A window starting at frame s of an episode holds latents z_s .. z_{s+n+H-1} (n + H of them) and actions
a_s .. a_{s+n+H-2} (n + H - 1 of them); every frame lies in the same episode, and the zero action stored in
an episode's last frame is never used.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def window_starts(episode_ends: np.ndarray, episodes: np.ndarray, length: int) -> np.ndarray:
    """Global start frames of every window of `length` frames inside the chosen episodes.

    Args:
        episode_ends: (E,) exclusive end frame of each episode (the store's `episode_ends`).
        episodes: indices of the episodes to draw windows from.
        length: frames per window (n + H).

    Returns:
        (M,) int64 start frames, in episode then time order.
    """
    starts = []
    for episode in np.asarray(episodes, dtype=np.int64):
        begin = int(episode_ends[episode - 1]) if episode else 0
        end = int(episode_ends[episode])
        starts.append(np.arange(begin, end - length + 1, dtype=np.int64))
    return np.concatenate(starts) if starts else np.zeros(0, dtype=np.int64)


@dataclass
class WindowSet:
    """Windows over per-frame latents and actions held in memory as tensors.

    Attributes:
        latents: (N, D) float32 latents of every frame of the dataset, metres.
        actions: (N, 2) float32 pusher velocity applied after each frame, m/s.
        starts: (M,) int64 global start frames of the windows.
        history: n, latents the model sees before predicting.
        horizon: H, predicted steps.
        inputs: (N, *F) per-frame inputs of the latent method's trainable module (`LatentMethod.frame_inputs`,
            e.g. uint8 images), or None.
    """

    latents: torch.Tensor
    actions: torch.Tensor
    starts: torch.Tensor
    history: int
    horizon: int
    inputs: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def frames(self, indices: torch.Tensor) -> torch.Tensor:
        """Windows `indices` (B,) -> (B, n + H) global frame indices."""
        return self.starts[indices][:, None] + torch.arange(self.history + self.horizon)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Windows `indices` (B,) -> latents (B, n + H, D) and actions (B, n + H - 1, 2)."""
        frames = self.frames(indices)
        return self.latents[frames], self.actions[frames[:, :-1]]

    def batch_inputs(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Windows `indices` (B,) -> the (U, *F) frame inputs of their U distinct frames (in frame order) and the
        (B, n + H) row of each window entry among them; None when the windows carry no inputs. Windows overlap,
        so a method computes each frame once."""
        if self.inputs is None:
            return None
        distinct, rows = torch.unique(self.frames(indices), return_inverse=True)
        return self.inputs[distinct], rows


def make_windows(
    latents: np.ndarray,
    actions: np.ndarray,
    episode_ends: np.ndarray,
    episodes: np.ndarray,
    history: int,
    horizon: int,
    inputs: np.ndarray | None = None,
) -> WindowSet:
    """All windows of n + H frames inside `episodes` whose latents are all finite (a frame the latent method could
    not encode, NaN, is in no window); latents (N, D), actions (N, 2) and the optional frame inputs (N, *F) cover
    the whole store."""
    if history < 1 or horizon < 1:
        raise ValueError(f"history and horizon must be at least 1, got history={history}, horizon={horizon}")
    length = history + horizon
    starts = window_starts(episode_ends, episodes, length)
    unusable = ~np.isfinite(np.asarray(latents)).all(axis=1)
    if unusable.any():
        hits = np.concatenate([[0], np.cumsum(unusable)])  # unusable frames before each frame
        starts = starts[hits[starts + length] == hits[starts]]
    return WindowSet(
        latents=torch.as_tensor(np.asarray(latents, dtype=np.float32)),
        actions=torch.as_tensor(np.asarray(actions, dtype=np.float32)),
        starts=torch.as_tensor(starts),
        history=history,
        horizon=horizon,
        inputs=None if inputs is None else torch.as_tensor(inputs),
    )

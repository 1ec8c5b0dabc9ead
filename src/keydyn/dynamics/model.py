"""The keypoint dynamics model: an MLP over the last n latents and actions that predicts the change of state."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from keydyn.sim.environment import ACTION_DIM

PAPER_HIDDEN = (500, 500)  # paper: 2 hidden layers of 500 units
ORIGINAL_HIDDEN = (500, 1000, 1000, 500)  # the original code's DynaNetMLP


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DynamicsMLP(nn.Module):
    """z_{t+1} = z_t + f(z_{t-n+1..t}, a_{t-n+1..t}), with f an MLP on normalised inputs.

    Latents are (D,) vectors (K object keypoints x 3 then pusher xy, metres); actions are (2,) pusher
    velocities, m/s. The normalisation statistics are buffers, so they are saved and loaded with the weights:
    `latent_mean/std` (D,), `action_mean/std` (2,) normalise the inputs, `delta_mean/std` (D,) scale the
    MLP's output to a change of state in metres. They start as identity (mean 0, std 1); set them from data
    with `fit_normalizer`.
    """

    def __init__(self, latent_dim: int, history: int = 2, hidden: Sequence[int] = PAPER_HIDDEN) -> None:
        super().__init__()
        if history < 1:
            raise ValueError(f"history must be at least 1, got {history}")
        self.latent_dim = latent_dim
        self.history = history
        self.hidden = tuple(int(h) for h in hidden)
        self.net = mlp([history * (latent_dim + ACTION_DIM), *self.hidden, latent_dim])
        for name, size in (("latent", latent_dim), ("action", ACTION_DIM), ("delta", latent_dim)):
            self.register_buffer(f"{name}_mean", torch.zeros(size))
            self.register_buffer(f"{name}_std", torch.ones(size))

    def config(self) -> dict:
        """Constructor arguments (JSON-serialisable)."""
        return {"latent_dim": self.latent_dim, "history": self.history, "hidden": list(self.hidden)}

    @property
    def state_dim(self) -> int:
        """S = n D + (n - 1) 2: the size of the Markov state used by `step`."""
        return self.history * self.latent_dim + (self.history - 1) * ACTION_DIM

    @torch.no_grad()
    def fit_normalizer(self, latents: torch.Tensor, actions: torch.Tensor, eps: float = 1e-6) -> None:
        """Set the statistics from windows: latents (B, T, D) metres, actions (B, T - 1, 2) m/s."""
        deltas = latents[:, 1:] - latents[:, :-1]
        for name, values in (("latent", latents), ("action", actions), ("delta", deltas)):
            flat = values.reshape(-1, values.shape[-1]).to(torch.float64)
            getattr(self, f"{name}_mean").copy_(flat.mean(0))
            getattr(self, f"{name}_std").copy_(flat.std(0, unbiased=False).clamp_min(eps))

    def forward(self, latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Predict the next latent.

        Args:
            latents: (B, n, D) the last n latents z_{t-n+1..t}, metres.
            actions: (B, n, 2) the actions a_{t-n+1..t}, m/s (a_t moves z_t to z_{t+1}).

        Returns:
            (B, D) predicted z_{t+1}, metres.
        """
        z = (latents - self.latent_mean) / self.latent_std
        a = (actions - self.action_mean) / self.action_std
        features = torch.cat([z.flatten(1), a.flatten(1)], dim=1)
        delta = self.net(features) * self.delta_std + self.delta_mean
        return latents[:, -1] + delta

    def rollout(self, initial_latents: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """Open-loop autoregressive prediction.

        Args:
            initial_latents: (B, n, D) observed latents z_0..z_{n-1}, metres.
            actions: (B, H + n - 1, 2) actions a_0..a_{H+n-2}, m/s.

        Returns:
            (B, H, D) predicted z_n..z_{n+H-1}, metres.
        """
        n = self.history
        if initial_latents.shape[1] != n:
            raise ValueError(f"rollout needs {n} initial latents, got {initial_latents.shape[1]}")
        horizon = actions.shape[1] - n + 1
        if horizon < 1:
            raise ValueError(f"rollout needs at least {n} actions (H + n - 1), got {actions.shape[1]}")
        window = initial_latents
        predictions = []
        for h in range(horizon):
            following = self(window, actions[:, h : h + n])
            predictions.append(following)
            window = torch.cat([window[:, 1:], following[:, None]], dim=1)
        return torch.stack(predictions, dim=1)

    # -- Markov interface for planners ------------------------------------------------------------------
    def pack_state(self, latents: torch.Tensor, past_actions: torch.Tensor) -> torch.Tensor:
        """(N, n, D) last latents and (N, n - 1, 2) actions between them -> (N, S) Markov state."""
        return torch.cat([latents.flatten(1), past_actions.flatten(1)], dim=1)

    def unpack_state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, S) state -> latents (N, n, D) and past actions (N, n - 1, 2)."""
        split = self.history * self.latent_dim
        latents = state[:, :split].reshape(len(state), self.history, self.latent_dim)
        return latents, state[:, split:].reshape(len(state), self.history - 1, ACTION_DIM)

    def current_latent(self, state: torch.Tensor) -> torch.Tensor:
        """(N, S) state -> (N, D) the most recent latent."""
        return self.unpack_state(state)[0][:, -1]

    def step(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Advance (N, S) Markov states by (N, 2) actions (m/s) -> (N, S) next states."""
        latents, past = self.unpack_state(state)
        actions = torch.cat([past, action[:, None]], dim=1)
        following = self(latents, actions)
        return self.pack_state(torch.cat([latents[:, 1:], following[:, None]], dim=1), actions[:, 1:])

"""Latent methods by name: what `--latent NAME` picks in training, and what a run's config.json names later."""

from __future__ import annotations

from keydyn.latents.base import LatentMethod

_METHODS: dict[str, LatentMethod] = {}


def register_latent(method: LatentMethod) -> LatentMethod:
    """Make `method` available as `method.name`; returns it.

    Raises:
        ValueError: another method has that name.
    """
    if method.name in _METHODS:
        raise ValueError(f"a latent method named {method.name!r} is already registered ({_METHODS[method.name]!r})")
    _METHODS[method.name] = method
    return method


def get_latent(name: str) -> LatentMethod:
    """The method registered as `name`.

    Raises:
        ValueError: no method has that name (the message lists those that do).
    """
    if name not in _METHODS:
        raise ValueError(
            f"unknown latent {name!r}; registered latent methods: {', '.join(_METHODS)} "
            "(add one with keydyn.latents.register_latent)"
        )
    return _METHODS[name]


def latent_names() -> tuple[str, ...]:
    """Names of the registered methods, in registration order (the built-in ones first)."""
    return tuple(_METHODS)

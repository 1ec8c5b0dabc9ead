"""Latent methods: how observations become the latent states the dynamics model predicts, as plug-ins by name.

`base` is the contract (`LatentMethod`, `LatentEncoder`, `LatentLayout`), `registry` maps --latent names to
methods, `gt3d` is the ground-truth keypoint baseline (GT 3D), `descriptor` the dense-descriptor keypoints
(DS, SDS, WDS, WSDS), `transporter` the Transporter keypoint baselines (Transporter 3D, Transporter 2D) and
`autoencoder` the autoencoder trained jointly with the dynamics (Autoencoder).
Importing this package registers those built-in methods.
"""

from keydyn.latents.base import (
    PUSHER_DIM,
    KeypointLatent,
    LatentEncoder,
    LatentLayout,
    LatentMethod,
    SourceChangedError,
)
from keydyn.latents.registry import get_latent, latent_names, register_latent

# isort: split
from keydyn.latents import gt3d  # registers gt3d

# isort: split
from keydyn.latents import descriptor  # registers ds, sds, wds, wsds
from keydyn.latents.descriptor.references import KeypointConfig  # the descriptor latents' settings

# isort: split
from keydyn.latents import (
    autoencoder,  # registers autoencoder
    transporter,  # registers transporter3d, transporter2d
)
from keydyn.latents.autoencoder import AutoencoderConfig  # the autoencoder latent's settings

__all__ = [
    "PUSHER_DIM",
    "AutoencoderConfig",
    "KeypointConfig",
    "KeypointLatent",
    "LatentEncoder",
    "LatentLayout",
    "LatentMethod",
    "SourceChangedError",
    "autoencoder",
    "descriptor",
    "get_latent",
    "gt3d",
    "latent_names",
    "register_latent",
    "transporter",
]

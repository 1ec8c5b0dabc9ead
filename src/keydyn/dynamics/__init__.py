"""Training windows, SE(2) augmentation and the latent dynamics model.

The trainer, `keydyn.dynamics.train` (TrainDynamicsConfig, train_dynamics, load_dynamics), is imported from its
module; it reads the latents of the method `--latent` names from `keydyn.latents`.
"""

from keydyn.dynamics.augment import PlanarMotion, augment_windows, sample_planar_motions, transform_latents
from keydyn.dynamics.model import ORIGINAL_HIDDEN, PAPER_HIDDEN, DynamicsMLP
from keydyn.dynamics.windows import WindowSet, make_windows

__all__ = [
    "ORIGINAL_HIDDEN",
    "PAPER_HIDDEN",
    "DynamicsMLP",
    "PlanarMotion",
    "WindowSet",
    "augment_windows",
    "make_windows",
    "sample_planar_motions",
    "transform_latents",
]

"""Latent states (GT 3D keypoints), training windows, SE(2) augmentation and the keypoint dynamics model.

The trainer, `keydyn.dynamics.train` (TrainDynamicsConfig, train_dynamics, load_dynamics), is imported from its
module: it builds on `keydyn.keypoints` for the descriptor latents, which in turn build on these modules.
"""

from keydyn.dynamics.augment import PlanarMotion, augment_windows, sample_planar_motions, transform_latents
from keydyn.dynamics.latent import GroundTruthKeypoints, LatentLayout, ground_truth_latents
from keydyn.dynamics.model import ORIGINAL_HIDDEN, PAPER_HIDDEN, DynamicsMLP
from keydyn.dynamics.windows import WindowSet, make_windows

__all__ = [
    "ORIGINAL_HIDDEN",
    "PAPER_HIDDEN",
    "DynamicsMLP",
    "GroundTruthKeypoints",
    "LatentLayout",
    "PlanarMotion",
    "WindowSet",
    "augment_windows",
    "ground_truth_latents",
    "make_windows",
    "sample_planar_motions",
    "transform_latents",
]

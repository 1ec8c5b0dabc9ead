"""Latent states (GT 3D keypoints), training windows, SE(2) augmentation and the keypoint dynamics model."""

from keydyn.dynamics.augment import PlanarMotion, augment_windows, sample_planar_motions, transform_latents
from keydyn.dynamics.latent import GroundTruthKeypoints, LatentLayout, ground_truth_latents
from keydyn.dynamics.model import ORIGINAL_HIDDEN, PAPER_HIDDEN, DynamicsMLP
from keydyn.dynamics.train import TrainDynamicsConfig, load_dynamics, train_dynamics
from keydyn.dynamics.windows import WindowSet, make_windows, split_episodes

__all__ = [
    "ORIGINAL_HIDDEN",
    "PAPER_HIDDEN",
    "DynamicsMLP",
    "GroundTruthKeypoints",
    "LatentLayout",
    "PlanarMotion",
    "TrainDynamicsConfig",
    "WindowSet",
    "augment_windows",
    "ground_truth_latents",
    "load_dynamics",
    "make_windows",
    "sample_planar_motions",
    "split_episodes",
    "train_dynamics",
    "transform_latents",
]

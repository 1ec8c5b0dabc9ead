"""Descriptor keypoint latents (paper 3.2, appendix 8): DS, SDS, WDS and WSDS.

`references` chooses the reference descriptors (DS: K random ones from the object mask; SDS: the K* most
confident, spread apart), `dataset` locates them in every frame of a dataset (cached), `weights` holds the
learnable convex combinations of WDS / WSDS, `encoder` is the control-time encoder, `pictures` draws the
references, and `latents` ties them to a dynamics run.
"""

from keydyn.keypoints.dataset import DatasetKeypoints, dataset_keypoints
from keydyn.keypoints.encoder import DescriptorEncoder
from keydyn.keypoints.references import KeypointConfig, References, choose_references
from keydyn.keypoints.weights import KeypointWeights

__all__ = [
    "DatasetKeypoints",
    "DescriptorEncoder",
    "KeypointConfig",
    "KeypointWeights",
    "References",
    "choose_references",
    "dataset_keypoints",
]

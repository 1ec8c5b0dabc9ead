"""Descriptor keypoint latents (paper 3.2, appendix 8): DS, SDS, WDS and WSDS, one method class four ways.

`references` chooses the reference descriptors (DS: K random ones from the object mask; SDS: the K* most
confident, spread apart) and locates them, `dataset` locates them in every frame of a dataset (cached),
`rigid` and `fusion` filter outliers and fuse cameras, `weights` holds the learnable convex combinations of
WDS / WSDS, `encoder` is the control-time encoder, `pictures` draws the references, `accuracy` measures the
located points against the true object points, and `method` ties them to a dynamics run and registers the
four latent methods.
"""

from keydyn.latents.descriptor.dataset import DatasetKeypoints, dataset_keypoints
from keydyn.latents.descriptor.encoder import DescriptorEncoder
from keydyn.latents.descriptor.method import DescriptorLatent
from keydyn.latents.descriptor.references import KeypointConfig, References, choose_references
from keydyn.latents.descriptor.weights import KeypointWeights

__all__ = [
    "DatasetKeypoints",
    "DescriptorEncoder",
    "DescriptorLatent",
    "KeypointConfig",
    "KeypointWeights",
    "References",
    "choose_references",
    "dataset_keypoints",
]

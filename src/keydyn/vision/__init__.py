"""Dense visual descriptors: geometry, correspondences, descriptor networks, losses and keypoints.

The pieces of the paper's perception (section 3.2, appendix 6): `correspondence` finds training matches
between RGB-D views from depth and camera poses; `network` maps images to descriptor images; `losses` are the
heatmap and spatial-expectation losses; `keypoints` turns descriptor images and reference descriptors into
3D keypoints with confidences and selects the Spatial Descriptor Set.
"""

from keydyn.vision.augment import AugmentConfig, jitter_colour, randomise_background
from keydyn.vision.correspondence import (
    CorrespondenceConfig,
    Correspondences,
    MatchBatch,
    find_correspondences,
    sample_non_matches,
    sample_pixels,
    stack_correspondences,
)
from keydyn.vision.heatmap import DESCRIPTOR_ETA, depth_expectation, descriptor_logits, spatial_expectation
from keydyn.vision.keypoints import (
    Keypoints,
    locate_keypoints,
    sample_reference_descriptors,
    select_spatial_descriptors,
)
from keydyn.vision.losses import DescriptorLossConfig, DescriptorLosses, descriptor_losses, target_heatmap
from keydyn.vision.network import DescriptorNet, DescriptorNetConfig, rgb_to_tensor
from keydyn.vision.views import RGBDView, load_view

__all__ = [
    "DESCRIPTOR_ETA",
    "AugmentConfig",
    "CorrespondenceConfig",
    "Correspondences",
    "DescriptorLossConfig",
    "DescriptorLosses",
    "DescriptorNet",
    "DescriptorNetConfig",
    "Keypoints",
    "MatchBatch",
    "RGBDView",
    "depth_expectation",
    "descriptor_logits",
    "descriptor_losses",
    "find_correspondences",
    "jitter_colour",
    "load_view",
    "locate_keypoints",
    "randomise_background",
    "rgb_to_tensor",
    "sample_non_matches",
    "sample_pixels",
    "sample_reference_descriptors",
    "select_spatial_descriptors",
    "spatial_expectation",
    "stack_correspondences",
    "target_heatmap",
]

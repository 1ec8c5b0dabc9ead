"""Dense visual descriptors: geometry, correspondences, descriptor networks, losses and keypoints.

The pieces of the paper's perception (section 3.2, appendix 6): `correspondence` finds training matches
between RGB-D views from depth and camera poses; `network` maps images to descriptor images; `losses` are the
heatmap and spatial-expectation losses; `keypoints` turns descriptor images and reference descriptors into
3D keypoints with confidences and selects the Spatial Descriptor Set; `pairs` draws training pairs of views,
`train` trains a network on them (`keydyn train-visual`) and `pictures` draws what it learnt.
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
from keydyn.vision.heatmap import DESCRIPTOR_ETA, descriptor_logits, expectations_from_logits, heatmap_expectations
from keydyn.vision.keypoints import (
    Keypoints,
    confidence_ranking,
    locate_keypoints,
    sample_reference_descriptors,
    select_spatial_descriptors,
)
from keydyn.vision.losses import DescriptorLossConfig, DescriptorLosses, descriptor_losses, target_heatmap
from keydyn.vision.network import DescriptorNet, DescriptorNetConfig, rgb_to_tensor
from keydyn.vision.pairs import Pair, PairBatch, PairConfig, PairSampler, stack_pairs
from keydyn.vision.pictures import descriptor_colours, write_descriptor_picture, write_heatmap_picture
from keydyn.vision.train import TrainVisualConfig, load_descriptor_net, train_visual
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
    "Pair",
    "PairBatch",
    "PairConfig",
    "PairSampler",
    "RGBDView",
    "TrainVisualConfig",
    "confidence_ranking",
    "descriptor_colours",
    "descriptor_logits",
    "descriptor_losses",
    "expectations_from_logits",
    "find_correspondences",
    "heatmap_expectations",
    "jitter_colour",
    "load_descriptor_net",
    "load_view",
    "locate_keypoints",
    "randomise_background",
    "rgb_to_tensor",
    "sample_non_matches",
    "sample_pixels",
    "sample_reference_descriptors",
    "select_spatial_descriptors",
    "stack_correspondences",
    "stack_pairs",
    "target_heatmap",
    "train_visual",
    "write_descriptor_picture",
    "write_heatmap_picture",
]

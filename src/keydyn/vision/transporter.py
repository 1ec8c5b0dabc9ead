"""Transporter (Kulkarni et al. 2019) as the original key_dynam code built it: keypoints learnt by reconstructing one
frame of an episode from another (the paper's Transporter 2D / 3D baselines, Table 2).

The network reads 64x64 RGB images scaled to [-1, 1] (`InputImages`, made by `prepare_images`):

    feature encoder   Conv 7x7 (nf) - Conv 5x5 (nf) - Conv 4x4/2 (2 nf) - Conv 3x3 (2 nf) - Conv 4x4/2 (4 nf), each
                      followed by BatchNorm and LeakyReLU(0.2): (B, 3, 64, 64) -> (B, 4 nf, 16, 16) features
    keypointer        the same layers (own weights) and a 1x1 conv to K maps; a softmax over each whole 16x16 map
                      gives the expected (x, y) in [-1, 1] (`spatial_softmax`)
    Gaussian maps     exp(-||g - mu||^2 * inv_std^2) on the 16x16 grid g (`gaussian_maps`; inv_std 10: sigma 0.07)
    transport         with H the sum of a frame's K maps: f = (1 - H_src)(1 - H_dst) f_src + H_dst f_dst, the source
                      features and keypoints detached (`transport`)
    refiner           ConvT 4x4/2 (4 nf) - Conv 3x3 (2 nf) - ConvT 4x4/2 (2 nf) - Conv 5x5 (nf), each with BatchNorm
                      and LeakyReLU, then Conv 7x7 to 3 channels: (B, 4 nf, 16, 16) -> (B, 3, 64, 64)

Normalised coordinates: x = -1 and +1 are the centres of the first and last column of the 16x16 map (as the
original's linspace grid), y likewise for rows; x grows to the right (image u), y downwards (image v).

Input preparation (`prepare_images`): crop "mask" takes the smallest square around the object's mask bounding box
(shifted inside the image), zeroes the background and resizes it to 64x64, as the original did: the mask is the
simulator's segmentation, privileged information the paper does not mention. Crop "full" resizes the whole image,
unmasked. Either way the crop's box in the full image is kept (`CropBoxes`), so `full_image_pixels` maps keypoints
back to full-image pixels for the depth look-up of Transporter 3D.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional

CropMode = Literal["mask", "full"]
CROP_MODES: tuple[str, ...] = ("mask", "full")
NEGATIVE_SLOPE = 0.2  # LeakyReLU slope of every layer (original)


@dataclass(frozen=True)
class TransporterNetConfig:
    """The Transporter network's shape (defaults: the original's)."""

    num_keypoints: int = 6
    """K keypoints (original and paper: 6)."""
    width: int = 32
    """nf: channels of the first layers; the features have 4 nf (original: 32)."""
    image_size: int = 64
    """Side of the square input images, pixels (a multiple of 4; original: 64)."""
    inverse_std: float = 10.0
    """Gaussian maps exp(-d^2 * inverse_std^2), d in normalised units (original: 10)."""

    def __post_init__(self) -> None:
        if self.num_keypoints < 1 or self.width < 1 or self.inverse_std <= 0:
            raise ValueError(
                "need --network.num-keypoints >= 1, --network.width >= 1 and --network.inverse-std > 0; got "
                f"{self.num_keypoints}, {self.width}, {self.inverse_std}"
            )
        if self.image_size < 8 or self.image_size % 4:
            raise ValueError(f"--network.image-size must be a multiple of 4, at least 8; got {self.image_size}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(values: dict[str, Any]) -> TransporterNetConfig:
        return TransporterNetConfig(**values)


def _block(conv: nn.Module, channels: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(channels), nn.LeakyReLU(NEGATIVE_SLOPE)]


def _encoder_layers(nf: int) -> list[nn.Module]:
    """(B, 3, S, S) -> (B, 4 nf, S / 4, S / 4): the layers the feature encoder and the keypointer share in shape."""
    return [
        *_block(nn.Conv2d(3, nf, 7, 1, 3), nf),
        *_block(nn.Conv2d(nf, nf, 5, 1, 2), nf),
        *_block(nn.Conv2d(nf, 2 * nf, 4, 2, 1), 2 * nf),
        *_block(nn.Conv2d(2 * nf, 2 * nf, 3, 1, 1), 2 * nf),
        *_block(nn.Conv2d(2 * nf, 4 * nf, 4, 2, 1), 4 * nf),
    ]


def feature_grid(size: int, device: torch.device | None = None) -> torch.Tensor:
    """(size,) normalised coordinates of the centres of a feature map's columns (or rows): -1 to 1."""
    return torch.linspace(-1.0, 1.0, size, device=device)


def spatial_softmax(maps: torch.Tensor) -> torch.Tensor:
    """(B, K, h, w) keypoint logits -> (B, K, 2) expected (x, y) under a softmax over each whole map, in [-1, 1]."""
    batch, k, height, width = maps.shape
    weights = functional.softmax(maps.float().reshape(batch, k, height * width), dim=-1).reshape(
        batch, k, height, width
    )
    x = (weights.sum(dim=2) * feature_grid(width, maps.device)).sum(dim=-1)
    y = (weights.sum(dim=3) * feature_grid(height, maps.device)).sum(dim=-1)
    return torch.stack([x, y], dim=-1)


def gaussian_maps(keypoints: torch.Tensor, height: int, width: int, inverse_std: float) -> torch.Tensor:
    """(B, K, 2) normalised keypoints -> (B, K, height, width) maps exp(-||g - mu||^2 * inverse_std^2), peaking
    (at 1) on the grid cell nearest each keypoint."""
    x = feature_grid(width, keypoints.device).view(1, 1, 1, width)
    y = feature_grid(height, keypoints.device).view(1, 1, height, 1)
    distance = (x - keypoints[..., 0, None, None]) ** 2 + (y - keypoints[..., 1, None, None]) ** 2
    return torch.exp(-distance * inverse_std**2)


def transport(
    source_features: torch.Tensor, target_features: torch.Tensor, source_maps: torch.Tensor, target_maps: torch.Tensor
) -> torch.Tensor:
    """Feature transport with summed maps (the original; DeepMind transports keypoint by keypoint):
    (B, C, h, w) features and (B, K, h, w) Gaussian maps -> (B, C, h, w) = (1 - H_s)(1 - H_t) f_s + H_t f_t."""
    source_sum = source_maps.sum(dim=1, keepdim=True)
    target_sum = target_maps.sum(dim=1, keepdim=True)
    return source_features * (1.0 - source_sum) * (1.0 - target_sum) + target_sum * target_features


class TransporterNet(nn.Module):
    """Feature encoder, keypointer and refiner (module docstring)."""

    def __init__(self, config: TransporterNetConfig) -> None:
        super().__init__()
        self.config = config
        nf = config.width
        self.features = nn.Sequential(*_encoder_layers(nf))
        self.keypointer = nn.Sequential(*_encoder_layers(nf), nn.Conv2d(4 * nf, config.num_keypoints, 1))
        self.refiner = nn.Sequential(
            *_block(nn.ConvTranspose2d(4 * nf, 4 * nf, 4, 2, 1), 4 * nf),
            *_block(nn.Conv2d(4 * nf, 2 * nf, 3, 1, 1), 2 * nf),
            *_block(nn.ConvTranspose2d(2 * nf, 2 * nf, 4, 2, 1), 2 * nf),
            *_block(nn.Conv2d(2 * nf, nf, 5, 1, 2), nf),
            nn.Conv2d(nf, 3, 7, 1, 3),
        )

    def keypoints(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [-1, 1] -> (B, K, 2) float32 keypoints (x, y), normalised, in [-1, 1]."""
        return spatial_softmax(self.keypointer(images))

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reconstruct `target` from `source` and the target's keypoints.

        Args:
            source, target: (B, 3, S, S) images in [-1, 1] (frame A and frame B of pairs).

        Returns:
            (B, 3, S, S) reconstructed targets and (B, K, 2) the targets' keypoints.
        """
        both = torch.cat([source, target])
        features, keypoints = self.features(both), self.keypoints(both)
        size = len(source)
        height, width = features.shape[-2:]
        source_features, target_features = features[:size].detach(), features[size:]  # the source: no gradient
        inverse_std = self.config.inverse_std
        source_maps = gaussian_maps(keypoints[:size].detach(), height, width, inverse_std)
        target_maps = gaussian_maps(keypoints[size:], height, width, inverse_std)
        mixed = transport(source_features.float(), target_features.float(), source_maps, target_maps)
        return self.refiner(mixed.to(features.dtype)), keypoints[size:]


# -- input preparation ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class InputImages:
    """Network inputs and where they came from.

    Attributes:
        images: (B, 3, S, S) uint8 images, 0-255 (`to_network_range` scales them for the network).
        boxes: (B, 4) float64 crop boxes (left, top, width, height) in full-image pixels: the crop covers pixel
            columns left .. left + width - 1 and rows top .. top + height - 1.
    """

    images: torch.Tensor
    boxes: torch.Tensor


def to_network_range(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 images -> (B, 3, H, W) float32 in [-1, 1] (the original's normalisation)."""
    return images.float() / 127.5 - 1.0


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


def check_masks(mask: torch.Tensor, shape: tuple[int, ...], first_row: int = 0, where: str = "") -> None:
    """Check object masks for crop "mask": one (H, W) mask per image, each with an object pixel.

    Args:
        mask: (B, H, W) masks (nonzero on the object).
        shape: (B, H, W) of the images they belong to.
        first_row: the row of mask 0 in the errors (a dataset's frame row).
        where: what the masks are of, to begin the errors with (a dataset and camera).

    Raises:
        ValueError: the shapes differ, or a mask has no object pixel (the object out of view).
    """
    prefix = f"{where}: " if where else ""
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(
            f"{prefix}object masks of shape {tuple(mask.shape)} for images of {tuple(shape)}: give one (H, W) mask "
            "per image, at the image's resolution"
        )
    empty = torch.nonzero(~mask.flatten(1).ne(0).any(dim=1)).flatten()
    if len(empty):
        rows = ", ".join(str(first_row + int(i)) for i in empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise ValueError(
            f"{prefix}{len(empty)} object masks have no object pixel (rows {rows}): the object is out of view, and "
            "the mask crop has nothing to crop around; use the whole image (--crop full), or leave those frames out"
        )


def mask_box(mask: torch.Tensor) -> tuple[int, int, int]:
    """(left, top, side) of the smallest square of pixels holding every pixel of an (H, W) mask's bounding box,
    shifted to lie inside the image (side at most min(H, W)); the mask has an object pixel (`check_masks`)."""
    height, width = mask.shape
    rows, columns = torch.nonzero(mask, as_tuple=True)
    top, bottom = int(rows.min()), int(rows.max())
    left, right = int(columns.min()), int(columns.max())
    side = min(max(bottom - top, right - left) + 1, height, width)
    left = min(max(left - (side - (right - left + 1)) // 2, 0), width - side)
    top = min(max(top - (side - (bottom - top + 1)) // 2, 0), height - side)
    return left, top, side


def prepare_images(rgb: torch.Tensor, mask: torch.Tensor | None, crop: CropMode, size: int) -> InputImages:
    """Full camera images -> network inputs (module docstring).

    Args:
        rgb: (B, H, W, 3) uint8 images.
        mask: (B, H, W) object masks (nonzero on the object), each with an object pixel; needed by crop "mask",
            ignored by "full".
        crop: "mask" (a square around the object, background zeroed) or "full" (the whole image, unmasked).
        size: S, the side of the network's input, pixels.

    Returns:
        The (B, 3, S, S) uint8 inputs and their crop boxes.
    """
    batch, height, width, _ = rgb.shape
    images = rgb.permute(0, 3, 1, 2).float() / 255.0
    if crop == "full":
        resized = functional.interpolate(
            images, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        boxes = torch.tensor([[0.0, 0.0, width, height]], dtype=torch.float64).repeat(batch, 1)
        return InputImages(_to_uint8(resized), boxes)
    if crop != "mask":
        raise ValueError(f"crop {crop!r}: use 'mask' or 'full'")
    if mask is None:
        raise ValueError("crop 'mask' needs the object masks (NAME/mask); pass them, or use crop 'full'")
    check_masks(mask, rgb.shape[:3])
    crops, boxes = [], []
    for image, object_mask in zip(images, mask, strict=True):
        left, top, side = mask_box(object_mask)
        on_object = (object_mask[top : top + side, left : left + side] != 0).to(image.dtype)
        square = image[:, top : top + side, left : left + side] * on_object  # background zeroed (black)
        crops.append(
            functional.interpolate(
                square[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True
            )
        )
        boxes.append((left, top, side, side))
    return InputImages(_to_uint8(torch.cat(crops)), torch.tensor(boxes, dtype=torch.float64))


def full_image_pixels(keypoints: torch.Tensor, boxes: torch.Tensor, cells: int) -> torch.Tensor:
    """Normalised keypoints of cropped inputs -> continuous full-image pixels (u, v).

    Args:
        keypoints: (B, K, 2) (x, y) in [-1, 1], -1 and 1 the centres of the first and last feature cells.
        boxes: (B, 4) crop boxes (left, top, width, height), full-image pixels.
        cells: feature cells across the input (image_size / 4: 16 for 64x64 inputs).

    Returns:
        (B, K, 2) float64 pixels (u, v) in the full image (pixel centres at whole numbers).
    """
    keypoints = keypoints.double()
    left, top, width, height = (boxes[:, None, i] for i in range(4))
    span = 0.5 - 0.5 / cells  # the grid's -1 .. 1 spans the crop less half a cell at each edge
    u = left - 0.5 + width * (0.5 + span * keypoints[..., 0])
    v = top - 0.5 + height * (0.5 + span * keypoints[..., 1])
    return torch.stack([u, v], dim=-1)


def normalised_image_xy(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(..., 2) full-image pixels (u, v) -> (..., 2) (x, y) in [-1, 1], -1 and 1 the image's outer edges."""
    size = torch.tensor([width, height], dtype=pixels.dtype, device=pixels.device)
    return (pixels + 0.5) / size * 2.0 - 1.0

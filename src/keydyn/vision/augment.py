"""Image augmentation for descriptor training: colour jitter and background randomisation, seeded.

Both act on float RGB batches (B, 3, H, W) in [0, 1] and leave geometry (pixels, depth, masks) unchanged, so
correspondences stay valid. The defaults follow the original code's augmentation: brightness x[0.8, 1.2],
contrast [0.75, 1.5], hue and saturation shifts, each applied with probability 0.5, and the background
replaced with probability 0.5. Hue is rotated in the YIQ chroma plane and saturation scaled about the grey
level (the original used imgaug's HSV operations; these are close, not identical).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional

# RGB -> YIQ (NTSC); hue rotation turns the (I, Q) chroma plane about the luma axis
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@dataclass(frozen=True)
class AugmentConfig:
    """Random colour changes and background replacement.

    Attributes:
        probability: chance that each colour operation is applied to an image.
        brightness: range of the brightness factor.
        contrast: range of the contrast factor (about the image's mean grey level).
        saturation: range of the saturation factor (about each pixel's grey level).
        hue_degrees: hue rotated by up to this many degrees either way.
        background_probability: chance that an image's background (outside its object mask) is replaced by
            a random colour, smooth noise, or both.
        noise_cells: the random background noise has about this many cells across the image.
    """

    probability: float = 0.5
    brightness: tuple[float, float] = (0.8, 1.2)
    contrast: tuple[float, float] = (0.75, 1.5)
    saturation: tuple[float, float] = (0.6, 1.4)
    hue_degrees: float = 35.0
    background_probability: float = 0.5
    noise_cells: int = 8


def _uniform(low: float, high: float, size: int, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _grey(rgb: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    weights = _RGB_TO_YIQ[0].to(rgb.device, rgb.dtype).view(1, 3, 1, 1)
    return (rgb * weights).sum(dim=1, keepdim=True)


def _rotate_hue(rgb: torch.Tensor, radians: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of each image (B, 3, H, W) by (B,) radians."""
    to_yiq = _RGB_TO_YIQ.to(rgb.device, rgb.dtype)
    cos, sin = torch.cos(radians).to(rgb), torch.sin(radians).to(rgb)
    rotation = torch.zeros(len(radians), 3, 3, dtype=rgb.dtype, device=rgb.device)
    rotation[:, 0, 0] = 1.0
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = cos, -sin, sin, cos
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (B, 3, 3), applied per pixel
    return torch.einsum("bij,bjhw->bihw", matrix, rgb)


def jitter_colour(rgb: torch.Tensor, generator: torch.Generator, config: AugmentConfig | None = None) -> torch.Tensor:
    """Random brightness, contrast, saturation and hue per image.

    Args:
        rgb: (B, 3, H, W) float in [0, 1].
        generator: CPU torch generator.
        config: ranges and probabilities (default `AugmentConfig()`).

    Returns:
        (B, 3, H, W) jittered images, clamped to [0, 1].
    """
    config = config or AugmentConfig()
    batch = rgb.shape[0]

    def chosen() -> torch.Tensor:
        return (torch.rand(batch, generator=generator) < config.probability).to(rgb.device).view(batch, 1, 1, 1)

    factor = _uniform(*config.brightness, batch, generator).to(rgb).view(batch, 1, 1, 1)
    rgb = torch.where(chosen(), rgb * factor, rgb)
    factor = _uniform(*config.contrast, batch, generator).to(rgb).view(batch, 1, 1, 1)
    mean = _grey(rgb).mean(dim=(-2, -1), keepdim=True)
    rgb = torch.where(chosen(), mean + (rgb - mean) * factor, rgb)
    factor = _uniform(*config.saturation, batch, generator).to(rgb).view(batch, 1, 1, 1)
    grey = _grey(rgb)
    rgb = torch.where(chosen(), grey + (rgb - grey) * factor, rgb)
    angle = math.radians(config.hue_degrees)
    rgb = torch.where(chosen(), _rotate_hue(rgb, _uniform(-angle, angle, batch, generator)), rgb)
    return rgb.clamp(0.0, 1.0)


def randomise_background(
    rgb: torch.Tensor, mask: torch.Tensor, generator: torch.Generator, config: AugmentConfig | None = None
) -> torch.Tensor:
    """Replace the pixels outside the object mask by a random colour plus smooth random noise, per image.

    Args:
        rgb: (B, 3, H, W) float in [0, 1].
        mask: (B, H, W) bool object masks (kept pixels).
        generator: CPU torch generator.
        config: probability and noise scale (default `AugmentConfig()`).

    Returns:
        (B, 3, H, W) images; each is changed with probability `config.background_probability`.
    """
    config = config or AugmentConfig()
    batch, _, height, width = rgb.shape
    cells_x = max(1, config.noise_cells)
    cells_y = max(1, round(cells_x * height / width))
    colour = torch.rand(batch, 3, 1, 1, generator=generator)
    noise = torch.rand(batch, 3, cells_y, cells_x, generator=generator) - 0.5
    amount = torch.rand(batch, 1, 1, 1, generator=generator)  # from flat colour to strong texture
    texture = functional.interpolate(noise, size=(height, width), mode="bicubic", align_corners=False)
    background = (colour + amount * texture).clamp(0.0, 1.0).to(rgb)
    replace = (torch.rand(batch, generator=generator) < config.background_probability).to(rgb.device)
    outside = ~mask.unsqueeze(1) & replace.view(batch, 1, 1, 1)
    return torch.where(outside, background, rgb)

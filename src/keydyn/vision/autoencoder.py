"""The convolutional autoencoder of the Autoencoder baseline (paper appendix, "Autoencoder"; the contrastive
forward model's Encoder and Decoder that the original code imports), and the images it reads.

A camera's whole RGB image is resized to 64 x 64 (`prepare_images`, kept as uint8 so that a dataset's images fit
in memory), ImageNet-normalised for the encoder (`encoder_input`) and scaled to [0, 1] as the reconstruction
target (`reconstruction_target`):

    ImageEncoder: (B, 3, 64, 64) -> convolutions with kernels 3, 4, 3, 4, 4, 4, strides 1, 2, 1, 2, 2, 2 and
        64, 64, 64, 128, 256, 256 filters (padding 1, LeakyReLU 0.2 after each): 64 -> 64 -> 32 -> 32 -> 16 -> 8
        -> 4 pixels; then Linear(256 * 4 * 4 -> z) -> (B, z).
    ImageDecoder: (B, z) as (B, z, 1, 1) -> ConvTranspose(z -> 256, kernel 4): 4 x 4, then four transposed
        convolutions of kernel 4, stride 2 (256, 128, 64, 3 filters; LeakyReLU 0.2 between): 8, 16, 32, 64 pixels;
        tanh -> (B, 3, 64, 64) mapped to [0, 1] by (1 + tanh) / 2.

The original's decoder ends with tanh in [-1, 1] while its target is the image in [0, 1]; here the output is
mapped to [0, 1], so the loss keeps the original's target and scale without the mismatch.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
from torch import nn

from keydyn.files import write_atomic
from keydyn.vision.network import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SIZE = 64
"""Side of the square images the autoencoder reads and reconstructs, pixels."""
Z_DIMS = (16, 32, 64)
"""The latent sizes the paper tried (64 worked best, and is used for every experiment)."""
LEAKY_SLOPE = 0.2


def prepare_images(rgb: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 RGB images -> (..., 3, 64, 64) uint8, resized whole (no crop) by antialiased
    bilinear interpolation and rounded."""
    rgb = torch.as_tensor(np.asarray(rgb))
    if rgb.dtype != torch.uint8 or rgb.ndim < 3 or rgb.shape[-1] != 3:
        raise ValueError(f"prepare_images needs (..., H, W, 3) uint8 RGB images, got {rgb.dtype} {tuple(rgb.shape)}")
    lead = rgb.shape[:-3]
    flat = rgb.reshape(-1, *rgb.shape[-3:]).permute(0, 3, 1, 2).float()
    size = (IMAGE_SIZE, IMAGE_SIZE)
    resized = nn.functional.interpolate(flat, size=size, mode="bilinear", antialias=True, align_corners=False)
    return resized.round().clamp(0, 255).to(torch.uint8).reshape(*lead, 3, *size)


def encoder_input(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, 64, 64) uint8 images -> float32 ImageNet-normalised images (the encoder's input)."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device).view(3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def reconstruction_target(images: torch.Tensor) -> torch.Tensor:
    """(..., 3, 64, 64) uint8 images -> float32 images in [0, 1] (what the decoder reconstructs)."""
    return images.float() / 255.0


class ImageEncoder(nn.Module):
    """(B, 3, 64, 64) ImageNet-normalised images -> (B, z) latents (layers in the module docstring)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for kernel, stride, filters in zip(
            (3, 4, 3, 4, 4, 4), (1, 2, 1, 2, 2, 2), (64, 64, 64, 128, 256, 256), strict=True
        ):
            layers += [nn.Conv2d(channels, filters, kernel, stride, padding=1), nn.LeakyReLU(LEAKY_SLOPE)]
            channels = filters
        self.convs = nn.Sequential(*layers)
        self.out = nn.Linear(256 * 4 * 4, z_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.out(self.convs(images).flatten(1))


class ImageDecoder(nn.Module):
    """(B, z) latents -> (B, 3, 64, 64) images in [0, 1] (layers in the module docstring)."""

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.ConvTranspose2d(z_dim, 256, 4, 1)]
        channels = 256
        for filters in (256, 128, 64, 3):
            layers += [nn.LeakyReLU(LEAKY_SLOPE), nn.ConvTranspose2d(channels, filters, 4, 2, padding=1)]
            channels = filters
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return (1.0 + torch.tanh(self.deconvs(z[:, :, None, None]))) / 2.0


def write_reconstruction_picture(
    path: Path, images: torch.Tensor, reconstructions: torch.Tensor, scale: int = 2
) -> Path:
    """Save (M, 3, 64, 64) uint8 images (top row) above their (M, 3, 64, 64) reconstructions in [0, 1] (bottom
    row), each pixel drawn `scale` x `scale`, as a PNG, atomically."""
    shown = (reconstructions.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    rows = [torch.cat(list(batch.cpu()), dim=2) for batch in (images, shown)]  # (3, 64, M * 64) each
    picture = torch.cat(rows, dim=1).repeat_interleave(scale, 1).repeat_interleave(scale, 2)
    write_atomic(Path(path), lambda p: iio.imwrite(p, picture.permute(1, 2, 0).numpy(), extension=".png"))
    return Path(path)

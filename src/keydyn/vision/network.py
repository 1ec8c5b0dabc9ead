"""Fully convolutional dense descriptor networks on ResNet-18/34/50 backbones written here.

`DescriptorNet` maps (B, 3, H, W) RGB in [0, 1] to (B, D, H, W) descriptor images at the input resolution.
ImageNet mean/std normalisation happens inside the model. Two variants:

- "dilated" (the paper's and the original code's): the ResNet's last two stages replace their stride by
  dilation (2 and 4), so the features stay at output stride 8; an FCN head (3x3 conv, BN, ReLU, dropout,
  1x1 conv to D) and bilinear upsampling give full resolution. The original used torchvision's
  `fcn_resnet50` built this way, with D = 3.
- "strided": standard ResNet strides, keeping the stages down to `output_stride` (8: stages 1-2, 16: 1-3,
  32: 1-4); each kept stage at stride >= `finest_stride` gets a 1x1 score layer and the scores are summed at
  that stride (FCN-8s style skips; `finest_stride=4` adds stage 1, FCN-4s style, for finer descriptors at a
  few percent more compute) before bilinear upsampling. Several times cheaper on a CPU.

The backbone's parameter names follow torchvision's ResNet (conv1, bn1, layer1.0.conv1, ..., downsample.0),
so a state dict of ImageNet weights converted from torchvision loads with `net.backbone.load_state_dict`
(the `fc` layer is not built). Nothing is downloaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.nn import functional

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BLOCKS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
}


@dataclass(frozen=True)
class DescriptorNetConfig:
    """Architecture of a descriptor network.

    Attributes:
        backbone: "resnet18", "resnet34" or "resnet50".
        descriptor_dim: D, channels of the descriptor image (the original code's value is 3).
        variant: "dilated" (paper / original: output stride 8 by dilation) or "strided".
        output_stride: 8, 16 or 32, the deepest stage kept by the "strided" variant; "dilated" is always 8.
        finest_stride: 8 or 4, the stride of the shallowest stage whose scores the "strided" variant sums (4,
            beyond the paper, adds stage 1: its descriptor image is bilinear over 4x4-pixel cells rather than
            8x8); "dilated": 8.
        width: channels of the first stage (64 in the standard ResNets; smaller for tests and quick runs).
    """

    backbone: Literal["resnet18", "resnet34", "resnet50"] = "resnet50"
    descriptor_dim: int = 3
    variant: Literal["dilated", "strided"] = "dilated"
    output_stride: Literal[8, 16, 32] = 8
    finest_stride: Literal[4, 8] = 8
    width: int = 64

    def __post_init__(self) -> None:
        if self.backbone not in _BLOCKS:
            raise ValueError(f"backbone {self.backbone!r}: use one of {', '.join(_BLOCKS)}")
        if self.variant not in ("dilated", "strided"):
            raise ValueError(f"variant {self.variant!r}: use 'dilated' or 'strided'")
        if self.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride {self.output_stride}: use 8, 16 or 32")
        if self.variant == "dilated" and self.output_stride != 8:
            raise ValueError("the dilated variant has output stride 8; output_stride applies to 'strided'")
        if self.finest_stride not in (4, 8):
            raise ValueError(f"finest_stride {self.finest_stride}: use 4 or 8")
        if self.variant == "dilated" and self.finest_stride != 8:
            raise ValueError("the dilated variant sums no skips; finest_stride 4 applies to 'strided'")
        if self.descriptor_dim < 1 or self.width < 1:
            raise ValueError("descriptor_dim and width must be positive")

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> DescriptorNetConfig:
        """The config saved in a run's checkpoint JSON (its "network"). Runs of older keydyn versions also saved
        `pretrained`, which was always false (ImageNet weights were never supported); it is dropped.

        Raises:
            ValueError: `pretrained` is true.
        """
        values = dict(values)
        if values.pop("pretrained", False):
            raise ValueError(
                "this network's config says pretrained=True, but keydyn never loaded ImageNet weights; load a "
                "torchvision-named ResNet state dict with net.backbone.load_state_dict(..., strict=False) instead"
            )
        return cls(**values)


def _conv3x3(inputs: int, outputs: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inputs, outputs, 3, stride=stride, padding=dilation, dilation=dilation, bias=False)


def _downsample(inputs: int, outputs: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and inputs == outputs:
        return None
    return nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False), nn.BatchNorm2d(outputs))


class _ResidualBlock(nn.Module):
    """Convolutions conv1, conv2, ... each followed by batch norm bn1, bn2, ... and ReLU between them, plus a
    residual connection (downsampled where the shape changes) before the last ReLU."""

    expansion = 1

    def _build(self, convolutions: list[nn.Conv2d], inputs: int, stride: int) -> None:
        for index, convolution in enumerate(convolutions, start=1):
            self.add_module(f"conv{index}", convolution)
            self.add_module(f"bn{index}", nn.BatchNorm2d(convolution.out_channels))
        self.depth = len(convolutions)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(inputs, convolutions[-1].out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for index in range(1, self.depth + 1):
            out = getattr(self, f"bn{index}")(getattr(self, f"conv{index}")(out))
            if index < self.depth:
                out = self.relu(out)
        return self.relu(out + identity)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34)."""

    def __init__(self, inputs: int, channels: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self._build(
            [_conv3x3(inputs, channels, stride, dilation), _conv3x3(channels, channels, 1, dilation)], inputs, stride
        )


class Bottleneck(_ResidualBlock):
    """1x1 reduce, 3x3 (strided or dilated), 1x1 expand by 4, with a residual connection (ResNet-50)."""

    expansion = 4

    def __init__(self, inputs: int, channels: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        convolutions = [
            nn.Conv2d(inputs, channels, 1, bias=False),
            _conv3x3(channels, channels, stride, dilation),
            nn.Conv2d(channels, channels * self.expansion, 1, bias=False),
        ]
        self._build(convolutions, inputs, stride)


class ResNetBackbone(nn.Module):
    """A ResNet without its classifier; `forward` returns the outputs of the kept stages.

    Args:
        backbone: "resnet18", "resnet34" or "resnet50".
        width: channels of stage 1 (64 standard).
        num_stages: how many of the four stages to build (1-4).
        dilate: replace the stride of stages 3 and 4 by dilation 2 and 4 (output stride 8).
    """

    def __init__(self, backbone: str, width: int = 64, num_stages: int = 4, dilate: bool = False) -> None:
        super().__init__()
        kind, depths = _BLOCKS[backbone]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.stage_channels: list[int] = []
        self.stage_strides: list[int] = []
        inputs, stride_so_far, dilation = width, 4, 1
        for index in range(num_stages):
            channels = width * 2**index
            stride = 1 if index == 0 else 2
            previous_dilation = dilation
            if dilate and index >= 2:
                dilation, stride = dilation * stride, 1
            blocks = [block(inputs, channels, stride, previous_dilation)]
            inputs = channels * block.expansion
            blocks += [block(inputs, channels, 1, dilation) for _ in range(depths[index] - 1)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            stride_so_far *= stride
            self.stage_channels.append(inputs)
            self.stage_strides.append(stride_so_far)
        self.num_stages = num_stages
        self._initialise()

    def _initialise(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised images -> one (B, C_i, H / s_i, W / s_i) feature map per stage."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        features = []
        for index in range(self.num_stages):
            x = getattr(self, f"layer{index + 1}")(x)
            features.append(x)
        return features


class DescriptorNet(nn.Module):
    """Dense descriptor network: (B, 3, H, W) RGB in [0, 1] -> (B, D, H, W) descriptors (see the module)."""

    def __init__(self, config: DescriptorNetConfig) -> None:
        super().__init__()
        self.config = config
        self._channels_last = False
        dilated = config.variant == "dilated"
        num_stages = 4 if dilated else {8: 2, 16: 3, 32: 4}[config.output_stride]
        self.backbone = ResNetBackbone(config.backbone, config.width, num_stages, dilate=dilated)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if dilated:
            channels = self.backbone.stage_channels[-1]
            inner = channels // 4
            self.head = nn.Sequential(
                _conv3x3(channels, inner),
                nn.BatchNorm2d(inner),
                nn.ReLU(inplace=True),
                nn.Dropout(0.1),
                nn.Conv2d(inner, config.descriptor_dim, 1),
            )
            self.scores = nn.ModuleList()
        else:
            self.head = None
            # stage 1 (stride 4) gets a score layer only with finest_stride 4 (FCN-4s); FCN-8s starts at stage 2
            self.first_scored_stage = 0 if config.finest_stride == 4 else 1
            self.scores = nn.ModuleList(
                nn.Conv2d(channels, config.descriptor_dim, 1)
                for channels in self.backbone.stage_channels[self.first_scored_stage :]
            )

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) float RGB in [0, 1] -> (B, D, H, W) descriptors."""
        height, width = rgb.shape[-2:]
        features = self.backbone((rgb - self.mean) / self.std)
        if self.head is not None:
            coarse = self.head(features[-1])
        else:
            maps = features[self.first_scored_stage :]
            coarse = self.scores[0](maps[0])
            for score, feature in zip(self.scores[1:], maps[1:], strict=True):
                coarse = coarse + functional.interpolate(
                    score(feature), size=coarse.shape[-2:], mode="bilinear", align_corners=False
                )
        return functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)

    @torch.no_grad()
    def infer(self, rgb: torch.Tensor, bf16: bool = False) -> torch.Tensor:
        """Descriptors for inference, optionally under bfloat16 autocast (channels-last), returned in float32.

        Args:
            rgb: (B, 3, H, W) float RGB in [0, 1].
            bf16: run the convolutions in bfloat16 (about 2-3x faster on CPUs with AVX-512 BF16 / AMX).
                Heatmaps computed from the descriptors should stay in float32.

        Returns:
            (B, D, H, W) float32 descriptors. The module's train/eval mode is left as it is: call `eval()`.
            With bf16 the module's weights are moved to channels-last memory once (values unchanged): bf16
            convolutions gain little without it.
        """
        if not bf16:
            return self(rgb).float()
        if not self._channels_last:
            self.to(memory_format=torch.channels_last)
            self._channels_last = True
        rgb = rgb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type=rgb.device.type, dtype=torch.bfloat16):
            return self(rgb).float().contiguous()


def rgb_to_tensor(rgb: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 images -> (..., 3, H, W) float32 in [0, 1], the network's input."""
    if rgb.dtype != torch.uint8:
        raise ValueError(
            f"rgb_to_tensor (keydyn/vision/network.py) takes uint8 0-255 RGB, got {rgb.dtype} (float RGB would "
            "read as a dark image); convert RGB in [0, 1] with (rgb * 255).round().to(torch.uint8)"
        )
    return rgb.movedim(-1, -3).float() / 255.0

"""Descriptor networks: every backbone and variant gives full-resolution descriptors; bf16 inference."""

from __future__ import annotations

import pytest
import torch

from keydyn.vision.heatmap import descriptor_logits, expectations_from_logits
from keydyn.vision.network import DescriptorNet, DescriptorNetConfig, ResNetBackbone, rgb_to_tensor

from .vision_fixtures import one_thread

VARIANTS = [("strided", 8, 8), ("strided", 16, 8), ("strided", 32, 8), ("strided", 16, 4), ("dilated", 8, 8)]


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet50"])
@pytest.mark.parametrize(("variant", "output_stride", "finest_stride"), VARIANTS)
def test_descriptor_images_have_the_input_resolution(backbone, variant, output_stride, finest_stride):
    config = DescriptorNetConfig(backbone, 5, variant, output_stride, finest_stride, width=8)
    net = DescriptorNet(config).eval()
    with one_thread(), torch.no_grad():
        for height, width in [(48, 64), (32, 32), (37, 50)]:
            images = torch.rand(2, 3, height, width, generator=torch.Generator().manual_seed(0))
            out = net(images)
            assert out.shape == (2, 5, height, width)
            assert torch.isfinite(out).all() and out.std() > 0
            features = net.backbone((images - net.mean) / net.std)
            stride = 8 if variant == "dilated" else output_stride
            assert features[-1].shape[-2:] == (-(-height // stride), -(-width // stride))


def test_backbones_are_the_standard_resnets():
    # torchvision's parameter counts without the 1000-class fc layer (11,689,512 - 513,000 for ResNet-18 etc.)
    expected = {"resnet18": 11_176_512, "resnet34": 21_284_672, "resnet50": 23_508_032}
    for name, count in expected.items():
        backbone = ResNetBackbone(name)
        assert sum(p.numel() for p in backbone.parameters()) == count
        assert backbone.stage_strides == [4, 8, 16, 32]
    assert ResNetBackbone("resnet50", dilate=True).stage_strides == [4, 8, 8, 8]
    keys = ResNetBackbone("resnet18").state_dict().keys()
    for key in ["conv1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer2.0.downsample.0.weight"]:
        assert key in keys  # torchvision's names, so converted ImageNet weights load directly


def test_dilated_variant_is_the_original_fcn_head():
    net = DescriptorNet(DescriptorNetConfig())  # the default: the original's dilated ResNet-50, D = 3
    assert net.config.descriptor_dim == 3 and net.config.backbone == "resnet50"
    assert net.head[0].in_channels == 2048 and net.head[0].out_channels == 512 and net.head[-1].out_channels == 3
    assert net.backbone.layer4[1].conv2.dilation == (4, 4) and net.backbone.layer3[0].conv2.stride == (1, 1)


def test_config_is_validated():
    # Runs of older versions saved `pretrained` (always false): it is dropped when read; true is refused.
    old = {"backbone": "resnet18", "pretrained": False}
    assert DescriptorNetConfig.from_json(old) == DescriptorNetConfig("resnet18")
    with pytest.raises(ValueError, match="pretrained=True"):
        DescriptorNetConfig.from_json({"pretrained": True})
    with pytest.raises(ValueError, match="dilated variant"):
        DescriptorNetConfig(variant="dilated", output_stride=32)
    with pytest.raises(ValueError, match="backbone"):
        DescriptorNetConfig(backbone="resnet101")
    with pytest.raises(ValueError, match="finest_stride 4 applies to 'strided'"):
        DescriptorNetConfig(variant="dilated", finest_stride=4)


def test_finest_stride_4_adds_stage_1_detail_within_the_8_pixel_cells():
    """With FCN-8s skips the descriptor image is bilinear between the stride-8 scores, so within each 8x8 cell
    its second difference along a row vanishes; the stage-1 score layer of finest_stride 4 breaks that."""
    images = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))

    def curvature_inside_cells(finest_stride: int) -> float:
        torch.manual_seed(0)
        net = DescriptorNet(DescriptorNetConfig("resnet18", 3, "strided", 8, finest_stride, width=8)).eval()
        with one_thread(), torch.no_grad():
            out = net(images)
        second = out[..., 2:] - 2 * out[..., 1:-1] + out[..., :-2]  # (1, 3, H, W - 2), centred on columns 1..W-2
        columns = torch.arange(1, images.shape[-1] - 1)
        inside = (columns % 8 != 3) & (columns % 8 != 4)  # stride-8 sample centres fall between columns 3 and 4
        return float(second[..., inside].abs().max() / out.abs().max())

    net = DescriptorNet(DescriptorNetConfig("resnet18", 3, "strided", 8, 4, width=8))
    assert [score.in_channels for score in net.scores] == net.backbone.stage_channels  # stages 1 and 2 scored
    assert curvature_inside_cells(8) < 1e-5
    assert curvature_inside_cells(4) > 1e-3


def test_bf16_inference_is_close_to_fp32():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the weights, whatever ran before
        net = DescriptorNet(DescriptorNetConfig("resnet18", 16, "strided", 8, width=16)).eval()
    rgb = torch.randint(0, 256, (2, 72, 96, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images = rgb_to_tensor(rgb)
    assert images.shape == (2, 3, 72, 96) and images.max() <= 1.0
    with one_thread():
        reference = net.infer(images)
        fast = net.infer(images, bf16=True)
        again = net.infer(images)
    assert fast.dtype == torch.float32 and fast.shape == reference.shape
    torch.testing.assert_close(again, reference, atol=1e-5, rtol=1e-5)  # channels-last leaves fp32 unchanged
    relative = (fast - reference).norm() / reference.norm()
    assert 0 < relative < 0.03  # bf16 really ran, and stayed close
    # keypoints located in the bf16 descriptors stay where the fp32 ones are (eta: sharp, self-localising heatmaps)
    generator = torch.Generator().manual_seed(1)
    uv = torch.stack(
        [torch.randint(5, 91, (30,), generator=generator), torch.randint(5, 67, (30,), generator=generator)], -1
    )
    references = reference[0][:, uv[:, 1], uv[:, 0]].T
    depth = torch.ones(1, *reference.shape[-2:])
    located = expectations_from_logits(descriptor_logits(reference[:1], references, eta=0.2), depth)[0][0]
    located_fast = expectations_from_logits(descriptor_logits(fast[:1], references, eta=0.2), depth)[0][0]
    assert (located - uv).norm(dim=-1).median() < 0.05
    assert (located_fast - located).norm(dim=-1).max() < 0.25

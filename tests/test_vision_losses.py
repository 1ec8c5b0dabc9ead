"""The paper's descriptor losses: exact on synthetic descriptors, and falling when training on rendered pairs."""

from __future__ import annotations

import math

import pytest
import torch

from keydyn.data.store import EpisodeStore
from keydyn.vision.correspondence import MatchBatch, find_correspondences, stack_correspondences
from keydyn.vision.geometry import pixel_grid
from keydyn.vision.losses import DescriptorLossConfig, descriptor_losses, target_heatmap
from keydyn.vision.network import DescriptorNet, DescriptorNetConfig, rgb_to_tensor
from keydyn.vision.views import load_view

from .vision_fixtures import one_thread

HEIGHT, WIDTH = 48, 64


def test_target_heatmap_kernels():
    uv = torch.tensor([[10.0, 20.0], [30.5, 7.25]])
    squared = target_heatmap(uv, HEIGHT, WIDTH, sigma=2.0)
    euclidean = target_heatmap(uv, HEIGHT, WIDTH, sigma=2.0, distance="euclidean")
    assert squared.shape == (2, HEIGHT, WIDTH)
    assert squared[0, 20, 10] == 1.0 and squared[0].argmax() == 20 * WIDTH + 10
    # 3 px from the first centre
    assert squared[0, 20, 13].item() == pytest.approx(math.exp(-9 / 4))
    assert euclidean[0, 20, 13].item() == pytest.approx(math.exp(-3 / 4))
    assert squared[1, 7, 30].item() == pytest.approx(math.exp(-(0.25 + 0.0625) / 4))
    assert DescriptorLossConfig().sigma(480, 640) == pytest.approx(5.0)  # the original's 5 px at 640x480


def _shifted_pair(shift: torch.Tensor, scale: float):
    """Descriptor images of a scene seen by A and, shifted by `shift` pixels, by B: I_B(p) = I_A(p - shift)."""
    grid = pixel_grid(HEIGHT, WIDTH)
    a = torch.cat([scale * grid, torch.zeros(HEIGHT, WIDTH, 1)], -1).permute(2, 0, 1)
    b = torch.cat([scale * (grid - shift), torch.zeros(HEIGHT, WIDTH, 1)], -1).permute(2, 0, 1)
    return a[None], b[None]


def _matches(uv_a: torch.Tensor, shift: torch.Tensor, depth: float, pad: int = 0) -> MatchBatch:
    n = len(uv_a)
    valid = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(pad, dtype=torch.bool)])
    junk = torch.full((pad, 2), 3.0)  # padding, to be ignored
    return MatchBatch(
        uv_a=torch.cat([uv_a, junk])[None],
        uv_b=torch.cat([uv_a + shift, junk])[None],
        depth_b=torch.cat([torch.full((n,), depth), torch.full((pad,), 9.0)])[None],
        valid=valid[None],
    )


def test_losses_vanish_for_perfect_descriptors_and_grow_for_wrong_matches():
    config = DescriptorLossConfig(sigma_fraction=1.5 / math.hypot(HEIGHT, WIDTH))  # sigma = 1.5 px
    shift = torch.tensor([3.25, -2.5])
    # with descriptor scale eta / sigma the predicted heatmap equals the target kernel exactly (eq. 6, 7)
    descriptors_a, descriptors_b = _shifted_pair(shift, config.eta / 1.5)
    uv_a = torch.tensor([[20.0, 20.0], [35.0, 30.0], [40.0, 12.0]])
    depth_b = torch.full((1, HEIGHT, WIDTH), 0.8)
    losses = descriptor_losses(descriptors_a, descriptors_b, depth_b, _matches(uv_a, shift, 0.8, pad=4), config)
    assert losses.heatmap < 1e-10 and losses.pixel < 1e-5 and losses.depth < 1e-6
    assert losses.pixel_error < 1e-3 and losses.total == losses.heatmap + losses.pixel + losses.depth

    wrong = _matches(uv_a, shift + torch.tensor([2.0, 0.0]), 0.9)  # targets 2 px and 10 cm off
    off = descriptor_losses(descriptors_a, descriptors_b, depth_b, wrong, config)
    assert off.heatmap > 1e-3
    assert off.pixel_error.item() == pytest.approx(2.0, abs=1e-3)
    assert off.pixel.item() == pytest.approx(2.0 / math.hypot(HEIGHT, WIDTH), rel=1e-3)  # original: / diagonal
    assert off.depth.item() == pytest.approx(0.1, abs=1e-5)
    raw = descriptor_losses(
        descriptors_a, descriptors_b, depth_b, wrong, DescriptorLossConfig(pixel_normalization="none")
    )
    assert raw.pixel.item() == pytest.approx(2.0, rel=1e-3)  # the paper's eq. 12, in pixels
    # the original's non-squared target kernel is a different (wider) target for the same descriptors
    euclidean = DescriptorLossConfig(sigma_fraction=config.sigma_fraction, target_distance="euclidean")
    assert (
        descriptor_losses(descriptors_a, descriptors_b, depth_b, _matches(uv_a, shift, 0.8), euclidean).heatmap > 1e-3
    )
    weighted = DescriptorLossConfig(sigma_fraction=config.sigma_fraction, heatmap_weight=2.0, spatial_weight=0.5)
    again = descriptor_losses(descriptors_a, descriptors_b, depth_b, wrong, weighted)
    torch.testing.assert_close(again.total, 2.0 * off.heatmap + 0.5 * (off.pixel + off.depth))


def _rendered_batch(store: EpisodeStore, frames: tuple[int, ...], generator: torch.Generator):
    pairs = [(load_view(store, "top_down", f), load_view(store, "top_down_rotated", f)) for f in frames]
    matches = stack_correspondences([find_correspondences(a, b, 80, generator) for a, b in pairs], 50)
    rgb_a = torch.stack([rgb_to_tensor(a.rgb) for a, _ in pairs])
    rgb_b = torch.stack([rgb_to_tensor(b.rgb) for _, b in pairs])
    return rgb_a, rgb_b, torch.stack([b.depth for _, b in pairs]), matches


@pytest.mark.parametrize("variant", ["strided", "dilated"])
def test_losses_fall_when_training_on_rendered_pairs(small_dataset, variant):
    store = EpisodeStore.open(small_dataset)
    generator = torch.Generator().manual_seed(0)
    rgb_a, rgb_b, depth_b, matches = _rendered_batch(store, (5, 20), generator)
    assert matches.valid.sum() >= 80
    torch.manual_seed(0)
    net = DescriptorNet(DescriptorNetConfig("resnet18", 3, variant, 8, width=8))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    history = []
    with one_thread():
        for _ in range(30):
            descriptors = net(torch.cat([rgb_a, rgb_b]))
            losses = descriptor_losses(descriptors[:2], descriptors[2:], depth_b, matches)
            optimiser.zero_grad()
            losses.total.backward()
            optimiser.step()
            history.append([v.item() for v in (losses.total, losses.heatmap, losses.pixel, losses.depth)])
    first, last = torch.tensor(history[0]), torch.tensor(history[-3:]).mean(0)
    assert last[0] < 0.35 * first[0]  # total
    assert (last[1:] < 0.6 * first[1:]).all()  # heatmap, pixel and depth terms each fall

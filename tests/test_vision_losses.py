"""The paper's descriptor losses: exact on synthetic descriptors, and falling when training on rendered pairs."""

from __future__ import annotations

import math

import pytest
import torch

from keydyn.data.collect import collect
from keydyn.data.store import EpisodeStore
from keydyn.vision.correspondence import MatchBatch, find_correspondences, stack_correspondences
from keydyn.vision.geometry import pixel_grid
from keydyn.vision.losses import DescriptorLossConfig, descriptor_losses, target_heatmap
from keydyn.vision.network import DescriptorNet, DescriptorNetConfig, rgb_to_tensor
from keydyn.vision.views import load_view

from .conftest import small_collect_config
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


def _matches(
    uv_a: torch.Tensor, shift: torch.Tensor, depth: float, pad: int = 0, hidden_uv_a: torch.Tensor | None = None
) -> MatchBatch:
    n = len(uv_a)
    valid = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(pad, dtype=torch.bool)])
    junk = torch.full((pad, 2), 3.0)  # padding, to be ignored
    hidden_uv_a = torch.zeros((0, 2)) if hidden_uv_a is None else hidden_uv_a
    hidden_valid = torch.cat([torch.ones(len(hidden_uv_a), dtype=torch.bool), torch.zeros(pad, dtype=torch.bool)])
    return MatchBatch(
        uv_a=torch.cat([uv_a, junk])[None],
        uv_b=torch.cat([uv_a + shift, junk])[None],
        depth_b=torch.cat([torch.full((n,), depth), torch.full((pad,), 9.0)])[None],
        valid=valid[None],
        hidden_uv_a=torch.cat([hidden_uv_a, junk])[None],
        hidden_valid=hidden_valid[None],
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


def test_a_b_image_without_valid_depth_leaves_the_gradients_finite():
    """Its depth term is left out (no valid depth under any heatmap); its 0 / 0 must not make the gradients NaN,
    which Adam would write into the weights."""
    shift = torch.tensor([3.25, -2.5])
    descriptors_a, descriptors_b = (d.requires_grad_() for d in _shifted_pair(shift, 2.0))
    matches = _matches(torch.tensor([[20.0, 20.0], [35.0, 30.0]]), shift, 0.8, pad=2)
    losses = descriptor_losses(descriptors_a, descriptors_b, torch.zeros(1, HEIGHT, WIDTH), matches)
    losses.total.backward()
    assert torch.isfinite(losses.total) and losses.depth == 0
    assert torch.isfinite(descriptors_a.grad).all() and torch.isfinite(descriptors_b.grad).all()


def test_hidden_loss_is_the_best_match_b_offers_and_pushes_only_that_pixel_away():
    config = DescriptorLossConfig(hidden_weight=0.5)
    shift = torch.tensor([3.0, -2.0])
    descriptors_a, descriptors_b = _shifted_pair(shift, 1.0)
    descriptors_b = descriptors_b.clone().requires_grad_(True)
    uv_a = torch.tensor([[20.0, 20.0], [35.0, 30.0]])
    depth_b = torch.full((1, HEIGHT, WIDTH), 0.8)
    # B shows nearly the descriptor of A's (30.25, 20) at its pixel (33, 18): 0.25 away; A's pixel (1, 1) gets
    # a descriptor B has nowhere (37 = 7.4 eta from B's closest)
    shown, absent = torch.tensor([[30.25, 20.0]]), torch.tensor([[1.0, 1.0]])
    descriptors_a[0, :2, 1, 1] = torch.tensor([-40.0, 10.0])
    seen = descriptor_losses(descriptors_a, descriptors_b, depth_b, _matches(uv_a, shift, 0.8, 2, shown), config)
    assert seen.hidden.item() == pytest.approx(math.exp(-(0.25**2) / config.eta**2), rel=1e-5)
    unseen = descriptor_losses(descriptors_a, descriptors_b, depth_b, _matches(uv_a, shift, 0.8, 2, absent), config)
    assert unseen.hidden.item() == pytest.approx(math.exp(-(37.0**2) / config.eta**2), rel=1e-3)
    torch.testing.assert_close(seen.total, seen.heatmap + seen.pixel + seen.depth + 0.5 * seen.hidden)
    # without the weight the loss is left out
    plain = descriptor_losses(descriptors_a, descriptors_b, depth_b, _matches(uv_a, shift, 0.8, 2, shown))
    assert plain.hidden.item() == 0.0

    # its gradient reaches B only at the closest pixel, and descending it moves that descriptor away from A's
    (gradient,) = torch.autograd.grad(seen.hidden, descriptors_b)
    assert torch.nonzero(gradient[0].abs().sum(0) > 0).tolist() == [[18, 33]]
    expected = 2 * 0.25 / config.eta**2 * seen.hidden.item()  # d/dx exp(-(x - r)^2 / eta^2) at x - r = -0.25
    torch.testing.assert_close(gradient[0, :, 18, 33], torch.tensor([expected, 0.0, 0.0]))


def _rendered_batch(store: EpisodeStore, frames: tuple[int, ...], generator: torch.Generator):
    pairs = [(load_view(store, "top_down", f), load_view(store, "top_down_rotated", f)) for f in frames]
    matches = stack_correspondences([find_correspondences(a, b, 80, generator) for a, b in pairs], 50, 25)
    rgb_a = torch.stack([rgb_to_tensor(a.rgb) for a, _ in pairs])
    rgb_b = torch.stack([rgb_to_tensor(b.rgb) for _, b in pairs])
    return rgb_a, rgb_b, torch.stack([b.depth for _, b in pairs]), matches


@pytest.mark.parametrize(("variant", "finest_stride"), [("strided", 8), ("strided", 4), ("dilated", 8)])
def test_losses_fall_when_training_on_rendered_pairs(small_dataset, variant, finest_stride):
    store = EpisodeStore.open(small_dataset)
    generator = torch.Generator().manual_seed(0)
    rgb_a, rgb_b, depth_b, matches = _rendered_batch(store, (5, 20), generator)
    assert matches.valid.sum() >= 80
    torch.manual_seed(0)
    net = DescriptorNet(DescriptorNetConfig("resnet18", 3, variant, 8, finest_stride, width=8))
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


def test_training_with_the_hidden_loss_separates_hidden_points_from_what_b_shows(tmp_path):
    collect(small_collect_config(tmp_path / "occlusions", task="occlusions", episodes=1))
    store = EpisodeStore.open(tmp_path / "occlusions")
    generator = torch.Generator().manual_seed(0)
    views = [(load_view(store, "angled", f), load_view(store, "angled_side", f)) for f in (1, 3)]
    matches = stack_correspondences([find_correspondences(a, b, 200, generator) for a, b in views], 50, 25)
    assert matches.hidden_valid.sum() >= 20 and matches.valid.sum() >= 20  # the cameras see different sides
    rgb = torch.stack([rgb_to_tensor(a.rgb) for a, _ in views] + [rgb_to_tensor(b.rgb) for _, b in views])
    depth_b = torch.stack([b.depth for _, b in views])
    torch.manual_seed(0)
    net = DescriptorNet(DescriptorNetConfig("resnet18", 3, "strided", 8, width=8))
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-3)
    config = DescriptorLossConfig(hidden_weight=1.0)
    history = []
    with one_thread():
        for _ in range(30):
            descriptors = net(rgb)
            losses = descriptor_losses(descriptors[:2], descriptors[2:], depth_b, matches, config)
            optimiser.zero_grad()
            losses.total.backward()
            optimiser.step()
            history.append([losses.total.item(), losses.hidden.item(), losses.pixel.item()])
    first, last = torch.tensor(history[0]), torch.tensor(history[-3:]).mean(0)
    assert first[1] > 0.5 and last[1] < 0.3 * first[1]  # B first offers close matches to hidden points; then not
    assert last[2] < 0.6 * first[2]  # while the matches are still learnt

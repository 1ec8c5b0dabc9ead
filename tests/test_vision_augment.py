"""Colour jitter and background randomisation: seeded, bounded, and leaving the object's pixels alone."""

from __future__ import annotations

import torch

from keydyn.vision.augment import AugmentConfig, jitter_colour, randomise_background


def _images(seed: int = 0) -> torch.Tensor:
    return torch.rand(6, 3, 24, 32, generator=torch.Generator().manual_seed(seed))


def test_colour_jitter_is_seeded_bounded_and_random_per_image():
    images = _images()
    first = jitter_colour(images, torch.Generator().manual_seed(1))
    again = jitter_colour(images, torch.Generator().manual_seed(1))
    other = jitter_colour(images, torch.Generator().manual_seed(2))
    torch.testing.assert_close(first, again)
    assert not torch.equal(first, other)
    assert first.min() >= 0 and first.max() <= 1 and first.shape == images.shape
    always = AugmentConfig(probability=1.0)
    changed = jitter_colour(images, torch.Generator().manual_seed(1), always)
    assert ((changed - images).abs().flatten(1).amax(1) > 1e-3).all()
    never = AugmentConfig(probability=0.0)
    torch.testing.assert_close(jitter_colour(images, torch.Generator(), never), images)


def test_hue_rotation_keeps_grey_and_brightness_of_grey_pixels():
    grey = torch.full((2, 3, 4, 4), 0.4)
    only_hue = AugmentConfig(probability=1.0, brightness=(1.0, 1.0), contrast=(1.0, 1.0), saturation=(1.0, 1.0))
    torch.testing.assert_close(jitter_colour(grey, torch.Generator().manual_seed(0), only_hue), grey)
    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 0.8
    turned = jitter_colour(red, torch.Generator().manual_seed(0), AugmentConfig(probability=1.0, hue_degrees=90.0))
    assert not torch.allclose(turned, red, atol=1e-2)


def test_background_randomisation_changes_only_the_background():
    images = _images()
    mask = torch.zeros(6, 24, 32, dtype=torch.bool)
    mask[:, 8:16, 10:20] = True
    config = AugmentConfig(background_probability=1.0)
    out = randomise_background(images, mask, torch.Generator().manual_seed(0), config)
    inside = mask[:, None].expand_as(images)
    torch.testing.assert_close(out[inside], images[inside])
    assert ((out - images).abs().amax(dim=1)[~mask] > 0).float().mean() > 0.99
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(out, randomise_background(images, mask, torch.Generator().manual_seed(0), config))
    none = randomise_background(images, mask, torch.Generator(), AugmentConfig(background_probability=0.0))
    torch.testing.assert_close(none, images)

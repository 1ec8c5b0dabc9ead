"""Procedural, deterministic textures: a printed-package look for the box and patterns for the mugs.

Every image is a pure function of its arguments (a seed included), so a task renders identically on every
machine and nothing is downloaded.
"""

from __future__ import annotations

import numpy as np

_PALETTE = np.array(
    [
        [230, 57, 70],
        [241, 250, 238],
        [29, 53, 87],
        [244, 162, 97],
        [42, 157, 143],
        [233, 196, 106],
        [38, 70, 83],
        [255, 255, 255],
        [20, 20, 20],
        [131, 56, 236],
        [255, 190, 11],
        [58, 134, 255],
    ],
    dtype=np.uint8,
)


def _draw_rect(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, colour: np.ndarray) -> None:
    img[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = colour


def _draw_disc(img: np.ndarray, cx: float, cy: float, radius: float, colour: np.ndarray) -> None:
    h, w = img.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2] = colour


def _draw_text_lines(img: np.ndarray, rng: np.random.Generator, box: tuple[int, int, int, int]) -> None:
    """Rows of random 'words' (dark bars of varied length), like small print on a package."""
    x0, y0, x1, y1 = box
    line_h = max(2, int(rng.integers(3, 7)))
    colour = _PALETTE[int(rng.choice([2, 6, 8]))]
    y = y0
    while y + line_h <= y1:
        x = x0
        while x < x1:
            word = int(rng.integers(line_h, line_h * 5))
            _draw_rect(img, x, y, min(x + word, x1), y + line_h - 1, colour)
            x += word + line_h
        y += 2 * line_h


def package_face(width: int, height: int, seed: int) -> np.ndarray:
    """One face of a printed package: colour bands, a logo of discs, a label block and small print.

    Args:
        width, height: face size in pixels.
        seed: selects the design; different seeds give visibly different faces.

    Returns:
        (height, width, 3) uint8 image.
    """
    rng = np.random.default_rng(seed)
    base = _PALETTE[int(rng.integers(len(_PALETTE)))]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = base
    # A diagonal gradient so that no two places on a face look alike.
    yy, xx = np.mgrid[:height, :width]
    shade = (0.75 + 0.25 * (xx / max(width - 1, 1) + yy / max(height - 1, 1)) / 2)[..., None]
    img[:] = (img * shade).astype(np.uint8)
    for _ in range(int(rng.integers(2, 4))):  # bands
        horizontal = bool(rng.integers(2))
        span = height if horizontal else width
        start = int(rng.integers(0, span))
        thick = int(rng.integers(max(2, span // 20), max(3, span // 6)))
        colour = _PALETTE[int(rng.integers(len(_PALETTE)))]
        if horizontal:
            _draw_rect(img, 0, start, width, start + thick, colour)
        else:
            _draw_rect(img, start, 0, start + thick, height, colour)
    for _ in range(int(rng.integers(2, 5))):  # logo discs
        radius = rng.uniform(0.06, 0.22) * min(width, height)
        _draw_disc(img, rng.uniform(0, width), rng.uniform(0, height), radius, _PALETTE[rng.integers(12)])
    lx0, ly0 = int(rng.uniform(0.05, 0.4) * width), int(rng.uniform(0.05, 0.5) * height)
    lx1 = min(width - 2, lx0 + int(rng.uniform(0.35, 0.55) * width))
    ly1 = min(height - 2, ly0 + int(rng.uniform(0.2, 0.4) * height))
    _draw_rect(img, lx0, ly0, lx1, ly1, _PALETTE[7])
    _draw_text_lines(img, rng, (lx0 + 2, ly0 + 2, lx1 - 2, ly1 - 2))
    return img


def mug_pattern(width: int, height: int, seed: int) -> np.ndarray:
    """A light, mostly-white mug decoration (stripes, dots or a band) that multiplies with the mug colour.

    Returns:
        (height, width, 3) uint8 image, wrapped around the mug by cylindrical texture coordinates.
    """
    rng = np.random.default_rng(seed)
    img = np.full((height, width, 3), 255, dtype=np.uint8)
    style = int(rng.integers(3))
    accent = _PALETTE[int(rng.integers(len(_PALETTE)))]
    if style == 0:  # vertical stripes
        period = int(rng.integers(width // 16, width // 6))
        for x in range(0, width, period):
            _draw_rect(img, x, 0, x + period // 3, height, accent)
    elif style == 1:  # dots
        for _ in range(int(rng.integers(20, 60))):
            _draw_disc(img, rng.uniform(0, width), rng.uniform(0, height), rng.uniform(3, 10), accent)
    else:  # bands and a label
        for _ in range(int(rng.integers(1, 4))):
            y = int(rng.integers(0, height))
            _draw_rect(img, 0, y, width, y + int(rng.integers(4, 16)), accent)
        x = int(rng.integers(0, width // 2))
        _draw_rect(img, x, height // 3, x + width // 4, 2 * height // 3, _PALETTE[8])
    return img

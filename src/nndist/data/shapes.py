"""``shapes``: a built-in, seeded, learnable 10-class set of 32x32 coloured shapes (no download)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .images import ImageData, resize_batch

__all__ = ["SHAPES_CLASSES", "SHAPES_SIZES", "generate_shapes", "load_shapes"]


SHAPES_CLASSES = (
    "circle", "square", "triangle", "cross", "ring",
    "horizontal_bar", "vertical_bar", "diamond", "plus", "ellipse",
)
SHAPES_SIZES = {"train": 5000, "test": 1000}
_SHAPES_SPLIT_SEED = {"train": 0, "test": 1_000_003}


def _shape_mask(c: int, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask of class ``c`` at pixel offsets ``dx, dy`` from the centre, radius ``r`` (broadcast)."""
    ax, ay = np.abs(dx), np.abs(dy)
    w = 0.3 * r  # stroke half-width
    if c == 0:  # circle
        return dx * dx + dy * dy <= r * r
    if c == 1:  # square
        return np.maximum(ax, ay) <= 0.8 * r
    if c == 2:  # triangle, apex up
        return (dy <= 0.8 * r) & (ax <= 0.55 * (dy + r))
    if c == 3:  # cross (X)
        return (np.maximum(ax, ay) <= r) & ((np.abs(dx - dy) <= 1.2 * w) | (np.abs(dx + dy) <= 1.2 * w))
    if c == 4:  # ring
        d2 = dx * dx + dy * dy
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if c == 5:  # horizontal bar
        return (ay <= w) & (ax <= r)
    if c == 6:  # vertical bar
        return (ax <= w) & (ay <= r)
    if c == 7:  # diamond
        return ax + ay <= r
    if c == 8:  # plus
        return (np.maximum(ax, ay) <= r) & ((ax <= w) | (ay <= w))
    if c == 9:  # ellipse, wider than tall
        return (dx / r) ** 2 + (dy / (0.55 * r)) ** 2 <= 1
    raise ValueError(c)


def generate_shapes(
    n: int,
    *,
    seed: int = 0,
    image_size: int = 32,
    noise: float = 0.06,
    split: str = "train",
) -> ImageData:
    """A learnable 10-class set of coloured shapes on noisy backgrounds (vectorised, seeded).

    Each image shows one shape of :data:`SHAPES_CLASSES` with a random centre (jittered by up
    to 15% of the side), size and bright colour on a random dark background with Gaussian pixel
    noise, so the class is in the shape, never in the colour. Labels cycle
    through the classes before shuffling, so classes are balanced (±1).

    Args:
        n: Number of images.
        seed: Seed; the same seed gives the same images.
        image_size: Side length S of the S x S images.
        noise: Std of the pixel noise (on the [0, 1] scale).
        split: Only recorded in the result.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n) % len(SHAPES_CLASSES))
    s = float(image_size)
    r = (rng.uniform(0.28, 0.42, n) * s).astype(np.float32)  # radius
    cx = (s / 2 + rng.uniform(-0.15, 0.15, n) * s).astype(np.float32)  # centre jitter
    cy = (s / 2 + rng.uniform(-0.15, 0.15, n) * s).astype(np.float32)
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    mask = np.zeros((n, image_size, image_size), dtype=bool)
    for c in range(len(SHAPES_CLASSES)):
        sel = np.flatnonzero(labels == c)
        dx = grid[None, None, :] - cx[sel, None, None]  # (n_c, 1, S)
        dy = grid[None, :, None] - cy[sel, None, None]  # (n_c, S, 1)
        mask[sel] = _shape_mask(c, dx, dy, r[sel, None, None])
    # Dark background, bright shape, random hues: the class is in the shape, not the colour.
    bg = rng.uniform(0.0, 0.4, (n, 3)).astype(np.float32)
    fg = rng.uniform(0.6, 1.0, (n, 3)).astype(np.float32)
    img = np.where(mask[:, None], fg[:, :, None, None], bg[:, :, None, None])  # (N, 3, S, S)
    img += rng.normal(0.0, noise, img.shape).astype(np.float32)
    images = torch.from_numpy(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8))
    return ImageData(
        images=images,
        labels=torch.from_numpy(labels.astype(np.int64)),
        classes=list(SHAPES_CLASSES),
        source="shapes",
        split=split,
    )


def load_shapes(
    split: str,
    *,
    cache_dir: Any = None,
    image_size: int | None = None,
    resize: str = "cifar",
    skip_bad_images: bool = False,
    progress: bool = True,
    n: int | None = None,
    seed: int = 0,
) -> ImageData:
    """``shapes`` source: 5000 train / 1000 test images by default; train and test never share a draw."""
    count = SHAPES_SIZES[split] if n is None else int(n)
    data = generate_shapes(count, seed=seed * 2 + _SHAPES_SPLIT_SEED[split], split=split)
    if image_size is not None or resize == "imagenet":
        data.images = resize_batch(data.images, image_size, resize)
    return data

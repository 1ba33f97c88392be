"""Which samples a study uses: class-stratified subsets, random inputs and the sample-count rule."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from ..errors import NndistError

__all__ = ["parse_samples", "random_inputs", "resolve_samples", "stratified_subset"]


def parse_samples(value: str | int, option: str = "--samples") -> int | str:
    """Parses a sample count option: an integer or ``all`` (the range is checked by :func:`resolve_samples`).

    Raises:
        NndistError: naming ``option`` and what it takes.
    """
    if value == "all":
        return "all"
    try:
        return int(value)
    except (TypeError, ValueError):
        raise NndistError(f"{option} {value!r}: must be a positive integer or 'all'") from None


def resolve_samples(value: int | str, available: int, *, option: str, what: str, from_default: bool = False) -> int:
    """The number of samples a study takes: ``value`` checked against the ``available`` ones.

    Args:
        value: a count or ``all``.
        available: samples in the split.
        option: the option that set it (named in the error).
        what: the split, for the error (``"the test split of cifar10"``).
        from_default: the value is a profile's default, not the user's: larger than the data
            means all of it, not an error.

    Raises:
        NndistError: ``value`` is below 1 or larger than the split (and was given by the user).
    """
    if value == "all":
        return available
    if value < 1 or (value > available and not from_default):
        raise NndistError(f"{option} {value}: {what} has {available} images; pass a number from 1 to {available}, or 'all'")
    return min(int(value), available)


def stratified_subset(labels: Any, n: int | str, seed: int = 0) -> np.ndarray:
    """A deterministic, class-stratified subset of indices.

    Each class gets a share proportional to its frequency (largest remainders round, so a
    balanced set gets equal counts +-1), drawn at random within the class.

    Args:
        labels: Labels ``(N,)`` (tensor, array or list).
        n: Subset size, or ``"all"`` for every index.
        seed: Seed of the draw.

    Returns:
        Sorted int64 indices ``(n,)``.

    Raises:
        NndistError: If ``n`` exceeds the number of labels or is negative.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels).astype(np.int64).ravel()
    total = len(y)
    if isinstance(n, str):
        if n != "all":
            raise NndistError(f"subset size must be a number or 'all', got {n!r}")
        return np.arange(total, dtype=np.int64)
    n = int(n)
    if n < 0 or n > total:
        raise NndistError(f"cannot take {n} samples from a data set of {total}; use at most {total} (or 'all')")
    classes, counts = np.unique(y, return_counts=True)
    exact = n * counts / total
    quota = np.floor(exact).astype(np.int64)
    rest = n - int(quota.sum())
    if rest:
        # Largest fractional parts first; ties broken by class order (stable sort).
        order = np.argsort(-(exact - quota), kind="stable")
        quota[order[:rest]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(y == c), size=int(q), replace=False) for c, q in zip(classes, quota)]
    out = np.concatenate(chosen) if chosen else np.empty(0, dtype=np.int64)
    return np.sort(out).astype(np.int64)


def random_inputs(n: int, shape: Sequence[int], seed: int = 0) -> torch.Tensor:
    """``n`` i.i.d. N(0, 1) inputs of ``shape`` (the paper's "random" input type), float32, seeded."""
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randn((int(n), *map(int, shape)), generator=gen, dtype=torch.float32)

"""Stored histograms made readable: a shared linear grid for several series, and their densities.

Run directories keep histograms on the summaries' fixed log-spaced bucket edges (exact and
mergeable, but thousands of narrow buckets near zero). A figure or the explorer shows several
of them overlaid (before and after, A and B) on one linear grid: :func:`display_grid` picks it
from the pooled mass, :func:`~nndist.report.figures.rebin` moves each bucket's mass to the grid
bin holding its centre.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .figures import rebin

__all__ = ["TAIL", "bins_for", "display_grid", "padded_grid", "series_densities"]

#: Mass left out of the grid's range on each side (it is counted in the end bins).
TAIL = 0.002


def bins_for(n: float, most: int = 80) -> int:
    """Grid bins for a sample of ``n`` values: ~2 sqrt(n), between 8 and ``most``."""
    return int(np.clip(2 * np.sqrt(max(float(n), 1.0)), 8, most))


def _pooled_quantiles(hists: Sequence[pd.DataFrame], qs: Sequence[float]) -> np.ndarray | None:
    """Quantiles of the pooled, equally weighted series (each histogram normalised to mass 1)."""
    parts = []
    for h in hists:
        total = float(h["count"].sum()) if len(h) else 0.0
        if total > 0:
            parts.append((h["left"].to_numpy(np.float64), h["right"].to_numpy(np.float64),
                          h["count"].to_numpy(np.float64) / total))
    if not parts:
        return None
    left = np.concatenate([p[0] for p in parts])
    right = np.concatenate([p[1] for p in parts])
    mass = np.concatenate([p[2] for p in parts]) / len(parts)
    order = np.argsort(0.5 * (left + right), kind="stable")
    left, right, cum = left[order], right[order], np.cumsum(mass[order])
    out = []
    for q in qs:
        i = min(int(np.searchsorted(cum, q, side="left")), len(cum) - 1)
        out.append(left[i] if q < 0.5 else right[i])
    return np.asarray(out)


def display_grid(hists: Sequence[pd.DataFrame], *, bins: int = 80) -> np.ndarray:
    """Edges of a linear grid that shows every series: the pooled mass between :data:`TAIL` and
    ``1 - TAIL``, padded by a tenth of its width on each side (outliers then fall into the end
    bins instead of squeezing the bulk into one bin).

    Args:
        hists: histograms with columns ``left``, ``right``, ``count`` (one per series).
        bins: number of grid bins.

    Returns:
        ``bins + 1`` increasing edges; ``[-1, 1]`` split evenly when no series has mass.
    """
    qs = _pooled_quantiles(hists, (TAIL, 1 - TAIL))
    return padded_grid(None if qs is None else (float(qs[0]), float(qs[1])), bins)


def padded_grid(bulk: tuple[float, float] | None, bins: int) -> np.ndarray:
    """``bins + 1`` linear edges over ``bulk = (lo, hi)`` padded by a tenth of its width on each
    side; a unit-wide window around a constant, ``[-1, 1]`` for nothing (None or non-finite)."""
    lo, hi = (-1.0, 1.0) if bulk is None or not np.all(np.isfinite(bulk)) else bulk
    if hi - lo <= 1e-12 * max(1.0, abs(lo), abs(hi)):
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.1 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, int(bins) + 1)


def series_densities(hists: Sequence[pd.DataFrame], grid: np.ndarray) -> list[np.ndarray]:
    """The density of each histogram on ``grid`` (each integrates to 1; zeros when empty)."""
    return [rebin(h, grid) for h in hists]

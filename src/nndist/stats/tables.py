"""Summaries as table rows: what the studies measure of weights and features.

A summary row is the key columns of a table followed by :data:`~nndist.stats.SUMMARY_COLUMNS`;
a histogram row is one non-empty bin (``left``, ``right``, ``count``) on the fixed global edges.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..probes import layer_modules, stream_features
from .summary import QUANTILE_COLUMNS, SUMMARY_COLUMNS, Summary

__all__ = ["coarse_histogram", "feature_summaries", "histogram_rows", "scalar_columns", "summary_row", "weight_summaries"]


def summary_row(summary: Summary, keys: Mapping[str, Any]) -> dict[str, Any]:
    """``keys`` followed by the summary columns of a scalar summary."""
    return {**keys, **summary.rows()[0]}


def histogram_rows(summary: Summary, keys: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per non-empty bin of a scalar summary: ``keys`` and ``left``, ``right``, ``count``."""
    edges, counts = summary.histogram()
    edges = np.asarray(edges, dtype=np.float64)
    counts = np.asarray(counts)
    return [dict(keys, left=float(edges[i]), right=float(edges[i + 1]), count=int(counts[i])) for i in np.nonzero(counts)[0]]


def weight_summaries(model: nn.Module, layers: Sequence[str]) -> dict[tuple[str, str], Summary]:
    """Summaries of each layer's own parameters: ``{(layer, param): Summary}``.

    Parameters are small: they are summarised in float64, so moments are exact to 1e-12.
    """
    return {
        (layer, pname): Summary().update(p.detach().double())
        for layer, module in layer_modules(model, layers).items()
        for pname, p in module.named_parameters(recurse=False)
    }


def feature_summaries(
    model: nn.Module,
    layers: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> dict[tuple[str, str], Summary]:
    """Each layer's output over each input set, streamed: ``{(layer, input_type): Summary}``.

    No feature tensor outlives its batch (see :func:`nndist.probes.stream_features`).
    """
    out: dict[tuple[str, str], Summary] = {}

    def consume(layer: str, input_type: str, output: torch.Tensor) -> None:
        out.setdefault((layer, input_type), Summary()).update(output)

    stream_features(model, layers, inputs, consume, batch_size=batch_size, progress=progress)
    return out


def scalar_columns(summaries: Sequence[Summary]) -> dict[str, np.ndarray]:
    """The summary columns of many scalar summaries at once: ``out[col][i] == summaries[i].rows()[0][col]``.

    The same arithmetic as :meth:`Summary.rows` (the tests compare them value for value), with
    the moments computed for all summaries together and each sketch's bucket positions read once
    for its quantiles and its KS statistic. ``n`` and ``nonfinite`` are int64, the rest float64.
    """
    t = len(summaries)
    if any(s.channels is not None for s in summaries):
        raise ValueError("scalar_columns takes scalar summaries (channels=None)")
    state = {name: np.array([getattr(s, "_" + name)[0] for s in summaries], dtype=np.float64).reshape(t)
             for name in ("n", "mean", "m2", "m3", "m4", "min", "max", "nan", "posinf", "neginf")}
    n, m2 = state["n"], state["m2"]
    has = n > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        var = np.where(has, m2 / n, np.nan)
        degenerate = ~has | (np.where(has, m2 / np.maximum(n, 1), 0.0) <= (np.finfo(np.float64).resolution * state["mean"]) ** 2)
        skew = np.where(degenerate, np.nan, np.sqrt(n) * state["m3"] / m2**1.5)
        kurtosis = np.where(degenerate, np.nan, n * state["m4"] / m2**2 - 3.0)
    out: dict[str, np.ndarray] = {
        "n": n.astype(np.int64), "mean": np.where(has, state["mean"], np.nan), "std": np.sqrt(var),
        "min": np.where(has, state["min"], np.nan), "max": np.where(has, state["max"], np.nan),
        "skew": skew, "kurtosis": kurtosis,
        "nonfinite": (state["nan"] + state["posinf"] + state["neginf"]).astype(np.int64),
    }
    q = np.array(list(QUANTILE_COLUMNS.values()))
    quant = np.full((t, q.size), np.nan)
    ks = np.full(t, np.nan)
    std_ks = np.sqrt(np.where(has, m2 / np.maximum(n, 1), 0.0))
    for i, s in enumerate(summaries):
        sk = s._sketch  # noqa: SLF001 - same package: one read of the bucket positions
        positions = sk.positions()
        quant[i] = sk.quantiles(q, s._n, s._min, s._max, positions=positions)[0]  # noqa: SLF001
        ks[i] = sk.ks_normal_bounds(s._n, s._mean, std_ks[i : i + 1], positions=positions)[0][0]  # noqa: SLF001
    out.update({name: quant[:, j] for j, name in enumerate(QUANTILE_COLUMNS)})
    out["ks_normal"] = ks
    return {name: out[name] for name in SUMMARY_COLUMNS}


def coarse_histogram(summary: Summary, octave_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scalar summary's histogram on every ``2^m / octave_bins``-th global edge: (left, right, count).

    The coarse edges are a subset of the fixed global edges (``octave_bins`` buckets per octave
    of ``|v|``, the zero bucket ``(-min_abs, min_abs)`` and the bucket of ``min_abs`` starting at
    ``min_abs`` as before), so coarse histograms of different tensors and steps still line up
    bin for bin and add exactly. Empty coarse bins are left out.

    Args:
        summary: a scalar summary.
        octave_bins: buckets per octave, a power of two not above the summary's ``2^m``.
    """
    sk = summary._sketch  # noqa: SLF001 - same package
    shift = sk.m - int(round(np.log2(octave_bins)))
    if summary.channels is not None or shift < 0 or (1 << (sk.m - shift)) != octave_bins:
        raise ValueError(f"octave_bins must be a power of two <= {1 << sk.m} for a scalar summary")
    p_lo, counts = sk.positions()
    counts = counts[0]
    if counts.size == 0:
        empty = np.zeros(0)
        return empty, empty, np.zeros(0, dtype=np.int64)
    p = np.arange(p_lo, p_lo + counts.size)
    # bucket position p != 0 is magnitude key k0 + |p| - 1; coarse group g = key >> shift, signed
    group = np.where(p == 0, 0, np.sign(p) * (((sk.key0 + np.abs(p) - 1) >> shift) + 1))
    keep = counts > 0
    groups, first = np.unique(group[keep], return_index=True)
    summed = np.add.reduceat(counts[keep], first)
    g = np.abs(groups) - 1  # magnitude group of the non-zero groups
    # positions of the first and last fine bucket of each magnitude group (at least position 1)
    lo_p = np.maximum(1, (g << shift) - sk.key0 + 1)
    hi_p = ((g + 1) << shift) - sk.key0
    left = np.where(groups > 0, sk.edge(lo_p - 1), np.where(groups < 0, sk.edge(-hi_p - 1), -summary.min_abs))
    right = np.where(groups > 0, sk.edge(hi_p), np.where(groups < 0, sk.edge(-lo_p), summary.min_abs))
    return left.astype(np.float64), right.astype(np.float64), summed.astype(np.int64)

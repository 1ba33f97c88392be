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
from scipy.special import ndtr

from . import columns as columns_kernel
from .sketch import Sketch, _edge_table
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


def _edges(sk: Sketch, start: int, stop: int) -> np.ndarray:
    """Edges e_j for j in [start, stop): a slice of the sketch's edge table when it covers them."""
    first, table = _edge_table(sk)
    if start >= first and stop <= first + table.size:
        return table[start - first : stop - first]
    return sk.edge(np.arange(start, stop))


def _group_histogram(sk: Sketch, min_abs: float, p_lo: int, counts: np.ndarray, shift: int) -> tuple[np.ndarray, ...]:
    """(left, right, count) of the non-empty coarse buckets: ``2^shift`` fine buckets of one sign each."""
    keep = np.flatnonzero(counts)
    if keep.size == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0, dtype=np.int64)
    p = p_lo + keep
    # bucket position p != 0 is magnitude key k0 + |p| - 1; coarse group g = key >> shift, signed.
    # Positions increase with the value, so the signed groups never decrease along p.
    group = np.where(p == 0, 0, np.sign(p) * (((sk.key0 + np.abs(p) - 1) >> shift) + 1))
    change = np.empty(group.size, dtype=bool)
    change[0] = True
    np.not_equal(group[1:], group[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    summed = np.add.reduceat(counts[keep], starts)
    groups = group[starts]
    g = np.abs(groups) - 1  # magnitude group of the non-zero groups
    # positions of the first and last fine bucket of each magnitude group (at least position 1)
    lo_p = np.maximum(1, (g << shift) - sk.key0 + 1)
    hi_p = ((g + 1) << shift) - sk.key0
    # left edge: e_{lo_p - 1} (positive groups) or e_{-hi_p - 1} (negative); right: e_{hi_p} or e_{-lo_p}
    sign = np.sign(groups)
    left = _edge_at(sk, np.where(sign > 0, lo_p - 1, -hi_p - 1))
    right = _edge_at(sk, np.where(sign > 0, hi_p, -lo_p))
    left = np.where(sign == 0, -min_abs, left)
    right = np.where(sign == 0, min_abs, right)
    return left, right, summed.astype(np.int64)


def _edge_at(sk: Sketch, j: np.ndarray) -> np.ndarray:
    """Edges e_j of the positions ``j`` (the edge table, or :meth:`Sketch.edge` beyond it)."""
    first, table = _edge_table(sk)
    i = j - first
    if i.size and 0 <= int(i.min()) and int(i.max()) < table.size:
        return table[i]
    return sk.edge(j)


def _octave_shift(s: Summary, octave_bins: int) -> int:
    shift = s.mantissa_bits - int(round(np.log2(octave_bins)))
    if s.channels is not None or shift < 0 or (1 << (s.mantissa_bits - shift)) != octave_bins:
        raise ValueError(f"octave_bins must be a power of two <= {1 << s.mantissa_bits} for a scalar summary")
    return shift


def _compiled(summaries, positions, state, std_ks, q, octave_bins, flat=None):  # noqa: ANN001, ANN202
    """Quantiles, KS lower bounds and coarse histograms of all summaries from one compiled pass
    (``flat``: ``positions`` already concatenated, as ``(p_lo, counts, offsets)``)."""
    sk = summaries[0]._sketch  # noqa: SLF001
    first, table = _edge_table(sk)
    if flat is None:
        sizes = np.array([c.shape[1] for _, c in positions], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        counts = np.concatenate([c[0] for _, c in positions]) if offsets[-1] else np.zeros(0, dtype=np.int64)
        p_lo = np.array([p for p, _ in positions])
    else:
        p_lo, counts, offsets = flat
    shift = sk.m if octave_bins is None else _octave_shift(summaries[0], octave_bins)
    quant, at_edge, at_cdf, at_start, left, right, count, h_start = columns_kernel.sketch_columns(
        counts, offsets, p_lo, state["n"], state["min"], state["max"], q, table, first,
        sk.key0, shift, summaries[0].min_abs)
    ks = np.full(len(summaries), np.nan)
    owner = np.repeat(np.arange(len(summaries)), np.diff(at_start))
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.abs(at_cdf - ndtr((at_edge - state["mean"][owner]) / std_ks[owner]))
    points = np.diff(at_start) > 0
    if points.any():  # empty segments lie between the non-empty ones: each maximum is its own segment's
        peak = np.maximum.reduceat(gap, at_start[:-1][points])
        ks[points] = np.where(std_ks[points] > 0, peak, np.nan)
    hists = [(left[h_start[i] : h_start[i + 1]], right[h_start[i] : h_start[i + 1]], count[h_start[i] : h_start[i + 1]])
             for i in range(len(summaries))] if octave_bins is not None else []
    return quant, ks, hists


def _per_summary(summaries, positions, state, std_ks, q, octave_bins):  # noqa: ANN001, ANN202
    """The numpy path of :func:`scalar_columns` (no compiler, or edges beyond the table)."""
    t = len(summaries)
    quant = np.full((t, q.size), np.nan)
    ks = np.full(t, np.nan)
    has = state["n"] > 0
    hists = []
    for i, s in enumerate(summaries):
        sk = s._sketch  # noqa: SLF001 - same package
        p_lo, counts = positions[i]
        counts = counts[0]
        if octave_bins is not None:
            hists.append(_group_histogram(sk, s.min_abs, p_lo, counts, _octave_shift(s, octave_bins)))
        if not has[i] or counts.size == 0:
            continue
        cum = np.cumsum(counts)
        # the quantiles of Sketch.quantiles: the representative of the bucket holding rank q (n - 1)
        p = p_lo + np.searchsorted(cum, q * (state["n"][i] - 1), side="right")
        ap = np.abs(p)
        lo, hi = np.abs(sk.edge(ap - 1)), np.abs(sk.edge(ap))
        rep = np.where(p == 0, 0.0, np.sign(p) * (2.0 * lo * hi / (lo + hi)))
        quant[i] = np.where(q == 0, state["min"][i], np.where(q == 1, state["max"][i], np.clip(rep, state["min"][i], state["max"][i])))
        # the lower KS bound of Sketch.ks_normal_bounds, max |F - Phi| over the bucket edges. Across
        # empty buckets F is constant and Phi increases, so the maximum over such a run of edges is
        # at one of its ends: the edges next to non-empty buckets (and the first and last) suffice.
        if std_ks[i] > 0:
            edges = _edges(sk, p_lo - 1, p_lo + counts.size)
            cdf = np.zeros(counts.size + 1)
            cdf[1:] = cum
            at = np.zeros(counts.size + 1, dtype=bool)
            at[:-1] = counts > 0
            at[1:] |= at[:-1].copy()
            at[0] = at[-1] = True
            ks[i] = np.max(np.abs(cdf[at] / s._n[0] - ndtr((edges[at] - s._mean[0]) / std_ks[i])))  # noqa: SLF001
    return quant, ks, hists


def scalar_columns(summaries: Sequence[Summary], octave_bins: int | None = None
                   ) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], list[tuple[np.ndarray, ...]]]:
    """The summary columns of many scalar summaries at once: ``out[col][i] == summaries[i].rows()[0][col]``.

    The arithmetic of :meth:`Summary.rows` (the tests compare them value for value), with the
    moments computed for all summaries together and each sketch's bucket positions read once for
    its quantiles, its KS statistic and, with ``octave_bins``, its coarse histogram
    (:func:`coarse_histogram`). ``n`` and ``nonfinite`` are int64, the rest float64.

    Returns:
        The columns; with ``octave_bins`` also one ``(left, right, count)`` per summary.
    """
    t = len(summaries)
    if any(s.channels is not None for s in summaries):
        raise ValueError("scalar_columns takes scalar summaries (channels=None)")
    # each state array holds one value (scalar summaries): joined, not read value by value
    state = {name: np.concatenate([getattr(s, "_" + name) for s in summaries]).astype(np.float64, copy=False) if t
             else np.zeros(0) for name in ("n", "mean", "m2", "m3", "m4", "min", "max", "nan", "posinf", "neginf")}
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
    std_ks = np.sqrt(np.where(has, m2 / np.maximum(n, 1), 0.0))
    flat = None
    if columns_kernel.AVAILABLE and t:  # every sketch's positions in one compiled call, read once
        flat = columns_kernel.row_positions([s._sketch for s in summaries])  # noqa: SLF001 - same package
        p_lo, counts, offsets = flat
        positions = [(int(p_lo[i]), counts[offsets[i] : offsets[i + 1]].reshape(1, -1)) for i in range(t)]
        # the compiled path: the first one's edges, and every position needed inside its edge table
        m0, a0 = summaries[0]._sketch.m, summaries[0].min_abs  # noqa: SLF001
        start, _ = _edge_table(summaries[0]._sketch)  # noqa: SLF001
        same = np.array([s._sketch.m == m0 and s.min_abs == a0 for s in summaries], dtype=bool)  # noqa: SLF001
        fast = same & (np.maximum(np.abs(p_lo - 1), np.abs(p_lo + np.diff(offsets))) <= -start - 1)
    else:
        positions = [s._sketch.positions() for s in summaries]  # noqa: SLF001
        fast = np.zeros(t, dtype=bool)
    quant, ks = np.full((t, q.size), np.nan), np.full(t, np.nan)
    hists: list[tuple[np.ndarray, ...]] = [()] * t
    for path, chosen in ((_compiled, np.flatnonzero(fast)), (_per_summary, np.flatnonzero(~fast))):
        if chosen.size:
            sub = {k: v[chosen] for k, v in state.items()}
            extra = {"flat": flat} if path is _compiled and chosen.size == t else {}
            quant[chosen], ks[chosen], part = path([summaries[i] for i in chosen], [positions[i] for i in chosen],
                                                   sub, std_ks[chosen], q, octave_bins, **extra)
            for i, h in zip(chosen, part):
                hists[i] = h
    out.update({name: quant[:, j] for j, name in enumerate(QUANTILE_COLUMNS)})
    out["ks_normal"] = ks
    columns = {name: out[name] for name in SUMMARY_COLUMNS}
    return columns if octave_bins is None else (columns, hists)


def coarse_histogram(summary: Summary, octave_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A scalar summary's histogram on every ``2^m / octave_bins``-th global edge: (left, right, count).

    The coarse edges are a subset of the fixed global edges (``octave_bins`` buckets per octave
    of ``|v|``, the zero bucket ``(-min_abs, min_abs)`` and the bucket of ``min_abs`` starting at
    ``min_abs`` as before), so coarse histograms of different tensors and steps still line up
    bin for bin and add exactly. Empty coarse buckets are left out.

    Args:
        summary: a scalar summary.
        octave_bins: buckets per octave, a power of two not above the summary's ``2^m``.
    """
    shift = _octave_shift(summary, octave_bins)
    sk = summary._sketch  # noqa: SLF001 - same package
    p_lo, counts = sk.positions()
    return _group_histogram(sk, summary.min_abs, p_lo, counts[0], shift)

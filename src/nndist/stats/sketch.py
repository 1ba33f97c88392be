r"""The quantile sketch: log-linear buckets read off the float bit pattern, on fixed global edges.

HDR-histogram style buckets, used like DDSketch (Masson, Rim & Lee, VLDB 2019). With relative
accuracy ``alpha`` the sketch keeps ``m`` mantissa bits, the smallest ``m >= 0`` with
``1 / (2^(m+1) + 1) <= alpha`` (``alpha = 0.01`` gives ``m = 6``). The key of a value ``v`` is its
binary exponent and the top ``m`` bits of its mantissa::

    key(v) = (floor(log2 |v|) + 127) * 2^m + floor((|v| / 2^floor(log2 |v|) - 1) * 2^m)

which for float32 is exactly the bit pattern shifted, ``(bits(|v|) >> (23 - m))``, and for
float64 ``(bits(|v|) >> (52 - m)) - (1023 - 127) * 2^m`` (the same key for the same value, no
rounding: float64 values are truncated, never rounded to float32, and values beyond float32's
range simply get larger keys). Key ``k`` holds ``E_k <= |v| < E_{k+1}`` with the edges
``E_k = 2^((k >> m) - 127) (1 + (k mod 2^m) / 2^m)`` (the float32 whose bit pattern is
``k << (23 - m)``), so consecutive edges differ by a factor of at most ``gamma = 1 + 2^-m``
(64 buckets per octave, about 213 per decade at ``m = 6``). Values with ``|v| < min_abs`` go to
one zero bucket and the bucket holding ``min_abs`` keeps only ``min_abs <= |v| < E_{k0+1}``
(``k0 = key(min_abs)``). The edges are fixed and global for a given ``(alpha, min_abs)``: two
sketches always share edges, merging adds integer counts exactly, and histograms of different
tensors line up bin for bin. Counts are stored densely between the smallest and largest key seen,
so memory grows with ``log2(max|v| / min|v|) * 2^m``, never with the number of values.
``min_abs`` must be at least ``2^-126`` (float32's smallest normal number) so that every key at or
above ``k0`` is log-linear.

Global bucket positions. The buckets are numbered in increasing value order by an integer
*position* ``p``: ``p = 0`` is the zero bucket, ``p = k - k0 + 1 > 0`` is positive key ``k`` and
``p = -(k - k0 + 1) < 0`` is negative key ``k``. Bucket ``p > 0`` covers ``[e_{p-1}, e_p)``, bucket
``p < 0`` covers ``(e_{p-1}, e_p]`` and the zero bucket covers ``(-min_abs, min_abs)``, where
``e_p = E_{k0 + p}`` for ``p >= 1``, ``e_0 = min_abs`` and ``e_p = -e_{-p-1}`` for ``p < 0``.

Accuracy of what the sketch gives:

* quantiles: a bucket ``[lo, hi)`` is represented by ``2 lo hi / (lo + hi)``, the point with the
  smallest worst-case relative error, so the returned value is within relative error
  ``(hi - lo) / (hi + lo) <= 1 / (2^(m+1) + 1) <= alpha`` (``1/129 = 0.00775`` at the default
  ``alpha = 0.01``) of the order statistic ``x_(floor(q (n-1)))`` (0-based), or within ``min_abs``
  of it when that order statistic lies in the zero bucket. The keys are exact bit operations: no
  value is ever put in a neighbouring bucket by rounding.
* the CDF: exact at bucket edges (only values lying exactly on an edge can be attributed to either
  side), linear in between, so off by at most the mass of the bucket containing ``x`` elsewhere.
* KS statistics: the supremum taken over the bucket edges only, a lower bound of the exact one,
  which is at most the edge value plus the largest mass (data or normal) of one bucket.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtr

from . import columns
from .kernels import HI16

__all__ = ["MAX_MANTISSA_BITS", "MIN_ABS_FLOOR", "Sketch", "key_edges", "key_of", "mantissa_bits"]

#: Smallest min_abs: float32's smallest normal number, so that every key >= key(min_abs) is log-linear.
MIN_ABS_FLOOR = 2.0**-126
#: Largest mantissa bits: float32 has 23.
MAX_MANTISSA_BITS = 23


def mantissa_bits(alpha: float) -> int:
    """Smallest m with ``1 / (2^(m+1) + 1) <= alpha``: the bucket relative error bound."""
    m = 0
    while 1.0 / (2.0 ** (m + 1) + 1.0) > alpha:
        m += 1
    return m


def key_of(value: float, m: int) -> int:
    """Bucket key of ``|value|`` (finite, non-zero) from its float64 bits."""
    bits = int(np.array(abs(value), dtype=np.float64).view(np.int64))
    return (bits >> (52 - m)) - ((1023 - 127) << m)


def key_edges(k: np.ndarray | int, m: int) -> np.ndarray:
    """Lower edge ``E_k`` of keys ``k`` (>= 2^m), exactly, as float64."""
    k = np.asarray(k, dtype=np.int64)
    return np.ldexp((1 << m) + (k & ((1 << m) - 1)), (k >> m) - 127 - m).astype(np.float64)


def _store_add(off: int, arr: np.ndarray, boff: int, barr: np.ndarray) -> tuple[int, np.ndarray]:
    """Adds bucket counts ``barr`` (keys from ``boff``) into ``arr`` (keys from ``off``).

    The result covers the union of the two non-empty key ranges; ``arr`` may be modified in place
    and ``barr`` is never modified. Both are (C, K) int64.
    """
    cols = np.flatnonzero(barr.any(axis=0))
    if cols.size == 0:
        return off, arr
    barr = barr[:, cols[0] : cols[-1] + 1]
    boff = boff + int(cols[0])
    kb = barr.shape[1]
    if arr.shape[1] == 0:
        return boff, barr.copy()
    lo = min(off, boff)
    hi = max(off + arr.shape[1], boff + kb)
    if lo != off or hi != off + arr.shape[1]:
        arr, off = _grown(off, arr, lo, hi), lo
    arr[:, boff - off : boff - off + kb] += barr
    return off, arr


def _grown(off: int, arr: np.ndarray, lo: int, hi: int) -> np.ndarray:
    grown = np.zeros((arr.shape[0], hi - lo), dtype=np.int64)
    grown[:, off - lo : off - lo + arr.shape[1]] = arr
    return grown


def _store_add_sparse(off: int, arr: np.ndarray, ch: np.ndarray, keys: np.ndarray, counts: np.ndarray) -> tuple[int, np.ndarray]:
    """Adds ``counts`` at distinct (channel ``ch``, key ``keys``) cells into ``arr`` (keys from ``off``)."""
    if keys.size == 0:
        return off, arr
    lo, hi = int(keys.min()), int(keys.max()) + 1
    if arr.shape[1] == 0:
        arr, off = np.zeros((arr.shape[0], hi - lo), dtype=np.int64), lo
    elif lo < off or hi > off + arr.shape[1]:
        nlo, nhi = min(lo, off), max(hi, off + arr.shape[1])
        arr, off = _grown(off, arr, nlo, nhi), nlo
    flat = arr.reshape(-1)  # a view: arr is C-contiguous
    flat[ch * arr.shape[1] + (keys - off)] += counts  # (ch, key) pairs are distinct: no lost updates
    return off, arr


_EDGE_TABLES: dict[tuple[int, float], tuple[int, np.ndarray]] = {}


def _edge_table(sketch: "Sketch") -> tuple[int, np.ndarray]:
    """(first position, edges) of every position of a finite float32 magnitude key, both signs."""
    key = (sketch.m, sketch.min_abs)
    if key not in _EDGE_TABLES:
        top = (255 << sketch.m) - sketch.key0 + 1  # positions of keys below float32's Inf/NaN keys
        j = np.arange(-top - 1, top + 1, dtype=np.int64)
        _EDGE_TABLES[key] = (int(j[0]), sketch._edge(j))
    return _EDGE_TABLES[key]


def nonzero_ends(row: np.ndarray) -> np.ndarray:
    """Indices of the first and last non-zero count of a 1-D store (empty if none)."""
    if row.size and row[0] and row[-1]:  # a trimmed store: no search
        return np.array([0, row.size - 1])
    nz = np.flatnonzero(row)
    return nz[[0, -1]] if nz.size else nz


class Sketch:
    """Bucket counts of C channels on the global edges of ``(m, min_abs)``.

    Attributes:
        zero: (C,) counts of ``|v| < min_abs``.
        pos_off, pos: positive keys from ``pos_off``, (C, K) int64; likewise ``neg_off``, ``neg``.
    """

    def __init__(self, channels: int, m: int, min_abs: float) -> None:
        self.c, self.m, self.min_abs = channels, m, min_abs
        self.key0 = key_of(min_abs, m)
        # min_abs lies strictly inside bucket key0: that bucket's values below it go to zero
        self.straddle = float(key_edges(self.key0, m)) < min_abs
        self.zero = np.zeros(channels, dtype=np.int64)
        self.pos_off, self.pos = 0, np.zeros((channels, 0), dtype=np.int64)
        self.neg_off, self.neg = 0, np.zeros((channels, 0), dtype=np.int64)

    # ------------------------------------------------------------------ adding values
    def add_float32(self, x: torch.Tensor) -> None:
        """Finite float32 ``x`` (1-D) of a scalar sketch, with one bincount over all 2^(9+m) keys.

        The high int16 of a float32 is sign, exponent and the top 7 mantissa bits, so an
        arithmetic shift by 7 - m gives the signed key; masking to 9 + m bits puts positive keys
        at [0, 2^(8+m)) and negative ones at 2^(8+m) + key. Needs m <= 6.
        """
        half = 1 << (8 + self.m)
        if x.stride(0) != 1:
            x = x.contiguous()
        # Out of place: the strided high halves of a one-element tensor are the caller's own memory.
        k = x.view(torch.int16)[HI16::2]
        if self.m < 7:
            k = k >> (7 - self.m)
        k = k & (2 * half - 1)
        self.add_key_counts(x, torch.bincount(k, minlength=2 * half).cpu().numpy())

    def add_key_counts(self, x: torch.Tensor, counts: np.ndarray) -> None:
        """Adds the (2^(9+m),) counts of signed keys (see :meth:`add_float32`) of the values ``x``."""
        half = 1 << (8 + self.m)
        pos, neg = counts[:half], counts[half:]
        k0 = self.key0
        zero = np.array([pos[:k0].sum() + neg[:k0].sum()], dtype=np.int64)
        self._add(x.reshape(-1, 1), k0, pos[None, k0:].astype(np.int64), k0, neg[None, k0:].astype(np.int64), zero)

    def add_chunk(self, x: torch.Tensor, finite: torch.Tensor | None, lo: float, hi: float) -> None:
        """Adds one (N, C) chunk with one bincount over its key range.

        ``lo`` and ``hi`` are the smallest and largest finite values of the chunk (all channels);
        ``finite`` masks the values to count (None: all).
        """
        c, m, k0 = self.c, self.m, self.key0
        if x.dtype == torch.float32:
            bits = x.view(torch.int32)
            mk = (bits & 0x7FFFFFFF) >> (23 - m)
        else:
            x = x.to(torch.float64)
            bits = x.view(torch.int64)
            mk = ((bits & 0x7FFFFFFFFFFFFFFF) >> (52 - m)) - ((1023 - 127) << m)
        big = mk >= k0
        if finite is not None:
            big &= finite
        kmax = max(key_of(v, m) if v != 0.0 else k0 - 1 for v in (lo, hi))
        if kmax < k0:  # every finite value is in the zero bucket
            zero = big.logical_not_()
            if finite is not None:
                zero &= finite
            self.zero = self.zero + zero.sum(0).cpu().numpy()
            return
        kmin = int(torch.where(big, mk, kmax).min())
        k = kmax - kmin + 1
        width = 2 * k + 1  # per channel: [negative keys | positive keys | zero bucket]
        idx = mk - kmin
        idx = torch.where(bits < 0, idx, idx + k)
        idx = torch.where(big, idx, 2 * k)
        if c > 1:
            idx += torch.arange(c, device=x.device, dtype=idx.dtype) * width
        if finite is not None:
            idx = torch.where(finite, idx, c * width)  # non-finite values go to a discarded bin
        if c > 1 and c * width > 4 * idx.numel():
            self._add_sparse(x, idx.reshape(-1), k, kmin)
            return
        counts = torch.bincount(idx.reshape(-1), minlength=c * width + 1)[: c * width]
        counts = counts.reshape(c, width).cpu().numpy().astype(np.int64)
        self._add(x, kmin, counts[:, k : 2 * k], kmin, counts[:, :k], counts[:, 2 * k])

    def _add_sparse(self, x: torch.Tensor, idx: torch.Tensor, k: int, kmin: int) -> None:
        """Per-channel counts from the distinct (channel, bucket) indices of a chunk.

        Used when the dense ``C x (2k + 1)`` index space is much larger than the chunk (many
        channels, few rows, values spread over many octaves): only the buckets hit are touched.
        """
        c, width = self.c, 2 * k + 1
        u, cnt = torch.unique(idx, return_counts=True)
        u = u.cpu().numpy().astype(np.int64)
        cnt = cnt.cpu().numpy().astype(np.int64)
        keep = u < c * width  # drop the non-finite bin
        ch, col = np.divmod(u[keep], width)
        cnt = cnt[keep]
        z = col == 2 * k
        zero = np.bincount(ch[z], weights=cnt[z], minlength=c).astype(np.int64)  # exact below 2^53
        neg = col < k
        pos = ~neg & ~z
        self.neg_off, self.neg = _store_add_sparse(self.neg_off, self.neg, ch[neg], kmin + col[neg], cnt[neg])
        self.pos_off, self.pos = _store_add_sparse(self.pos_off, self.pos, ch[pos], kmin + col[pos] - k, cnt[pos])
        # straddle correction on the stores themselves: the chunk's own bucket-key0 counts are in them
        hit = bool(np.any(kmin + col[neg] == self.key0) or np.any(kmin + col[pos] - k == self.key0))
        empty = np.zeros((c, 0), dtype=np.int64)
        self._add(x, 0, empty, 0, empty, zero, straddle_hit=hit)

    def _add(self, x: torch.Tensor, pos_off: int, pos: np.ndarray, neg_off: int, neg: np.ndarray,
             zero: np.ndarray, straddle_hit: bool = False) -> None:
        """Adds a batch's (C, K) bucket counts (keys >= key0 only) and zero counts to the stores.

        Keys are exact, so only bucket key0 can hold values below ``min_abs`` (when ``min_abs``
        is not itself an edge); those are counted again exactly and moved to the zero bucket.
        """
        k0 = self.key0
        mp = mn = None
        if self.straddle:
            jp, jn = k0 - pos_off, k0 - neg_off
            hit = straddle_hit
            hit = hit or (0 <= jp < pos.shape[1] and pos[:, jp].any())
            hit = hit or (0 <= jn < neg.shape[1] and neg[:, jn].any())
            if hit:
                a = x.to(torch.float64).abs()
                low = (a >= float(key_edges(k0, self.m))) & (a < self.min_abs)  # False for NaN
                mp = (low & (x > 0)).sum(0).cpu().numpy().astype(np.int64)
                mn = (low & (x < 0)).sum(0).cpu().numpy().astype(np.int64)
                zero = zero + mp + mn
        self.neg_off, self.neg = _store_add(self.neg_off, self.neg, neg_off, neg)
        self.pos_off, self.pos = _store_add(self.pos_off, self.pos, pos_off, pos)
        self.zero = self.zero + zero
        # the moved values were counted in bucket key0 (now in the stores, which cover it)
        for moved, off, arr in ((mp, self.pos_off, self.pos), (mn, self.neg_off, self.neg)):
            if moved is not None and moved.any():
                arr[:, k0 - off] -= moved

    def merge(self, other: "Sketch") -> None:
        """Adds ``other``'s counts (same edges): exact integer additions."""
        self.zero = self.zero + other.zero
        self.neg_off, self.neg = _store_add(self.neg_off, self.neg, other.neg_off, other.neg)
        self.pos_off, self.pos = _store_add(self.pos_off, self.pos, other.pos_off, other.pos)

    # ------------------------------------------------------------------ views
    def positions(self) -> tuple[int, np.ndarray]:
        """All buckets in increasing value order over the non-empty range of any channel.

        Returns:
            (p_lo, counts): position of column 0 and counts, shape (C, m), int64; m = 0 if empty.
        """
        return self._positions_row() if self.c == 1 and columns.AVAILABLE else self._positions_dense()

    def _positions_dense(self) -> tuple[int, np.ndarray]:
        """:meth:`positions` of any number of channels, through one dense (C, m) array."""
        c = self.c
        neg = self.neg[:, ::-1]  # largest |v| (most negative) first
        # positions: negative key k -> -(k - k0 + 1); positive key k -> k - k0 + 1
        parts: list[tuple[int, np.ndarray]] = []
        if neg.shape[1]:
            top = self.neg_off + self.neg.shape[1] - 1
            parts.append((-(top - self.key0 + 1), neg))
        parts.append((0, self.zero.reshape(c, 1)))
        if self.pos.shape[1]:
            parts.append((self.pos_off - self.key0 + 1, self.pos))
        lo = min(p for p, _ in parts)
        hi = max(p + a.shape[1] for p, a in parts)
        dense = np.zeros((c, hi - lo), dtype=np.int64)
        for p, a in parts:
            dense[:, p - lo : p - lo + a.shape[1]] += a
        cols = np.flatnonzero(dense.any(axis=0))
        if cols.size == 0:
            return 0, np.zeros((c, 0), dtype=np.int64)
        return lo + int(cols[0]), dense[:, cols[0] : cols[-1] + 1]

    def _positions_row(self) -> tuple[int, np.ndarray]:
        """:meth:`positions` of one channel, compiled (:func:`~nndist.stats.columns.row_positions`:
        the stores' non-zero ends found without a dense copy)."""
        p_lo, flat, _ = columns.row_positions([self])
        return int(p_lo[0]), flat.reshape(1, -1)

    def edge(self, j: np.ndarray | int) -> np.ndarray:
        """Edge e_j between positions j and j+1, float64, exact.

        Edges of float32 keys come from a table made once per ``(m, min_abs)`` (the report and
        the monitor ask for thousands of edges per summary); others are computed.
        """
        j = np.asarray(j, dtype=np.int64)
        first, table = _edge_table(self)
        if j.size and int(j.min()) >= first and int(j.max()) < first + table.size:
            return table[j - first]
        return self._edge(j)

    def _edge(self, j: np.ndarray) -> np.ndarray:
        aj = np.where(j >= 0, j, -j - 1)
        mag = np.where(aj == 0, self.min_abs, key_edges(aj + self.key0, self.m))
        return np.where(j >= 0, mag, -mag)

    def representative(self, p: np.ndarray) -> np.ndarray:
        """Value reported for bucket position p: ``±2 lo hi / (lo + hi)`` of its edges, 0 for zero.

        That point is within relative error ``(hi - lo) / (hi + lo) <= 1 / (2^(m+1) + 1)`` of
        every value in ``[lo, hi]``, the smallest possible worst case.
        """
        p = np.asarray(p, dtype=np.int64)
        ap = np.abs(p)
        lo = np.abs(self.edge(ap - 1))
        hi = np.abs(self.edge(ap))
        mag = 2.0 * lo * hi / (lo + hi)
        return np.where(p == 0, 0.0, np.sign(p) * mag)

    def edges_cdf(self, p_lo: int, counts: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Edges (m+1,) and CDF at the edges (C, m+1) for dense counts from position p_lo."""
        m = counts.shape[1]
        edges = self.edge(np.arange(p_lo - 1, p_lo + m))
        cum = np.zeros((counts.shape[0], m + 1))
        np.cumsum(counts, axis=1, out=cum[:, 1:])
        with np.errstate(divide="ignore", invalid="ignore"):
            cdf = cum / n.reshape(-1, 1)
        return edges, cdf

    def quantiles(self, q: np.ndarray, n: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                  positions: tuple[int, np.ndarray] | None = None) -> np.ndarray:
        """(C, len(q)) quantiles: bucket representatives clipped to the exact [lo, hi]; NaN where n = 0.

        ``positions`` is :meth:`positions` when the caller has it already.
        """
        p_lo, counts = self.positions() if positions is None else positions
        out = np.full((self.c, q.size), np.nan)
        cum = np.cumsum(counts, axis=1)
        for ch in range(self.c):
            if n[ch] == 0:
                continue
            rank = q * (n[ch] - 1)
            idx = np.searchsorted(cum[ch], rank, side="right")  # first bucket with cum > rank
            vals = np.clip(self.representative(p_lo + idx), lo[ch], hi[ch])
            # the extremes are known exactly, so q = 0 and q = 1 need no sketch
            out[ch] = np.where(q == 0, lo[ch], np.where(q == 1, hi[ch], vals))
        return out

    def cdf(self, x: np.ndarray, n: np.ndarray) -> np.ndarray:
        """(C,) + x.shape empirical CDF, linear inside buckets; NaN for empty channels."""
        p_lo, counts = self.positions()
        out = np.full((self.c,) + x.shape, np.nan)
        if counts.shape[1]:
            edges, cdf = self.edges_cdf(p_lo, counts, n)
            for ch in range(self.c):
                if n[ch] > 0:
                    out[ch] = np.interp(x, edges, cdf[ch], left=0.0, right=1.0)
        return out

    def ks_normal_bounds(self, n: np.ndarray, mean: np.ndarray, std: np.ndarray,
                         positions: tuple[int, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds (C,) of the exact KS statistic against N(mean, std^2).

        The lower bound is ``max_e |F(e) - Phi(e)|`` over bucket edges e (F exact there). Inside
        bucket ``(e_{j-1}, e_j]`` both F and Phi are non-decreasing, so
        ``|F(x) - Phi(x)| <= max(|F(e_j) - Phi(e_{j-1})|, |Phi(e_j) - F(e_{j-1})|)``, whose
        maximum over buckets is the upper bound. NaN where n = 0 or std = 0.
        """
        p_lo, counts = self.positions() if positions is None else positions
        lower = np.full(self.c, np.nan)
        upper = np.full(self.c, np.nan)
        if counts.shape[1]:
            edges, cdf = self.edges_cdf(p_lo, counts, n)
            for ch in range(self.c):
                if n[ch] == 0 or not std[ch] > 0:
                    continue
                phi = ndtr((edges - mean[ch]) / std[ch])
                f = cdf[ch]
                lower[ch] = np.max(np.abs(f - phi))
                inner = np.maximum(np.abs(f[1:] - phi[:-1]), np.abs(phi[1:] - f[:-1]))
                upper[ch] = max(lower[ch], float(np.max(inner)))
        return lower, upper

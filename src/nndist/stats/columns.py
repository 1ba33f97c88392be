"""The sketch columns of many scalar summaries in one compiled call: quantiles, KS points, coarse histograms.

A monitor step turns a hundred and more summaries into rows. Per summary, :meth:`Summary.rows`
makes some forty numpy calls on arrays of a few thousand buckets; here one compiled pass
(:func:`sketch_columns`) walks every summary's bucket positions (concatenated) and gives:

* the quantiles: the representative ``2 lo hi / (lo + hi)`` of the bucket holding rank
  ``q (n - 1)``, clipped to the exact extremes, as :meth:`Sketch.quantiles` (the same float
  operations in the same order, so the same values);
* the points where the KS lower bound can peak: the edges next to non-empty buckets, with the
  empirical CDF there (across a run of empty buckets the CDF is flat and the normal CDF rises, so
  the maximum of ``|F - Phi|`` over the run is at one of its ends); the caller evaluates ``Phi``
  with ``scipy.special.ndtr`` for all of them at once, as :meth:`Sketch.ks_normal_bounds` does;
* the coarse histogram of :func:`nndist.stats.tables.coarse_histogram`.

Edges come from the sketch's table of global edges (:func:`nndist.stats.sketch._edge_table`).
"""

from __future__ import annotations

import numpy as np

from . import kernels

__all__ = ["AVAILABLE", "row_positions", "sketch_columns"]

AVAILABLE = kernels.AVAILABLE

if AVAILABLE:
    import numba

    @numba.njit(cache=True, nogil=True)
    def _ends(row, a, b):  # pragma: no cover - compiled
        """First and last non-zero index of ``row[a:b]`` relative to ``a`` (``-1, -2`` if none)."""
        first = a
        while first < b and row[first] == 0:
            first += 1
        if first == b:
            return -1, -2
        last = b - 1
        while row[last] == 0:
            last -= 1
        return first - a, last - a

    @numba.njit(cache=True, nogil=True)
    def _row_positions(neg, neg_at, neg_off, zero, pos, pos_at, pos_off, keys0):  # pragma: no cover - compiled
        t = zero.shape[0]
        p_lo = np.zeros(t, dtype=np.int64)
        offsets = np.zeros(t + 1, dtype=np.int64)
        spans = np.zeros((t, 4), dtype=np.int64)  # non-zero ends of the negative and positive stores
        for i in range(t):
            key0 = keys0[i]
            na, nb = _ends(neg, neg_at[i], neg_at[i + 1])
            pa, pb = _ends(pos, pos_at[i], pos_at[i + 1])
            spans[i, 0], spans[i, 1], spans[i, 2], spans[i, 3] = na, nb, pa, pb
            lo, hi, empty = np.int64(0), np.int64(0), True
            if nb >= na:  # negative key k sits at position -(k - k0 + 1), the largest key first
                lo, hi, empty = -(neg_off[i] + nb - key0 + 1), -(neg_off[i] + na - key0 + 1), False
            if zero[i]:
                lo, hi = (0, 0) if empty else (min(lo, 0), max(hi, 0))
                empty = False
            if pb >= pa:
                a, b = pos_off[i] + pa - key0 + 1, pos_off[i] + pb - key0 + 1
                lo, hi = (a, b) if empty else (min(lo, a), max(hi, b))
                empty = False
            p_lo[i] = 0 if empty else lo
            offsets[i + 1] = offsets[i] + (0 if empty else hi - lo + 1)
        flat = np.zeros(offsets[t], dtype=np.int64)
        for i in range(t):
            key0 = keys0[i]
            base = offsets[i] - p_lo[i]  # flat index of position 0
            na, nb, pa, pb = spans[i, 0], spans[i, 1], spans[i, 2], spans[i, 3]
            for j in range(na, nb + 1):
                flat[base - (neg_off[i] + j - key0 + 1)] += neg[neg_at[i] + j]
            if offsets[i + 1] > offsets[i]:
                flat[base] += zero[i]
            for j in range(pa, pb + 1):
                flat[base + pos_off[i] + j - key0 + 1] += pos[pos_at[i] + j]
        return p_lo, flat, offsets

    @numba.njit(cache=True, nogil=True)
    def _nonzero(c, out):  # pragma: no cover - compiled
        """Indices of the non-zero entries of ``c`` into ``out``; returns how many (a loop
        without jumps: four in five positions of a step's sketches are empty, at random in the tails)."""
        k = 0
        for e in range(c.shape[0]):
            out[k] = e
            k += c[e] != 0
        return k

    @numba.njit(cache=True, nogil=True)
    def _columns(flat, offsets, p_lo, n, lo, hi, q, table, first, key0, shift, min_abs):  # pragma: no cover - compiled
        t = offsets.shape[0] - 1
        quant = np.full((t, q.shape[0]), np.nan)
        size = flat.shape[0] + t
        at_edge = np.empty(size)
        at_cdf = np.empty(size)
        at_start = np.zeros(t + 1, dtype=np.int64)
        h_left = np.empty(flat.shape[0])
        h_right = np.empty(flat.shape[0])
        h_count = np.empty(flat.shape[0], dtype=np.int64)
        h_start = np.zeros(t + 1, dtype=np.int64)
        nz = np.empty(flat.shape[0], dtype=np.int64)
        cnz = np.empty(flat.shape[0], dtype=np.int64)
        na = 0
        nh = 0
        for i in range(t):
            a, b = offsets[i], offsets[i + 1]
            m = b - a
            c = flat[a:b]
            # only the non-empty buckets matter: the cumulative count changes there only, and the
            # KS points are the edges next to them (and the first and last edge)
            k = _nonzero(c, nz)
            total = 0
            for j in range(k):
                total += c[nz[j]]
                cnz[j] = total
            if n[i] > 0 and m > 0:
                for j in range(q.shape[0]):
                    r = np.searchsorted(cnz[:k], q[j] * (n[i] - 1.0), side="right")
                    p = p_lo[i] + (nz[r] if r < k else m)  # the first bucket whose cumulative count exceeds the rank
                    if p == 0:
                        rep = 0.0
                    else:
                        ap = abs(p)
                        e_lo = abs(table[ap - 1 - first])
                        e_hi = abs(table[ap - first])
                        rep = 2.0 * e_lo * e_hi / (e_lo + e_hi)
                        if p < 0:
                            rep = -rep
                    if q[j] == 0.0:
                        quant[i, j] = lo[i]
                    elif q[j] == 1.0:
                        quant[i, j] = hi[i]
                    else:
                        quant[i, j] = min(max(rep, lo[i]), hi[i])
                # edge e lies between buckets e - 1 and e: the first and last edges, and both
                # edges of every non-empty bucket, in order, each once
                base = p_lo[i] - 1 - first
                at_edge[na] = table[base]
                at_cdf[na] = 0.0
                na += 1
                last = 0
                below = 0  # count of the buckets below the current edge
                for j in range(k):
                    e = nz[j]
                    if e > last:
                        at_edge[na] = table[base + e]
                        at_cdf[na] = below / n[i]
                        na += 1
                    below = cnz[j]
                    at_edge[na] = table[base + e + 1]
                    at_cdf[na] = below / n[i]
                    na += 1
                    last = e + 1
                if last < m:
                    at_edge[na] = table[base + m]
                    at_cdf[na] = below / n[i]
                    na += 1
            at_start[i + 1] = na
            g_prev = np.int64(0)
            have = False
            for j in range(k):
                e = nz[j]
                p = p_lo[i] + e
                g = np.int64(0) if p == 0 else (((key0 + abs(p) - 1) >> shift) + 1) * (1 if p > 0 else -1)
                if have and g == g_prev:
                    h_count[nh - 1] += c[e]
                    continue
                if g == 0:
                    left, right = -min_abs, min_abs
                else:
                    mg = abs(g) - 1
                    lo_p = max(1, (mg << shift) - key0 + 1)
                    hi_p = ((mg + 1) << shift) - key0
                    if g > 0:
                        left, right = table[lo_p - 1 - first], table[hi_p - first]
                    else:
                        left, right = table[-hi_p - 1 - first], table[-lo_p - first]
                h_left[nh] = left
                h_right[nh] = right
                h_count[nh] = c[e]
                nh += 1
                g_prev = g
                have = True
            h_start[i + 1] = nh
        return quant, at_edge[:na], at_cdf[:na], at_start, h_left[:nh], h_right[:nh], h_count[:nh], h_start


def row_positions(sketches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # noqa: ANN001 - Sketch (a module above)
    """:meth:`~nndist.stats.sketch.Sketch.positions` of many one-channel sketches in one compiled call
    (each with its own ``key0``: their accuracies may differ).

    Returns:
        ``(p_lo (T,), flat, offsets (T + 1,))``: sketch i's counts are ``flat[offsets[i]:offsets[i + 1]]``
        from position ``p_lo[i]`` (``p_lo = 0`` and no counts when it is empty).
    """
    if len(sketches) == 1:  # Sketch.positions of one sketch: no lists
        sk = sketches[0]
        neg, pos = sk.neg[0], sk.pos[0]
        return _row_positions(neg, np.array([0, neg.size]), np.array([sk.neg_off]), sk.zero.astype(np.int64, copy=False),
                              pos, np.array([0, pos.size]), np.array([sk.pos_off]), np.array([sk.key0], dtype=np.int64))

    def stores(rows: list[np.ndarray], offs: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        at = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum([r.size for r in rows], out=at[1:])
        flat = np.concatenate(rows, axis=1)[0].astype(np.int64, copy=False) if rows else np.zeros(0, dtype=np.int64)
        return flat, at, np.array(offs, dtype=np.int64)

    neg, neg_at, neg_off = stores([sk.neg for sk in sketches], [sk.neg_off for sk in sketches])
    pos, pos_at, pos_off = stores([sk.pos for sk in sketches], [sk.pos_off for sk in sketches])
    zero = np.concatenate([sk.zero for sk in sketches]).astype(np.int64, copy=False) if sketches else np.zeros(0, dtype=np.int64)
    keys0 = np.array([sk.key0 for sk in sketches], dtype=np.int64)  # each sketch's own (accuracies may differ)
    return _row_positions(neg, neg_at, neg_off, zero, pos, pos_at, pos_off, keys0)


def sketch_columns(flat: np.ndarray, offsets: np.ndarray, p_lo: np.ndarray, n: np.ndarray, lo: np.ndarray,
                   hi: np.ndarray, q: np.ndarray, table: np.ndarray, first: int, key0: int, shift: int,
                   min_abs: float) -> tuple[np.ndarray, ...]:
    """Quantiles, KS points and coarse histograms of T summaries' bucket positions.

    Args:
        flat: the bucket counts of every summary (:meth:`Sketch.positions`), concatenated, int64.
        offsets: (T + 1,) start of each summary's counts in ``flat``.
        p_lo: (T,) position of each summary's first bucket.
        n, lo, hi: (T,) count of finite values and exact extremes (float64).
        q: the quantile probabilities.
        table, first: the edge table and the position of its first edge; every position
            ``p_lo - 1 .. p_lo + m`` and its mirror must lie in it.
        key0, shift: the key of ``min_abs`` and the coarse shift (fine buckets per coarse one: ``2^shift``).
        min_abs: the zero bucket's half-width.

    Returns:
        ``(quantiles (T, len(q)), at_edge, at_cdf, at_start (T + 1,), left, right, count, h_start (T + 1,))``:
        the KS points of summary i are ``at_*[at_start[i]:at_start[i + 1]]`` and its coarse buckets
        ``left/right/count[h_start[i]:h_start[i + 1]]``.
    """
    return _columns(np.ascontiguousarray(flat, dtype=np.int64), np.asarray(offsets, dtype=np.int64),
                    np.asarray(p_lo, dtype=np.int64), np.asarray(n, dtype=np.float64), np.asarray(lo, dtype=np.float64),
                    np.asarray(hi, dtype=np.float64), np.asarray(q, dtype=np.float64), table, int(first), int(key0),
                    int(shift), float(min_abs))

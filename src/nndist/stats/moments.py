r"""Exact streaming moments: per-batch central sums and their pairwise merge.

A summary keeps, per channel, the count ``n`` of finite values, their mean and the central sums
``M_p = sum_i (x_i - mean)^p`` for ``p = 2, 3, 4`` in float64. Each batch is reduced to the same
five numbers by one of the functions below and merged with :func:`merge_moments`.

* float64 inputs (and integers, converted to float64): two float64 passes per chunk (mean, then
  central sums), :func:`chunk_moments`; mean, variance, skewness and kurtosis then agree with
  numpy/scipy in float64 to about ``1e-12`` relative.
* float32 inputs of a scalar summary: :func:`float32_moments`, without a float64 copy. The values
  are shifted by a float32 reference ``r`` (the batch mean rounded to float32, so ``x - r`` is
  exact for most values and otherwise rounded once) and, when the batch's range is outside
  ``[2^-24, 2^24]``, scaled by a power of two; the power sums ``S_p = sum (x - r)^p`` are
  accumulated in float32 (torch's cascade summation, in blocks whose partial sums are added in
  float64) and turned into central sums with :func:`central_sums`. Guarantee (tested on normal,
  uniform, lognormal, zero-inflated, all-negative and offset data, mean 1e3 / std 1, up to 3e6
  values): mean within ``1e-6 std`` of the float64 mean of the same float32 values, variance and
  std within ``1e-6`` relative, skewness and excess kurtosis within ``1e-5`` absolute.
* float32 CPU batches: the compiled pass of :mod:`nndist.stats.kernels` accumulates the power sums
  in float64 about a sampled mean; :func:`central_sums` converts them.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["BLOCK32", "central_sums", "chunk_moments", "float32_moments", "merge_moments"]

#: Elements per block of the float32 moment path: two float32 temporaries of this size stay in cache.
BLOCK32 = 1 << 18


def merge_moments(
    na: np.ndarray,
    a: tuple[np.ndarray, ...],
    nb: np.ndarray,
    b: tuple[np.ndarray, ...],
) -> tuple[np.ndarray, ...]:
    """Merges (mean, M2, M3, M4) of two disjoint sets with the exact pairwise formulas.

    With ``n = n_a + n_b`` and ``d = mean_b - mean_a`` (Chan, Golub & LeVeque 1979; Pébay 2008,
    "Formulas for robust, one-pass parallel computation of covariances and arbitrary-order
    statistical moments", eqs. 2.1-2.2)::

        mean = mean_a + d n_b / n
        M2 = M2_a + M2_b + d^2 n_a n_b / n
        M3 = M3_a + M3_b + d^3 n_a n_b (n_a - n_b) / n^2 + 3 d (n_a M2_b - n_b M2_a) / n
        M4 = M4_a + M4_b + d^4 n_a n_b (n_a^2 - n_a n_b + n_b^2) / n^3
             + 6 d^2 (n_a^2 M2_b + n_b^2 M2_a) / n^2 + 4 d (n_a M3_b - n_b M3_a) / n

    Every term is a sum of central quantities, so no catastrophic cancellation occurs even for
    data far from zero (mean 1e3, std 1). An empty side returns the other side unchanged, bit for
    bit.

    Args:
        na: counts of the first set, shape (C,).
        a: (mean, M2, M3, M4) of the first set, each shape (C,).
        nb: counts of the second set, shape (C,).
        b: (mean, M2, M3, M4) of the second set.

    Returns:
        (mean, M2, M3, M4) of the union, each shape (C,) float64.
    """
    ma, m2a, m3a, m4a = a
    mb, m2b, m3b, m4b = b
    fa = na.astype(np.float64)
    fb = nb.astype(np.float64)
    n = fa + fb
    with np.errstate(divide="ignore", invalid="ignore"):
        d = mb - ma
        dn = d / n
        mean = ma + dn * fb
        m2 = m2a + m2b + d * dn * fa * fb
        m3 = m3a + m3b + d * dn * dn * fa * fb * (fa - fb) + 3.0 * dn * (fa * m2b - fb * m2a)
        m4 = (
            m4a
            + m4b
            + d * dn * dn * dn * fa * fb * (fa * fa - fa * fb + fb * fb)
            + 6.0 * dn * dn * (fa * fa * m2b + fb * fb * m2a)
            + 4.0 * dn * (fa * m3b - fb * m3a)
        )
    out = []
    for merged, xa, xb in zip((mean, m2, m3, m4), a, b):
        # Exact pass-through where one side is empty (also avoids 0/0 when both are).
        out.append(np.asarray(np.where(nb == 0, xa, np.where(na == 0, xb, merged)), dtype=np.float64))
    return tuple(out)


def central_sums(s1: float, s2: float, s3: float, s4: float, n: int, ref: float) -> tuple[float, float, float, float]:
    """(mean, M2, M3, M4) from the power sums ``S_p = sum (x - ref)^p`` of n values (float64).

    ``M2 = S2 - S1^2/n``, ``M3 = S3 - 3 S1 S2/n + 2 S1^3/n^2``,
    ``M4 = S4 - 4 S1 S3/n + 6 S1^2 S2/n^2 - 3 S1^4/n^3``.
    """
    mean = ref + s1 / n
    m2 = s2 - s1 * s1 / n
    m3 = s3 - 3.0 * s1 * s2 / n + 2.0 * s1**3 / n**2
    m4 = s4 - 4.0 * s1 * s3 / n + 6.0 * s1 * s1 * s2 / n**2 - 3.0 * s1**4 / n**3
    return mean, max(m2, 0.0), m3, max(m4, 0.0)


def float32_moments(x: torch.Tensor, lo: float, hi: float) -> tuple[float, float, float, float] | None:
    """(mean, M2, M3, M4) of finite float32 ``x`` (1-D) with extremes lo, hi, via float32 power sums.

    Returns None for a spread outside [1e-30, 1e30], where float32 power sums could overflow or
    lose everything: the caller takes the float64 path.
    """
    n = x.numel()
    spread = hi - lo
    if spread == 0.0:
        return lo, 0.0, 0.0, 0.0
    if not 1e-30 <= spread <= 1e30:
        return None
    # reference: the float32 mean, kept in [lo, hi] so that |x - ref| <= spread
    ref = (x.sum() / n).clamp_(lo, hi)
    # a power-of-two scale (exact) keeps (x - ref)^4 far from float32 overflow and underflow
    scale = 1.0 if 2.0**-24 <= spread <= 2.0**24 else math.ldexp(1.0, -math.frexp(spread)[1])
    block = min(n, BLOCK32)
    d = torch.empty(block, dtype=torch.float32, device=x.device)
    d2 = torch.empty(block, dtype=torch.float32, device=x.device)
    parts = []
    for start in range(0, n, block):
        c = x[start : start + block]
        dd, dd2 = d[: c.numel()], d2[: c.numel()]
        torch.sub(c, ref, out=dd)
        if scale != 1.0:
            dd.mul_(scale)
        s1 = dd.sum()
        torch.mul(dd, dd, out=dd2)
        s2 = dd2.sum()
        s3 = dd.mul_(dd2).sum()
        s4 = dd2.mul_(dd2).sum()
        parts.append(torch.stack([s1, s2, s3, s4, ref]))
    tot = torch.stack(parts).to(torch.float64)
    s1, s2, s3, s4 = tot[:, :4].sum(0).tolist()
    r = float(tot[0, 4])
    inv = 1.0 / scale
    return central_sums(s1 * inv, s2 * inv**2, s3 * inv**3, s4 * inv**4, n, r)


def chunk_moments(x: torch.Tensor) -> tuple[torch.Tensor | None, dict[str, np.ndarray]]:
    """Per-column count, moments, extremes and non-finite counts of one (N, C) chunk, in float64.

    Non-finite values are counted and excluded from everything else. aminmax is the cheapest
    full pass and doubles as the finiteness check: NaN propagates and infinities show up as
    extremes.

    Returns:
        ``(finite, parts)``: the (N, C) finiteness mask (None when every value is finite) and the
        (C,) numpy arrays ``n, mean, m2, m3, m4, min, max, nan, posinf, neginf``.
    """
    c = x.shape[1]
    lo, hi = torch.aminmax(x, dim=0)
    all_finite = bool(torch.isfinite(lo).all() and torch.isfinite(hi).all())
    x64 = x.to(torch.float64)
    zeros = np.zeros(c, dtype=np.int64)
    counts = {"nan": zeros, "posinf": zeros, "neginf": zeros}
    if all_finite:
        finite = None
        nb = torch.full((c,), x.shape[0], dtype=torch.int64)
        mean = x64.sum(0) / x.shape[0]
        # (N, C) deviations; in place only on our own float64 copy, never on the caller's tensor
        d = x64.sub_(mean) if x64.data_ptr() != x.data_ptr() else x64 - mean
    else:
        finite = torch.isfinite(x)
        counts = {
            "nan": torch.isnan(x).sum(0).cpu().numpy().astype(np.int64),
            "posinf": (x == math.inf).sum(0).cpu().numpy().astype(np.int64),
            "neginf": (x == -math.inf).sum(0).cpu().numpy().astype(np.int64),
        }
        nb_dev = finite.sum(0)
        x0 = torch.where(finite, x64, 0.0)
        mean = x0.sum(0) / nb_dev.clamp_min(1)
        d = torch.where(finite, x0 - mean, 0.0)
        lo = torch.where(finite, x64, math.inf).amin(0)
        hi = torch.where(finite, x64, -math.inf).amax(0)
        nb = nb_dev.cpu()
    if c == 1:
        flat = d.reshape(-1)
        d2 = flat * flat
        sums = torch.stack([d2.sum(), torch.dot(d2, flat), torch.dot(d2, d2)]).reshape(3, 1)
    else:
        d2 = d * d
        sums = torch.stack([d2.sum(0), (d2 * d).sum(0), (d2 * d2).sum(0)])
    del d, d2
    small = torch.cat(
        [mean.reshape(1, c), sums, lo.to(torch.float64).reshape(1, c), hi.to(torch.float64).reshape(1, c)]
    ).cpu().numpy()
    parts = dict(n=nb.numpy().astype(np.int64), mean=small[0], m2=small[1], m3=small[2], m4=small[3],
                 min=small[4], max=small[5], **counts)
    return finite, parts

r"""Do the columns of a sample come from different distributions? Kruskal-Wallis and Brown-Forsythe.

Both take an ``(N, C)`` array, one group per column (a layer's channels, each with N samples), and
compute the statistic in a few vectorised passes, where ``scipy.stats.kruskal(*cols)`` and
``scipy.stats.levene(*cols, center="median")`` walk the C groups in Python (a transformer layer has
thousands of channels). The tests compare them with scipy in float64.

Kruskal-Wallis (medians differ): with ``r`` the ranks of all ``n = N C`` values (ties averaged),
``R_j`` the rank sum of column j::

    H = [12 / (n (n + 1)) sum_j R_j^2 / N - 3 (n + 1)] / [1 - sum_t (t^3 - t) / (n^3 - n)]

over the tie groups t; ``p = chi2.sf(H, C - 1)``.

Brown-Forsythe (variances differ; Levene's test about the medians): with
``z_ij = |x_ij - median_j|``, ``zbar_j`` the column means of z and ``zbar`` the grand mean::

    W = (n - C) / (C - 1) * N sum_j (zbar_j - zbar)^2 / sum_ij (z_ij - zbar_j)^2

``p = f.sf(W, C - 1, n - C)``.
"""

from __future__ import annotations

import numpy as np
from scipy import special
from scipy.stats import rankdata

__all__ = ["brown_forsythe", "kruskal_wallis"]


def kruskal_wallis(x: np.ndarray) -> tuple[float, float]:
    """Kruskal-Wallis H test over the columns of ``x`` (N, C): ``(H, p)``; NaN if all values tie."""
    x = np.asarray(x, dtype=np.float64)
    N, C = x.shape
    n = N * C
    flat = x.reshape(-1)
    ranks = rankdata(flat).reshape(N, C)
    _, counts = np.unique(flat, return_counts=True)
    ties = 1.0 - float(np.sum(counts.astype(np.float64) ** 3 - counts)) / (n**3 - n)
    if ties == 0:
        return float("nan"), float("nan")
    rsum = ranks.sum(axis=0)
    h = (12.0 / (n * (n + 1)) * float(np.sum(rsum**2)) / N - 3.0 * (n + 1)) / ties
    return h, float(special.chdtrc(C - 1, h))


def brown_forsythe(x: np.ndarray) -> tuple[float, float]:
    """Brown-Forsythe (Levene, centre = median) test over the columns of ``x`` (N, C): ``(W, p)``."""
    x = np.asarray(x, dtype=np.float64)
    N, C = x.shape
    n = N * C
    z = np.abs(x - np.median(x, axis=0))
    zbar_j = z.mean(axis=0)
    between = N * float(np.sum((zbar_j - zbar_j.mean()) ** 2))
    within = float(np.sum((z - zbar_j) ** 2))
    w = (n - C) / (C - 1) * between / within if within > 0 else float("inf")
    return w, float(special.fdtrc(C - 1, n - C, w))

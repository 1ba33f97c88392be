"""The vectorised Kruskal-Wallis and Brown-Forsythe tests against scipy's group-by-group ones."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from nndist.stats.heterogeneity import brown_forsythe, kruskal_wallis


@pytest.mark.parametrize("n,c,kind", [(5, 2, "normal"), (40, 7, "lognormal"), (200, 64, "normal"), (30, 500, "ties"),
                                      (64, 3, "shifted")])
def test_against_scipy(n: int, c: int, kind: str) -> None:
    rng = np.random.default_rng(n * 1000 + c)
    if kind == "ties":  # many tied values (ReLU-like zeros and a coarse grid)
        x = np.maximum(np.round(rng.normal(0, 1, (n, c)), 1), 0)
    elif kind == "shifted":  # columns that really differ
        x = rng.normal(0, 1, (n, c)) * np.arange(1, c + 1) + np.arange(c)
    else:
        x = getattr(rng, kind)(0, 1, (n, c))
    cols = [x[:, j] for j in range(c)]
    h, hp = kruskal_wallis(x)
    ref = scipy.stats.kruskal(*cols)
    np.testing.assert_allclose([h, hp], [ref.statistic, ref.pvalue], rtol=1e-10, atol=1e-300)
    w, wp = brown_forsythe(x)
    ref = scipy.stats.levene(*cols, center="median")
    np.testing.assert_allclose([w, wp], [ref.statistic, ref.pvalue], rtol=1e-10, atol=1e-300)


def test_all_tied_is_nan() -> None:
    h, p = kruskal_wallis(np.ones((4, 3)))
    assert np.isnan(h) and np.isnan(p)

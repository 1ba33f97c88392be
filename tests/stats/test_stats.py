"""Tests of nndist.stats against numpy/scipy, merge == one-shot, sketch accuracy and packing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nndist.stats import kernels
from nndist.errors import NndistError
from nndist.stats import (
    SUMMARY_COLUMNS,
    Summary,
    SummaryError,
    ks_distance,
    pack,
    summarize,
    unpack,
    wasserstein,
)

ALPHA = 0.01
RTOL = 1e-9


def _sample(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.0, 1.0, n)
    if kind == "uniform":
        return rng.uniform(-2.0, 3.0, n)
    if kind == "lognormal":
        return rng.lognormal(0.0, 1.0, n)
    if kind == "zeros":  # exact zeros mixed into signed values (ReLU-like features, pruned weights)
        x = rng.normal(0.5, 1.0, n)
        x[rng.random(n) < 0.3] = 0.0
        return x
    if kind == "negative":
        return -rng.gamma(2.0, 3.0, n)
    if kind == "offset":  # far from zero relative to the spread: tests the two-pass/merge stability
        return rng.normal(1e3, 1.0, n)
    raise AssertionError(kind)


KINDS = ["normal", "uniform", "lognormal", "zeros", "negative", "offset"]


def _moments_close(s: Summary, x: np.ndarray, rtol: float = RTOL) -> None:
    assert s.n == x.size
    np.testing.assert_allclose(s.mean, x.mean(), rtol=rtol, atol=0)
    np.testing.assert_allclose(s.std, np.std(x), rtol=rtol, atol=0)
    np.testing.assert_allclose(s.var, np.var(x), rtol=rtol, atol=0)
    assert s.min == x.min() and s.max == x.max()
    # skew of a symmetric sample is a small difference of large terms; its absolute error is
    # bounded by the rounding of the third moment, ~1e-13 at these sizes.
    np.testing.assert_allclose(s.skew, scipy.stats.skew(x, bias=True), rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(
        s.kurtosis, scipy.stats.kurtosis(x, fisher=True, bias=True), rtol=rtol, atol=1e-12
    )


# ---------------------------------------------------------------------- moments
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("n", [3, 17, 1000, 30_000])
def test_moments_match_numpy_scipy(kind: str, n: int) -> None:
    x = _sample(kind, n, np.random.default_rng(n))
    s = Summary().update(torch.from_numpy(x))
    _moments_close(s, x)
    assert s.nonfinite == 0


def test_numpy_and_torch_inputs_agree_and_input_untouched() -> None:
    x = np.random.default_rng(0).normal(3.0, 2.0, (40, 50))
    keep = x.copy()
    t = torch.from_numpy(x)
    a = Summary().update(x)
    b = Summary().update(t)
    assert np.array_equal(x, keep) and torch.equal(t, torch.from_numpy(keep))
    assert a.mean == b.mean and a.std == b.std
    assert np.array_equal(a.histogram()[1], b.histogram()[1])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.int32, torch.bool])
def test_other_dtypes(dtype: torch.dtype) -> None:
    x = torch.arange(-50, 50).reshape(10, 10).to(dtype)
    ref = x.double().numpy().ravel()
    s = summarize(x)
    np.testing.assert_allclose(s.mean, ref.mean(), rtol=RTOL, atol=1e-15)
    np.testing.assert_allclose(s.std, ref.std(), rtol=RTOL)
    assert s.histogram()[1].sum() == ref.size


def _moments_close_f32(s: Summary, x: np.ndarray) -> None:
    """The documented float32-path guarantee, against float64 numpy/scipy on the same values."""
    assert s.n == x.size
    sd = np.std(x)
    assert abs(s.mean - x.mean()) <= 1e-6 * sd
    np.testing.assert_allclose(s.std, sd, rtol=1e-6, atol=0)
    np.testing.assert_allclose(s.var, np.var(x), rtol=1e-6, atol=0)
    assert s.min == x.min() and s.max == x.max()
    sk, ku = scipy.stats.skew(x, bias=True), scipy.stats.kurtosis(x, fisher=True, bias=True)
    assert abs(s.skew - sk) <= 1e-5 * (1 + abs(sk))
    assert abs(s.kurtosis - ku) <= 1e-5 * (1 + abs(ku))


def test_float32_large_batch_spans_chunks() -> None:
    x = torch.randn(3_000_000, generator=torch.Generator().manual_seed(1)) * 2 + 5
    s = Summary().update(x)
    ref = x.double().numpy()
    _moments_close_f32(s, ref)
    assert s.histogram()[1].sum() == x.numel()


@pytest.mark.parametrize("compiled", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("kind", KINDS + ["huge", "tiny", "relu"])
def test_float32_fast_path_accuracy(kind: str, compiled: bool, monkeypatch) -> None:  # noqa: ANN001
    """Both float32 paths: the compiled CPU kernel and the torch passes (other devices)."""
    monkeypatch.setattr(kernels, "AVAILABLE", compiled and kernels.AVAILABLE)
    rng = np.random.default_rng(5)
    n = 200_000
    if kind == "huge":  # scaled by a power of two inside
        x = rng.normal(1e25, 3e24, n)
    elif kind == "tiny":
        x = rng.normal(1e-20, 1e-21, n)
    elif kind == "relu":
        x = np.maximum(rng.normal(0, 1, n), 0)
    else:
        x = _sample(kind, n, rng)
    x32 = torch.from_numpy(x).float()
    s = Summary().update(x32)
    ref = x32.double().numpy()
    _moments_close_f32(s, ref)
    # the sketch of the float32 path equals the float64 path's on the same values, bucket for bucket
    s64 = Summary().update(x32.double())
    _assert_same_counts(s, s64)
    streamed = Summary()
    for chunk in x32.split(30_001):
        streamed.update(chunk)
    _assert_same_counts(s, streamed)
    _moments_close_f32(streamed, ref)


def test_keys_are_exact_bit_buckets() -> None:
    rng = np.random.default_rng(8)
    x = rng.lognormal(0, 4, 20_000)
    for s in (summarize(x), summarize(torch.from_numpy(x).float().double())):
        edges, counts = s.histogram()
        # positive buckets are [lo, hi): np.histogram's convention, so equal bin for bin
        ref, _ = np.histogram(x if s is None else x, bins=edges)
        edges_f32 = edges[1:].astype(np.float32).astype(np.float64)
        assert np.array_equal(edges[1:], edges_f32)  # every edge but min_abs is a float32
        assert np.all(np.diff(edges) > 0)
        ratio = edges[2:] / edges[1:-1]
        assert np.all(ratio <= s.gamma * (1 + 1e-15)) and s.gamma == 1 + 2.0**-s.mantissa_bits
    s = summarize(x)
    ref, _ = np.histogram(x, bins=s.histogram()[0])
    assert np.array_equal(ref, s.histogram()[1])
    # the same values, negated: mirrored buckets (lo, hi]
    neg = summarize(-x)
    assert np.array_equal(neg.histogram()[1], s.histogram()[1][::-1])
    assert np.array_equal(neg.histogram()[0], -s.histogram()[0][::-1])
    # values exactly on an edge start their bucket
    e = s.histogram()[0][5]
    one = summarize([e])
    assert one.histogram()[0][0] == e


def test_float32_and_float64_share_buckets_near_min_abs_and_beyond_float32() -> None:
    min_abs = 1e-6  # not a bucket edge: its bucket is split at min_abs
    s0 = Summary(min_abs=min_abs)
    assert s0._straddle
    base = np.float32(min_abs)
    near = np.array([np.nextafter(base, np.float32(0)), base, np.nextafter(base, np.float32(1))], dtype=np.float32)
    vals32 = np.concatenate([near, -near, np.float32(min_abs) * np.float32(1.005) ** np.arange(-20, 20, dtype=np.float32)])
    a = Summary(min_abs=min_abs).update(torch.from_numpy(vals32))
    b = Summary(min_abs=min_abs).update(vals32.astype(np.float64))
    c = Summary(3, min_abs=min_abs).update(np.resize(vals32, (vals32.size // 3) * 3).reshape(-1, 3))
    _assert_same_counts(a, b)
    v64 = vals32.astype(np.float64)
    expect_zero = int(np.sum(np.abs(v64) < min_abs))
    for s in (a, b):
        edges, counts = s.histogram()
        izero = int(np.flatnonzero(edges == -min_abs)[0])
        assert counts[izero] == expect_zero
        assert s.quantile(0.5) == pytest.approx(np.median(v64), rel=s.bucket_accuracy, abs=min_abs)
    assert c.histogram()[1].sum() == c.n.sum()
    # float64 values beyond float32's range get their own (larger) keys, exactly
    big = np.array([1e60, -3e50, 5e38, 1.0])
    sb = summarize(big)
    edges, counts = sb.histogram()
    idx = np.searchsorted(edges, big, side="right") - 1
    for v, i in zip(big, idx):
        assert edges[i] <= v < edges[i + 1] or edges[i] < v <= edges[i + 1]
    assert sb.quantile(1.0) == 1e60 and sb.n == 4
    np.testing.assert_allclose(sb.quantile(0.0), -3e50)


def test_nan_in_float32_batch_takes_masked_path() -> None:
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(3))
    y = x.clone()
    y[::7] = math.nan
    y[1] = math.inf
    s = summarize(y)
    finite = y[torch.isfinite(y)]
    ref = summarize(finite)
    _assert_same_counts(Summary().merge(ref), Summary().merge(ref))
    assert s.nan == len(range(0, 10_000, 7)) and s.posinf == 1
    assert np.array_equal(s.histogram()[1], ref.histogram()[1])
    _moments_close_f32(s, finite.double().numpy())
    # non-contiguous float32 input
    t = torch.randn(64, 300).t()
    assert np.array_equal(summarize(t).histogram()[1], summarize(t.contiguous().double()).histogram()[1])
    strided = torch.randn(5000)[::3]
    assert np.array_equal(summarize(strided).histogram()[1], summarize(strided.double()).histogram()[1])


def test_constant_and_tiny_inputs() -> None:
    s = summarize(torch.full((100,), 0.3))
    assert s.std == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(s.skew) and math.isnan(s.kurtosis) and math.isnan(s.ks_normal())
    one = summarize([2.5])
    assert one.n == 1 and one.mean == 2.5 and one.std == 0 and one.quantile(0.5) == 2.5
    zeros = summarize(np.zeros(10))
    assert zeros.quantile(0.5) == 0.0 and zeros.histogram()[1].tolist() == [10]
    e, _ = zeros.histogram()
    assert e.tolist() == [-1e-12, 1e-12]


def test_empty_summary_gives_nan_not_errors() -> None:
    s = Summary()
    s.update(torch.zeros(0))
    assert s.n == 0
    for value in (s.mean, s.std, s.min, s.max, s.skew, s.kurtosis, s.ks_normal(), s.quantile(0.5)):
        assert math.isnan(value)
    assert math.isnan(s.cdf(0.0))
    edges, counts = s.histogram()
    assert edges.size == 0 and counts.size == 0
    (row,) = s.rows()
    assert row["n"] == 0 and row["nonfinite"] == 0 and math.isnan(row["q50"])
    assert math.isnan(wasserstein(s, summarize([1.0]))) and math.isnan(ks_distance(s, s))


# ---------------------------------------------------------------------- merging
def _random_chunks(x: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    k = int(rng.integers(1, 8))
    cuts = np.sort(rng.integers(0, x.shape[0] + 1, k - 1))  # repeated cuts give empty chunks
    return np.split(x, cuts)


def _assert_same_counts(a: Summary, b: Summary) -> None:
    for name in ("n", "nan", "posinf", "neginf", "nonfinite"):
        assert np.array_equal(getattr(a, name), getattr(b, name)), name
    ea, ca = a.histogram()
    eb, cb = b.histogram()
    assert np.array_equal(ea, eb) and np.array_equal(ca, cb)
    assert np.array_equal(a.min, b.min, equal_nan=True) and np.array_equal(a.max, b.max, equal_nan=True)


def _assert_same_moments(a: Summary, b: Summary, rtol: float = RTOL) -> None:
    for name in ("mean", "std", "skew", "kurtosis"):
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=rtol, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("seed", range(4))
def test_merge_random_splits_equals_one_shot(kind: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = _sample(kind, int(rng.integers(1, 5000)), rng)
    x[rng.random(x.size) < 0.01] = rng.choice([np.nan, np.inf, -np.inf])
    one = Summary().update(x)
    chunks = _random_chunks(x, rng)
    merged = Summary()
    for chunk in chunks:
        merged.merge(Summary().update(chunk))
    streamed = Summary()
    for chunk in chunks:
        streamed.update(chunk)
    for other in (merged, streamed):
        _assert_same_counts(one, other)
        _assert_same_moments(one, other)
    finite = x[np.isfinite(x)]
    _moments_close(merged, finite)


def test_merge_different_key_ranges_and_copy_independent() -> None:
    small = summarize(np.linspace(1e-6, 1e-5, 100))
    big = summarize(-np.linspace(1e5, 1e6, 100))
    both = small.copy().merge(big)
    one = summarize(np.concatenate([np.linspace(1e-6, 1e-5, 100), -np.linspace(1e5, 1e6, 100)]))
    _assert_same_counts(both, one)
    _assert_same_moments(both, one)
    assert small.n == 100  # copy() is independent
    assert both.merge(Summary()) is both and both.n == 200


# ---------------------------------------------------------------------- non-finite values
def test_nonfinite_counted_and_excluded() -> None:
    x = np.array([1.0, np.nan, 2.0, np.inf, -np.inf, np.nan, 4.0, -np.inf])
    s = summarize(torch.tensor(x, dtype=torch.float32))
    assert (s.n, s.nan, s.posinf, s.neginf, s.nonfinite) == (3, 2, 1, 2, 5)
    np.testing.assert_allclose(s.mean, 7 / 3, rtol=RTOL)
    np.testing.assert_allclose(s.std, np.std([1.0, 2.0, 4.0]), rtol=RTOL)
    assert (s.min, s.max) == (1.0, 4.0)
    assert s.histogram()[1].sum() == 3
    assert s.rows()[0]["nonfinite"] == 5
    all_bad = summarize([np.nan, np.inf])
    assert all_bad.n == 0 and all_bad.nonfinite == 2 and math.isnan(all_bad.mean)


def test_nonfinite_per_channel() -> None:
    x = torch.randn(200, 3, dtype=torch.float64)
    x[5, 1] = math.nan
    x[7, 1] = math.inf
    x[:, 2] = math.nan
    s = Summary(3).update(x)
    assert s.n.tolist() == [200, 198, 0] and s.nan.tolist() == [0, 1, 200] and s.posinf.tolist() == [0, 1, 0]
    col1 = x[:, 1].numpy()
    np.testing.assert_allclose(s.mean[1], col1[np.isfinite(col1)].mean(), rtol=RTOL)
    assert math.isnan(s.mean[2]) and math.isnan(s.quantile(0.5)[2])


# ---------------------------------------------------------------------- sketch accuracy
@pytest.mark.parametrize("kind", KINDS)
def test_quantiles_within_relative_accuracy(kind: str) -> None:
    rng = np.random.default_rng(7)
    x = _sample(kind, 20_001, rng)
    s = Summary(relative_accuracy=ALPHA).update(x)
    xs = np.sort(x)
    qs = np.linspace(0.0, 1.0, 101)
    est = s.quantile(qs)
    assert est.shape == (101,)
    rank = qs * (x.size - 1)
    lo, hi = xs[np.floor(rank).astype(int)], xs[np.ceil(rank).astype(int)]
    # within alpha of the interval between the floor and ceil order statistics (and the sketch
    # actually promises alpha of the floor one); the 1e-12 covers log rounding and min_abs zeros
    assert np.all(est >= np.minimum(lo, hi) - ALPHA * np.abs(lo) - 1e-12)
    assert np.all(est <= np.maximum(lo, hi) + ALPHA * np.abs(hi) + 1e-12)
    assert np.all(np.abs(est - lo) <= ALPHA * np.abs(lo) * (1 + 1e-9) + 1e-12)
    # and the sharper bound the bit buckets give: 1 / (2^(m+1) + 1) = 1/129 at alpha = 0.01
    assert s.bucket_accuracy == 1 / 129 and s.mantissa_bits == 6
    assert np.all(np.abs(est - lo) <= s.bucket_accuracy * np.abs(lo) * (1 + 1e-12) + 1e-12)
    f32 = Summary().update(torch.from_numpy(xs).float())
    lo32 = torch.from_numpy(xs).float().double().numpy()[np.floor(rank).astype(int)]
    assert np.all(np.abs(f32.quantile(qs) - lo32) <= f32.bucket_accuracy * np.abs(lo32) * (1 + 1e-12) + 1e-12)
    assert est[0] == x.min() and est[-1] == x.max()
    assert isinstance(s.quantile(0.5), np.floating)


def test_histogram_counts_and_global_edges() -> None:
    rng = np.random.default_rng(3)
    x = _sample("zeros", 5000, rng)
    s = summarize(x)
    edges, counts = s.histogram()
    assert counts.sum() == s.n and edges.size == counts.size + 1 and np.all(np.diff(edges) > 0)
    assert counts[0] > 0 and counts[-1] > 0
    ref, _ = np.histogram(x, bins=edges)  # np.histogram bins are [l, r); equal away from edges
    assert np.abs(ref - counts).sum() <= 2
    # a second summary of a sub-range shares every edge it has
    sub_edges, _ = summarize(x[(x > 0.1) & (x < 2)]).histogram()
    start = int(np.flatnonzero(edges == sub_edges[0])[0])
    assert np.array_equal(edges[start : start + sub_edges.size], sub_edges)


def test_cdf_exact_at_edges() -> None:
    x = np.random.default_rng(4).lognormal(0, 2, 3000) * np.random.default_rng(5).choice([-1, 1], 3000)
    s = summarize(x)
    edges, _ = s.histogram()
    # inner edges only: nothing lies exactly on them, so both edge conventions agree
    inner = edges[1:-1]
    exact = (x[None, :] < inner[:, None]).mean(axis=1)
    np.testing.assert_allclose(s.cdf(inner), exact, atol=1e-12)
    assert s.cdf(edges[0] - 1) == 0 and s.cdf(edges[-1] + 1) == 1
    assert s.cdf(np.zeros((2, 3))).shape == (2, 3)


@pytest.mark.parametrize("kind", ["normal", "uniform"])
def test_ks_normal_matches_scipy(kind: str) -> None:
    x = _sample(kind, 20_000, np.random.default_rng(11))
    s = summarize(x)
    ref = scipy.stats.kstest(x, "norm", args=(x.mean(), x.std())).statistic
    lower, upper = s.ks_normal_bounds()
    # the edge value is a lower bound and the bracket holds the exact statistic; at alpha=0.01
    # one bucket holds < 1% of a unit-variance sample's mass, so 0.02 is a safe tolerance
    assert lower <= ref + 1e-9 <= upper + 2e-9
    assert abs(s.ks_normal() - ref) < 0.02


def test_wasserstein_and_ks_distance_match_scipy() -> None:
    rng = np.random.default_rng(12)
    pairs = [
        (rng.normal(0, 1, 20_000), rng.normal(0.5, 1.5, 15_000)),
        (rng.lognormal(0, 1, 20_000), rng.lognormal(0.2, 0.8, 10_000)),
        (rng.uniform(-1, 1, 5000), rng.normal(0, 0.3, 8000)),
    ]
    for a, b in pairs:
        sa, sb = summarize(a), summarize(b)
        ref_w = scipy.stats.wasserstein_distance(a, b)
        assert abs(wasserstein(sa, sb) - ref_w) <= 0.03 * ref_w
        assert wasserstein(sa, sa) == 0.0
        ref_ks = scipy.stats.ks_2samp(a, b).statistic
        ks = ks_distance(sa, sb)
        assert ks <= ref_ks + 1e-12 and ref_ks - ks < 0.02


# ---------------------------------------------------------------------- channels
def test_channels_equal_separate_scalar_summaries() -> None:
    rng = np.random.default_rng(21)
    cols = [_sample(k, 3000, rng) for k in KINDS]
    x = np.stack(cols, axis=1)  # (N, C)
    s = Summary(len(cols))
    for chunk in _random_chunks(x, rng):
        s.update(torch.from_numpy(chunk))
    qs = [0.01, 0.5, 0.9]
    all_edges, all_counts = s.histogram()
    assert all_counts.shape[0] == len(cols) and np.array_equal(all_counts.sum(axis=1), s.n)
    rows = s.rows()
    for c, col in enumerate(cols):
        ref = summarize(col)
        for name in ("n", "min", "max", "nonfinite"):
            assert getattr(s, name)[c] == getattr(ref, name)
        for name in ("mean", "std", "skew", "kurtosis"):
            np.testing.assert_allclose(getattr(s, name)[c], getattr(ref, name), rtol=RTOL, atol=1e-12)
        e, cnt = s.histogram(c)
        er, cr = ref.histogram()
        assert np.array_equal(e, er) and np.array_equal(cnt, cr)
        assert np.array_equal(s.quantile(qs)[c], ref.quantile(qs))
        # mean/std differ by rounding (merged chunks vs one shot); for the mean-1e3 sample that
        # moves (e - mean) / std by ~1e-13 at the edges, hence the absolute tolerance
        np.testing.assert_allclose(s.ks_normal()[c], ref.ks_normal(), rtol=1e-12, atol=1e-12)
        assert rows[c].keys() == ref.rows()[0].keys()
    assert s.quantile(0.5).shape == (len(cols),) and s.cdf([0.0, 1.0]).shape == (len(cols), 2)
    sep = [summarize(col) for col in cols]
    two = Summary(len(cols)).update(x[:, ::-1].copy())
    np.testing.assert_allclose(wasserstein(s, two)[0], wasserstein(sep[0], sep[-1]), rtol=1e-12)


def test_rows_columns() -> None:
    s = summarize(torch.randn(1000))
    (row,) = s.rows()
    assert tuple(row) == SUMMARY_COLUMNS
    assert isinstance(row["n"], int) and isinstance(row["nonfinite"], int)
    assert all(isinstance(row[k], float) for k in SUMMARY_COLUMNS if k not in ("n", "nonfinite"))
    assert row["q01"] <= row["q05"] <= row["q25"] <= row["q50"] <= row["q75"] <= row["q95"] <= row["q99"]
    assert len(Summary(4).update(torch.randn(10, 4)).rows()) == 4


# ---------------------------------------------------------------------- state and packing
def _assert_identical(a: Summary, b: Summary) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        if isinstance(sa[k], np.ndarray):
            assert sa[k].dtype == sb[k].dtype and np.array_equal(sa[k], sb[k], equal_nan=True), k
        else:
            assert sa[k] == sb[k], k


def _examples() -> list[Summary]:
    rng = np.random.default_rng(31)
    x = rng.normal(0, 1, (500, 3))
    x[0, 0] = np.nan
    return [
        summarize(rng.lognormal(0, 3, 1000) - 5),
        Summary(),
        Summary(3).update(x),
        summarize(np.zeros(4), relative_accuracy=0.05, min_abs=1e-6),
    ]


def test_state_dict_round_trip_exact() -> None:
    for s in _examples():
        state = s.state_dict()
        assert all(isinstance(v, (int, float, str, type(None), np.ndarray)) for v in state.values())
        back = Summary.from_state_dict(state)
        _assert_identical(s, back)
        for r1, r2 in zip(back.rows(), s.rows(), strict=True):
            assert r1.keys() == r2.keys()
            assert all(r1[k] == r2[k] or (math.isnan(r1[k]) and math.isnan(r2[k])) for k in r1)
    with pytest.raises(SummaryError, match="not a Summary state"):
        Summary.from_state_dict({"format": "other"})
    old = _examples()[0].state_dict()
    old["version"] = 1
    with pytest.raises(SummaryError, match="version 1 is not supported"):
        Summary.from_state_dict(old)


def test_pack_unpack_round_trip_exact() -> None:
    items = _examples()
    flat = pack(items)
    assert flat.dtype == torch.float64 and flat.ndim == 1
    for a, b in zip(items, unpack(flat), strict=True):
        _assert_identical(a, b)
    padded = pack(items, length=flat.numel() + 17)
    assert padded.numel() == flat.numel() + 17
    for a, b in zip(items, unpack(padded), strict=True):
        _assert_identical(a, b)
    _assert_identical(items[0], Summary.from_tensor(items[0].to_tensor()))
    with pytest.raises(SummaryError, match="more than length"):
        pack(items, length=10)
    with pytest.raises(SummaryError, match="not a packed"):
        unpack(torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(SummaryError, match="one packed summary"):
        Summary.from_tensor(flat)


def test_all_reduce_single_process_gloo(tmp_path) -> None:  # noqa: ANN001
    import torch.distributed as dist

    from nndist.stats import all_reduce

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        items = _examples()
        for a, b in zip(items, all_reduce(items), strict=True):
            _assert_identical(a, b)
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------------- errors
def test_clear_errors() -> None:
    with pytest.raises(SummaryError, match="relative_accuracy"):
        Summary(relative_accuracy=0.01).merge(Summary(relative_accuracy=0.02))
    with pytest.raises(SummaryError, match="min_abs"):
        Summary(min_abs=1e-12).merge(Summary(min_abs=1e-9))
    with pytest.raises(SummaryError, match="channels"):
        Summary(3).merge(Summary(4))
    with pytest.raises(SummaryError, match="channels"):
        Summary().merge(Summary(1))
    with pytest.raises(SummaryError, match=r"expects shape \(N, 3\)"):
        Summary(3).update(torch.zeros(10, 4))
    with pytest.raises(SummaryError, match=r"expects shape \(N, 3\)"):
        Summary(3).update(torch.zeros(3))
    with pytest.raises(SummaryError, match="relative_accuracy"):
        Summary(relative_accuracy=1.5)
    with pytest.raises(SummaryError, match="channels"):
        Summary(0)
    with pytest.raises(SummaryError, match="min_abs must be >= 2"):
        Summary(min_abs=1e-40)
    with pytest.raises(SummaryError, match="relative_accuracy must be >="):
        Summary(relative_accuracy=1e-9)
    with pytest.raises(SummaryError, match="quantile"):
        summarize([1.0]).quantile(1.5)
    with pytest.raises(SummaryError, match="complex"):
        summarize(torch.zeros(3, dtype=torch.complex64))
    with pytest.raises(SummaryError, match="different bucket edges"):
        wasserstein(Summary(), Summary(relative_accuracy=0.1))
    # catchable as the package's user error and as ValueError
    assert issubclass(SummaryError, NndistError) and issubclass(SummaryError, ValueError)


# ---------------------------------------------------------------------- properties
_values = st.lists(
    st.one_of(
        st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
        st.sampled_from([0.0, -0.0, 1e-15, math.nan, math.inf, -math.inf]),
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=_values, cuts=st.lists(st.integers(0, 60), max_size=5), alpha=st.sampled_from([0.01, 0.05]))
def test_property_merge_equals_one_shot(values: list[float], cuts: list[int], alpha: float) -> None:
    x = np.array(values, dtype=np.float64)
    one = Summary(relative_accuracy=alpha).update(x)
    merged = Summary(relative_accuracy=alpha)
    for chunk in np.split(x, sorted(min(c, x.size) for c in cuts)):
        merged.merge(Summary(relative_accuracy=alpha).update(chunk))
    _assert_same_counts(one, merged)
    finite = x[np.isfinite(x)]
    if finite.size:
        scale = np.abs(finite - finite.mean()).max()
        for p, name in ((2, "_m2"), (3, "_m3"), (4, "_m4")):
            # moment sums of cancelling terms: compare against the size of their terms
            tol = 1e-9 * finite.size * scale**p + 1e-300
            assert abs(getattr(one, name)[0] - getattr(merged, name)[0]) <= tol
        np.testing.assert_allclose(merged.mean, finite.mean(), rtol=1e-9, atol=1e-9 * scale)


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 30),
    channels=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    cut=st.integers(0, 30),
)
def test_property_channels_merge(rows: int, channels: int, seed: int, cut: int) -> None:
    x = np.random.default_rng(seed).standard_cauchy((rows, channels))
    one = Summary(channels).update(x)
    merged = Summary(channels).update(x[:cut]).merge(Summary(channels).update(x[cut:]))
    _assert_same_counts(one, merged)
    assert np.array_equal(one.histogram()[1], merged.histogram()[1])


# ---------------------------------------------------------------------- device
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    x = torch.randn(100_000, 8, dtype=torch.float64)
    cpu = Summary(8).update(x)
    gpu = Summary(8).update(x.cuda())
    _assert_same_counts(cpu, gpu)
    _assert_same_moments(cpu, gpu, rtol=1e-12)


@pytest.mark.parametrize("n", [1, 2, 3, 4095, 4096])
def test_update_leaves_the_input_unchanged(n: int) -> None:
    """Every path reads its input only (a one-element float32 tensor once had its bits shifted in place)."""
    for dtype in (torch.float32, torch.float64, torch.float16):
        x = torch.linspace(-1.5, 2.5, n, dtype=dtype) + 0.3
        before = x.clone()
        s = Summary().update(x)
        assert torch.equal(x, before), dtype
        assert s.n == n
    p = torch.nn.Parameter(torch.tensor([0.3]))
    Summary().update(p)
    assert p.item() == pytest.approx(0.3)

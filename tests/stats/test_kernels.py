"""The compiled Summary kernel against its literal twins: numpy in float64 and the torch path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nndist.stats import kernels
from nndist.stats import Summary
from test_stats import KINDS, _assert_same_counts, _moments_close, _sample

pytestmark = pytest.mark.skipif(not kernels.AVAILABLE, reason="numba is not installed")


def _data(kind: str, n: int = 150_000) -> np.ndarray:
    rng = np.random.default_rng(11)
    if kind == "sorted":  # the worst order for a shift taken from the first values
        return np.sort(rng.lognormal(0, 2, n))
    if kind == "subnormal":  # float32 subnormals and exact zeros
        return rng.normal(0, 1e-39, n) * (rng.random(n) < 0.7)
    if kind == "wide":  # spread beyond 1e30: the torch float32 path hands this to float64
        return rng.normal(0, 1e33, n)
    if kind == "narrow":  # spread below 1e-30
        return rng.normal(2e-32, 1e-32, n)
    if kind == "constant":
        return np.full(n, 0.3)
    return _sample(kind, n, rng)


ALL = KINDS + ["sorted", "subnormal", "wide", "narrow", "constant"]


@pytest.mark.parametrize("lanes_min", [kernels.LANES_MIN, 1], ids=["one-counter-set", "counter-sets"])
@pytest.mark.parametrize("kind", ALL)
def test_kernel_sums_and_counts_equal_the_literal_computation(kind: str, lanes_min: int, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(kernels, "LANES_MIN", lanes_min)
    assert kernels.lanes_for(10**5) == (1 if lanes_min > 10**5 else kernels.LANES)
    x = _data(kind).astype(np.float32)[:149_999]  # not a multiple of the counter sets
    m = 6
    sums, ref, lo, hi, counts = kernels.power_sums_and_counts(x, 23 - m, 9 + m)
    keys = (x.view(np.int32) >> (23 - m)) & ((1 << (9 + m)) - 1)
    assert np.array_equal(counts, np.bincount(keys, minlength=1 << (9 + m)))
    assert lo == x.min() and hi == x.max()
    d = x.astype(np.float64) - ref
    for p in range(1, 5):
        literal = np.sum(d**p)
        np.testing.assert_allclose(sums[p - 1], literal, rtol=1e-12, atol=1e-12 * np.sum(np.abs(d) ** p))


@pytest.mark.parametrize("kind", ALL)
def test_kernel_summary_equals_float64_summary(kind: str, monkeypatch) -> None:  # noqa: ANN001
    """Same buckets as the float64 path bucket for bucket; moments as accurate as float64."""
    x32 = torch.from_numpy(_data(kind)).float()
    ref = x32.double().numpy()
    fast = Summary().update(x32)
    _assert_same_counts(fast, Summary().update(x32.double()))
    if kind != "constant":
        _moments_close(fast, ref, rtol=1e-9)
    else:
        assert fast.mean == ref[0] and fast.std == 0.0
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    _assert_same_counts(fast, Summary().update(x32))  # the torch float32 path: the same counts


def test_kernel_is_used_and_result_does_not_depend_on_thread_count(monkeypatch) -> None:  # noqa: ANN001
    x = torch.randn(700_000, generator=torch.Generator().manual_seed(0)) * 3 + 1
    one = kernels.power_sums_and_counts(x.numpy(), 17, 15, threads=1)
    two = kernels.power_sums_and_counts(x.numpy(), 17, 15, threads=2)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)  # bit for bit
    calls = []
    real = kernels.power_sums_and_counts
    monkeypatch.setattr(kernels, "power_sums_and_counts", lambda *a: calls.append(1) or real(*a))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the kernel follows torch's thread count (torchrun sets it to 1)
        single = Summary().update(x).to_tensor().numpy()
    finally:
        torch.set_num_threads(threads)
    many = Summary().update(x).to_tensor().numpy()
    assert len(calls) == 2
    assert np.array_equal(single, many, equal_nan=True)  # moments, extremes, counts


@pytest.mark.parametrize("where", [0, 12_345], ids=["in-sample", "off-sample"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_batch_leaves_the_kernel_for_the_masked_path(bad: float, where: int, monkeypatch) -> None:  # noqa: ANN001
    x = torch.randn(50_000, generator=torch.Generator().manual_seed(2))
    x[where] = bad  # index 0 is in the strided sample that sets the shift, 12345 is not
    assert kernels.power_sums_and_counts(x.numpy(), 17, 15) is None
    fast = Summary().update(x)
    monkeypatch.setattr(kernels, "AVAILABLE", False)
    slow = Summary().update(x)
    _assert_same_counts(fast, slow)
    assert fast.nonfinite == 1
    np.testing.assert_allclose(fast.std, slow.std, rtol=1e-12)


def test_small_batches_and_other_inputs_skip_the_kernel(monkeypatch) -> None:  # noqa: ANN001
    calls = []
    monkeypatch.setattr(kernels, "power_sums_and_counts", lambda *a: calls.append(1))
    Summary().update(torch.randn(100))  # below the size threshold
    Summary().update(torch.randn(10_000).double())  # float64
    Summary(channels=4).update(torch.randn(10_000, 4))  # per channel
    Summary(relative_accuracy=0.001).update(torch.randn(10_000))  # more mantissa bits than 6
    assert calls == []


def test_kernel_rejects_wrong_arrays() -> None:
    with pytest.raises(ValueError, match="float32"):
        kernels.power_sums_and_counts(np.zeros(10), 17, 15)
    with pytest.raises(ValueError, match="contiguous"):
        kernels.power_sums_and_counts(np.zeros(10, np.float32)[::2], 17, 15)


def test_first_parallel_kernel_leaves_torch_thread_count_alone() -> None:
    """Numba's OpenMP pool starts with ``omp_set_num_threads`` in the runtime torch shares; a fresh
    process on one torch thread must stay on one after its first summary (else a resumed run,
    which skips the first measurement, trains on another thread count than the original did)."""
    import os
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1)\n"
            "from nndist.stats import Summary, kernels\n"
            "calls = []\n"
            "real = kernels.power_sums_and_counts\n"
            "kernels.power_sums_and_counts = lambda *a, **k: calls.append(1) or real(*a, **k)\n"
            "Summary().update(torch.randn(200_000))\n"
            "print(len(calls), torch.get_num_threads())\n")
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "1"], out


@pytest.mark.parametrize("n", [1, 7, kernels.SAMPLE_RUNS * kernels.SAMPLE_RUN, kernels.SAMPLE_RUNS * kernels.SAMPLE_RUN + 1, 1_000_003])
def test_sample_mean_is_the_mean_of_evenly_spaced_runs(n: int) -> None:
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32)
    x[n // 2] = np.nan  # passed over
    runs, run = (1, n) if n <= kernels.SAMPLE_RUNS * kernels.SAMPLE_RUN else (kernels.SAMPLE_RUNS, kernels.SAMPLE_RUN)
    starts = [0] if runs == 1 else [r * (n - run) // (runs - 1) for r in range(runs)]
    literal = np.concatenate([x[s : s + run] for s in starts]).astype(np.float64)
    literal = literal[np.isfinite(literal)]
    assert starts[-1] + run == n  # the last run ends at the last value
    assert kernels.sample_mean(x) == pytest.approx(literal.mean() if literal.size else 0.0, rel=1e-12, abs=1e-15)


def test_sample_mean_of_sorted_values_is_near_their_mean() -> None:
    x = np.sort(np.random.default_rng(3).standard_normal(2_000_000)).astype(np.float32)
    assert abs(kernels.sample_mean(x) - x.astype(np.float64).mean()) < 0.05 * x.std()
    assert kernels.sample_mean(np.full(3, np.inf, dtype=np.float32)) == 0.0


@pytest.mark.parametrize("n", [1, 5, kernels.SUB_BLOCK - 1, kernels.SUB_BLOCK, kernels.SUB_BLOCK + 1, 3 * kernels.SUB_BLOCK + 5])
@pytest.mark.parametrize("where", ["first", "last"])
def test_sums_extremes_keys_across_sub_blocks_equal_the_literal_computation(n: int, where: str) -> None:
    """Sums, extremes and key counts over sub-block boundaries, with the extremes at either end
    (in the first or the last sub-block) and signed zeros among the values."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32)
    x[rng.random(n) < 0.1] = -0.0
    at = 0 if where == "first" else n - 1
    x[at] = -7.5
    if n > 1:
        x[n - 1 - at] = 9.25
    shift, bits = 17, 15
    lanes = np.zeros((kernels.lanes_for(n), 1 << bits), dtype=np.int64)
    s1, s2, s3, s4, kmin, kmax = kernels.sums_extremes_keys(x, 0.125, shift, (1 << bits) - 1, lanes)
    vmin, vmax = kernels.unordered(kmin, kmax)
    assert vmin == x.min() and vmax == x.max()
    d = x.astype(np.float64) - 0.125
    for p, s in enumerate((s1, s2, s3, s4), start=1):
        np.testing.assert_allclose(s, np.sum(d**p), rtol=1e-12, atol=1e-12 * np.sum(np.abs(d) ** p))
    keys = (x.view(np.int32) >> shift) & ((1 << bits) - 1)
    assert np.array_equal(lanes.sum(0), np.bincount(keys, minlength=1 << bits))
    assert kernels.sums_extremes_keys(x, 0.125, 0, 0, np.zeros((0, 1), dtype=np.int64)) == (s1, s2, s3, s4, kmin, kmax)  # no counts


def test_ordered_keys_order_as_the_floats_and_find_the_infinities() -> None:
    """The ordered key of a float32 sorts as the float does (the one order the extremes and the
    kernel's Inf/NaN test rely on): -Inf below every finite value, NaN beyond the infinities."""
    finite = np.array([-3e38, -1.0, -1e-45, -0.0, 0.0, 1e-45, 1.0, 3e38], dtype=np.float32)
    b = finite.view(np.int32)
    keys = b ^ ((b >> 31) & 0x7FFFFFFF)
    assert np.all(np.diff(keys) > 0)
    assert np.all(np.abs(keys) < kernels.INF_KEY) and np.all(keys > ~kernels.INF_KEY)
    for bad in (np.inf, -np.inf, np.nan, -np.nan):
        x = np.concatenate([finite, np.array([bad], dtype=np.float32)])
        kmin, kmax = kernels.sums_extremes_keys(x, 0.0, 0, 0, np.zeros((0, 1), dtype=np.int64))[4:]
        assert kmax >= kernels.INF_KEY or kmin <= ~kernels.INF_KEY, bad
        assert kernels.power_sums_and_counts(np.tile(x, 1000), 17, 15) is None, bad

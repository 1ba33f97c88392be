"""Partial summaries of many tensors against their literal twin, ``Summary.update`` in float64.

Every fast path of :mod:`nndist.stats.batch` is compared with the float64 summary of the same
values: the device-side path (device ops only, run here on the CPU), the serial CPU kernel on its
thread pool, the segmented group of small tensors, per-channel summaries, their collapse to one
summary and their embedding as a shard. Counts, bucket counts, extremes and non-finite counts must
be equal; moments agree to ``1e-9`` relative (``1e-12`` absolute). The device path's host
transfers are counted by wrapping every ``Tensor`` method that reads device memory on the host.
"""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest
import torch

from nndist.stats import Summary, kernels, partials_cpu
from nndist.stats import columns as columns_mod
from nndist.stats import device as device_mod
from nndist.stats import batch as batch_mod
from nndist.stats.batch import StepSummaries
from nndist.stats.device import DevicePartials
from nndist.stats.partials import KeySpace, collapse, embed_channels
from nndist.stats.tables import coarse_histogram, scalar_columns
from host_reads import HostReads
from test_stats import KINDS, _sample

SPACE = KeySpace()
RTOL = 1e-9


def _special(n: int, rng: np.random.Generator) -> np.ndarray:
    """Values at the zero bucket's edge, subnormals, signed zeros, NaN and infinities."""
    x = rng.normal(0, 1, n)
    picks = np.array([0.0, -0.0, 1e-12, -1e-12, 9.99e-13, -1.0000001e-12, 1e-39, -1e-39, 1e30, -1e-30,
                      np.nan, np.inf, -np.inf])
    mask = rng.random(n) < 0.2
    x[mask] = rng.choice(picks, int(mask.sum()))
    k = min(n, picks.size)
    x[:k] = rng.permutation(picks)[:k]
    return x


def _values(kind: str, n: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    x = _special(n, rng) if kind == "special" else _sample(kind, n, rng)
    return torch.from_numpy(x).float()


def assert_same(fast: Summary, twin: Summary) -> None:
    """Counts exactly equal, moments to float64 rounding."""
    for name in ("n", "nan", "posinf", "neginf", "nonfinite"):
        assert np.array_equal(getattr(fast, name), getattr(twin, name)), name
    assert np.array_equal(fast.min, twin.min, equal_nan=True) and np.array_equal(fast.max, twin.max, equal_nan=True)
    channels = [None] if fast.channels is None else range(fast.channels)
    for ch in channels:
        ea, ca = fast.histogram(ch)
        eb, cb = twin.histogram(ch)
        assert np.array_equal(ea, eb) and np.array_equal(ca, cb), ch
    for name in ("mean", "std", "skew", "kurtosis"):
        np.testing.assert_allclose(getattr(fast, name), getattr(twin, name), rtol=RTOL, atol=1e-12, err_msg=name)
    np.testing.assert_allclose(fast.quantile([0.01, 0.5, 0.99]), twin.quantile([0.01, 0.5, 0.99]), rtol=0, atol=0)


def twin(x: torch.Tensor, channels: int | None = None) -> Summary:
    return Summary(channels).update(x.double())


KINDS_ALL = [*KINDS, "special"]


@pytest.mark.parametrize("kind", KINDS_ALL)
@pytest.mark.parametrize("n", [1, 37, 70_000])
def test_device_whole_equals_float64_summary(kind: str, n: int) -> None:
    x = _values(kind, n, seed=n)
    dp = DevicePartials(SPACE)
    dp.add("x", x)
    whole, chans = dp.collect()
    assert chans == {} and dp.transfers == 1
    assert_same(whole["x"], twin(x))


def test_device_add_accumulates_micro_batches_and_chunks(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(device_mod, "CHUNK", 1000)  # many chunks per add
    parts = [_values("lognormal", 2500, 1), _values("special", 1700, 2), _values("offset", 10, 3)]
    dp = DevicePartials(SPACE)
    for p in parts:
        dp.add("f", p)
    assert_same(dp.collect()[0]["f"], twin(torch.cat(parts)))


@pytest.mark.parametrize("seed", range(3))
def test_device_group_of_small_tensors_equals_each_alone(seed: int) -> None:
    rng = np.random.default_rng(seed)
    kinds = rng.choice(KINDS_ALL, 12)
    tensors = {f"t{i}": _values(str(k), int(rng.integers(1, 3000)), seed * 100 + i) for i, k in enumerate(kinds)}
    tensors["big"] = _values("normal", device_mod.GROUP_LIMIT + 5, seed)  # alone, not a segment
    dp = DevicePartials(SPACE)
    dp.add_group(tensors.items())
    whole, _ = dp.collect()
    assert dp.transfers == 1
    for key, x in tensors.items():
        assert_same(whole[key], twin(x))


@pytest.mark.parametrize("dim", [0, 1, -1])
@pytest.mark.parametrize("kind", ["normal", "special", "zeros"])
def test_device_channels_equal_float64_channel_summary(dim: int, kind: str) -> None:
    x = _values(kind, 2 * 6 * 5 * 3, seed=abs(dim)).reshape(2, 6, 5, 3)
    x2 = _values("uniform", x.numel(), seed=9).reshape(x.shape)
    dp = DevicePartials(SPACE)
    dp.add_channels("c", x, dim)
    dp.add_channels("c", x2, dim)
    _, chans = dp.collect()
    assert dp.transfers == 2  # fields and key ranges, then counts on the shared range
    c = x.shape[dim]
    flat = torch.cat([x.movedim(dim, -1).reshape(-1, c), x2.movedim(dim, -1).reshape(-1, c)])
    assert_same(chans["c"], twin(flat, c))
    assert_same(collapse(chans["c"]), twin(flat.reshape(-1)))


def test_values_near_the_float32_limits() -> None:
    """Counts stay exact at +-3e38; moments agree to rounding relative to the largest value."""
    x = torch.tensor([3e38, -3e38, 1.0, 2.0, -1e-40, 0.0, 3.3e38, 1e-20])
    dp = DevicePartials(SPACE)
    dp.add("x", x)
    fast, slow = dp.collect()[0]["x"], twin(x)
    assert np.array_equal(fast.histogram()[1], slow.histogram()[1]) and fast.n == slow.n
    assert fast.min == slow.min and fast.max == slow.max
    np.testing.assert_allclose(fast.mean, slow.mean, rtol=0, atol=1e-12 * 3.3e38)
    np.testing.assert_allclose(fast.std, slow.std, rtol=1e-12)


def test_channels_with_nothing_outside_the_zero_bucket() -> None:
    x = torch.tensor([[0.0, 1e-13], [-0.0, float("nan")]])
    dp = DevicePartials(SPACE)
    dp.add_channels("z", x, 1)
    assert_same(dp.collect()[1]["z"], twin(x, 2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_widened_exactly(dtype: torch.dtype) -> None:
    x = _values("normal", 5000).to(dtype)
    dp = DevicePartials(SPACE)
    dp.add("h", x)
    assert_same(dp.collect()[0]["h"], twin(x.float()))
    assert_same(partials_cpu.cpu_summaries(SPACE, [x])[0], twin(x.float()))


@pytest.mark.parametrize("kind", KINDS_ALL)
def test_cpu_kernel_equals_float64_summary(kind: str, monkeypatch) -> None:  # noqa: ANN001
    if not partials_cpu.AVAILABLE:
        pytest.skip("numba is not installed")
    monkeypatch.setattr(partials_cpu, "CHUNK", 4096)  # several chunks per tensor, on the pool
    monkeypatch.setattr(partials_cpu, "COMPACT", 1000)  # both counting kernels
    monkeypatch.setattr(kernels, "LANES_MIN", 3000)  # and both ways of counting over the whole key space
    # 1..2003 share a batch of one-chunk tensors, 3500 (four counter sets) starts the next
    xs = [_values(kind, n, seed=n) for n in (1, 50, 999, 2003, 3500, 3 * 4096 + 7, 20_000)] + [torch.empty(0)]
    for x, s in zip(xs, partials_cpu.cpu_summaries(SPACE, xs, threads=2)):
        assert_same(s, twin(x))


def test_collapse_and_embed_are_exact() -> None:
    x = _values("special", 40 * 7, 4).reshape(40, 7)
    s = twin(x, 7)
    assert_same(collapse(s), twin(x.reshape(-1)))
    # two shards of channels 0..2 and 3..6 embedded and merged = the whole per-channel summary
    merged = embed_channels(twin(x[:, :3], 3), 0, 7).merge(embed_channels(twin(x[:, 3:], 4), 3, 7))
    assert_same(merged, s)
    with pytest.raises(ValueError):
        embed_channels(twin(x[:, :3], 3), 5, 7)


def test_step_summaries_paths_agree(monkeypatch) -> None:  # noqa: ANN001
    """The CPU kernel, the device path on the CPU and ``Summary.update`` for float64 give one answer."""
    tensors = {("w", i): _values(k, 900 + 50 * i, i) for i, k in enumerate(KINDS_ALL)}
    tensors[("w", "f64")] = _values("normal", 100).double()
    out = {}
    for forced in (None, True):
        batch = StepSummaries(device_side=forced)
        batch.add_many(tensors.items())
        batch.add_channels(("c", 0), tensors[("w", 0)].reshape(30, -1), 0, whole=True)
        out[forced] = batch.collect()
        assert batch.collect() == ({}, {})  # emptied
    for key, x in tensors.items():
        for forced in out:
            assert_same(out[forced][0][key], twin(x))
    c = tensors[("w", 0)].reshape(30, -1)
    for forced in out:
        assert_same(out[forced][1][("c", 0)], twin(c.T, 30))
        assert_same(out[forced][0][("c", 0)], twin(c.reshape(-1)))


@pytest.mark.parametrize("limit", [None, 5000], ids=["held-to-collect", "flushed-at-the-limit"])
def test_held_tensors_are_copied_and_summarised_with_the_next_call(limit: int | None, monkeypatch) -> None:  # noqa: ANN001
    """``hold`` summarises what the tensor held when it was held, merged over repeated keys, and
    the same on the device path (added at once) as on the CPU kernel (held, then added)."""
    if limit is not None:
        monkeypatch.setattr(batch_mod, "HOLD_BYTES", limit)
    xs = [_values(k, 700 + 300 * i, i) for i, k in enumerate(KINDS_ALL)]
    for forced in (None, True):
        batch = StepSummaries(device_side=forced)
        for i, x in enumerate(xs):
            y = x.clone()
            batch.hold(("f", i % 3), y)
            y.fill_(7.0)  # an in-place op after the hook (a ReLU) changes nothing already held
        if limit is not None and forced is None:
            assert batch._held_bytes < limit  # noqa: SLF001 - flushed on the way
        batch.add_many([(("w", 0), xs[0])])
        assert not batch._held  # noqa: SLF001 - the next call takes them
        whole, _ = batch.collect()
        for key in range(3):
            assert_same(whole[("f", key)], twin(torch.cat([x for i, x in enumerate(xs) if i % 3 == key])))
        assert_same(whole[("w", 0)], twin(xs[0]))


def test_device_path_reads_the_host_only_in_its_transfers(monkeypatch) -> None:  # noqa: ANN001
    tensors = [(f"p{i}", _values("special", 100 * (i + 1), i)) for i in range(20)]
    big = _values("normal", 3 * device_mod.GROUP_LIMIT)
    dp = DevicePartials(SPACE)
    reads = HostReads(monkeypatch)
    dp.add_group(tensors)
    dp.add("big", big)
    dp.add("f", big[:1000])
    dp.add("f", big[1000:5000])
    dp.add_channels("c", big.reshape(-1, 3), 1)
    assert reads.calls == [], "a device-side add read a value on the host"
    whole, chans = dp.collect()
    assert dp.transfers == 2 and reads.calls == ["numpy", "numpy"]  # one per transfer, nothing else
    monkeypatch.undo()
    assert_same(whole["big"], twin(big))
    assert_same(chans["c"], twin(big.reshape(-1, 3), 3))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_adds_never_sync_and_collect_equals_the_float64_summary() -> None:
    """On a GPU, ``torch.cuda.set_sync_debug_mode("error")`` raises on any sync: none in the adds."""
    xs = {f"p{i}": _values("special", 300 * (i + 1), i).cuda() for i in range(10)}
    big = _values("lognormal", 3 * device_mod.GROUP_LIMIT, 1).cuda()
    dp = DevicePartials(SPACE)
    for _ in range(2):  # two steps: the second reuses the segment ids
        torch.cuda.set_sync_debug_mode("error")
        try:
            dp.add_group(xs.items())
            dp.add("big", big)
            dp.add_channels("c", big.reshape(-1, 6), 1)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        whole, chans = dp.collect()
    assert dp.transfers == 4
    for key, x in xs.items():
        assert_same(whole[key], twin(x.cpu()))
    assert_same(whole["big"], twin(big.cpu()))
    assert_same(chans["c"], twin(big.cpu().reshape(-1, 6), 6))


def test_device_module_has_no_host_reads_in_its_source() -> None:
    """Ops that sync on CUDA are not used by the device path (a check the CPU run cannot make)."""
    tree = ast.parse(inspect.getsource(device_mod))
    names = [n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)]
    names += [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]
    for banned in ("item", "tolist", "cpu", "bincount", "nonzero", "unique", "masked_select", "argwhere"):
        assert banned not in names, banned
    assert names.count("numpy") == 1  # in _to_host


@pytest.mark.parametrize("compiled", [True, False])
def test_scalar_columns_equal_rows_and_coarse_histograms(compiled: bool, monkeypatch) -> None:  # noqa: ANN001
    """Both paths (one compiled pass, and numpy per summary) give rows() and coarse_histogram() exactly."""
    if not compiled:
        monkeypatch.setattr(columns_mod, "AVAILABLE", False)
    summaries = [twin(_values(k, n, n)) for k in KINDS_ALL for n in (1, 3, 500)] + [Summary(), twin(torch.zeros(4))]
    summaries.append(twin(torch.tensor([1e200, -3.0])))  # beyond float32: edges outside the table (numpy path)
    summaries.append(Summary(relative_accuracy=0.05).update(_values("normal", 200, 9).double()))  # other edges (numpy path)
    cols, hists = scalar_columns(summaries, 8)
    for i, s in enumerate(summaries):
        for name, value in s.rows()[0].items():
            assert np.array_equal(cols[name][i], value, equal_nan=True), (i, name)
        for got, want in zip(hists[i], coarse_histogram(s, 8)):
            assert np.array_equal(got, want), i


@pytest.mark.parametrize("kind", KINDS_ALL)
def test_coarse_histogram_groups_the_global_buckets(kind: str) -> None:
    s = twin(_values(kind, 3000, 5))
    left, right, count = coarse_histogram(s, 8)
    edges, fine = s.histogram()
    assert count.sum() == s.n and np.all(count > 0) and np.all(right[:-1] <= left[1:]) and np.all(left < right)
    for i in np.flatnonzero(fine):  # every fine bucket lies in exactly one coarse bucket
        inside = np.flatnonzero((left <= edges[i]) & (edges[i + 1] <= right))
        assert inside.size == 1
    # the coarse edges are global: each is min_abs or 2^e (1 + j/8), whatever the tensor
    mag = np.abs(np.concatenate([left, right]))
    mag = mag[mag != s.min_abs]
    mantissa = mag / np.exp2(np.floor(np.log2(mag)))
    assert np.array_equal(mantissa * 8, np.round(mantissa * 8))
    octave = right[(left > 0) & (left > 2 * s.min_abs)] / left[(left > 0) & (left > 2 * s.min_abs)]
    assert np.all(octave <= 1 + 1 / 8 + 1e-12)  # log-linear: 8 equal parts of each octave


@pytest.mark.parametrize("kind", [*KINDS_ALL, "empty", "zero-bucket", "all-negative"])
def test_one_channel_positions_equal_the_dense_construction(kind: str) -> None:
    """The one-channel shortcut of ``Sketch.positions`` against the dense (C, m) construction,
    on stores with empty columns at their ends (a merge of summaries with different ranges)."""
    if kind == "empty":
        xs = [torch.empty(0)]
    elif kind == "zero-bucket":
        xs = [torch.tensor([0.0, -0.0, 1e-13, -5e-13])]
    elif kind == "all-negative":
        xs = [-_values("lognormal", 500, 1).abs() - 1.0]
    else:
        xs = [_values(kind, 3000, 2), 1e3 * _values(kind, 50, 3)]
    summaries = [twin(x) for x in xs] + partials_cpu.cpu_summaries(SPACE, xs) * partials_cpu.AVAILABLE
    merged = twin(xs[0])
    for x in xs[1:]:
        merged.merge(twin(x))
    for s in [*summaries, merged]:
        sk = s._sketch  # noqa: SLF001 - the two constructions of one view
        p_row, c_row = sk._positions_row()  # noqa: SLF001
        p_dense, c_dense = sk._positions_dense()  # noqa: SLF001
        assert c_row.shape == c_dense.shape and np.array_equal(c_row, c_dense)
        assert c_row.shape[1] == 0 or p_row == p_dense


def test_positions_of_many_sketches_in_one_call_equal_each_dense_construction() -> None:
    """``columns.row_positions`` of many sketches at once (what ``scalar_columns`` reads) against
    each sketch's dense construction, empty and zero-bucket-only sketches among them."""
    if not columns_mod.AVAILABLE:
        pytest.skip("numba is not installed")
    xs = [_values(k, n, n) for k in KINDS_ALL for n in (1, 40, 3000)]
    xs += [torch.empty(0), torch.tensor([0.0, -0.0, 1e-13]), -_values("lognormal", 500, 1).abs() - 1.0]
    sketches = [twin(x)._sketch for x in xs]  # noqa: SLF001
    merged = twin(xs[0])
    merged.merge(twin(1e3 * xs[1]))
    sketches.append(merged._sketch)  # noqa: SLF001 - empty columns at the stores' ends
    sketches.append(Summary(relative_accuracy=0.05).update(xs[2].double())._sketch)  # noqa: SLF001 - another key0
    p_lo, flat, offsets = columns_mod.row_positions(sketches)
    for i, sk in enumerate(sketches):
        p_dense, c_dense = sk._positions_dense()  # noqa: SLF001
        assert np.array_equal(flat[offsets[i] : offsets[i + 1]], c_dense[0]), i
        assert c_dense.shape[1] == 0 or p_lo[i] == p_dense, i

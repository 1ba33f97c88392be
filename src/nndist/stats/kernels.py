"""Compiled CPU kernels (numba) for the hot loops of :class:`nndist.stats.Summary`.

Streaming a feature summary costs a few passes over every value: the shifted power sums of the
moments and the bucket keys of the sketch. In torch each is a separate pass with a temporary
tensor, together about as costly as the forward pass that produced the values
(``benchmarks/bench_features.py``, ``bench_stats.py``). :func:`power_sums_and_counts` does all of it (extremes, finiteness check,
power sums in float64, bucket counts) in one read of the values on all threads: the per-value
work of a float32 scalar summary of a CPU tensor. Results do not depend on the number of
threads: the power sums are accumulated per fixed block of :data:`BLOCK` values and the blocks
added in order; the counts are integers.

The torch path stays for other devices and as the literal twin the tests compare with
(``tests/test_kernels.py``). If numba cannot be imported, :data:`AVAILABLE` is False and
``Summary`` uses the torch path everywhere.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from ..threads import parallel_threads

try:  # pragma: no cover - exercised by the import itself
    import numba
except ImportError:  # pragma: no cover - numba is a dependency; this keeps a broken install usable
    numba = None

__all__ = ["AVAILABLE", "BLOCK", "HI16", "LANES", "LANES_MIN", "SAMPLE_RUN", "SAMPLE_RUNS", "lanes_for",
           "power_sums_and_counts", "sample_mean"]

AVAILABLE = numba is not None

#: Index of the high 16 bits of a float32 among its two 16-bit halves: they hold the sign, the
#: exponent and the top 7 mantissa bits, all that a key of ``m <= 7`` mantissa bits reads.
HI16 = 1 if sys.byteorder == "little" else 0

# Values per block of the power sums; each block's float64 sums are one row of the result.
BLOCK = 1 << 16
#: Counter sets of the key loops: value ``i`` goes to set ``i % LANES``, so that a run of one key
#: (the zeros of a ReLU output, of a sparse gradient) does not wait on one counter's last
#: increment (89 % zeros: 1.7 ns per value with one set, 0.6 with four; 0.95 and 0.6 on a ReLU
#: output; no change on weights; measured here). Zeroing and adding the sets costs about 20 us
#: for the 2^15 keys, so arrays of fewer than :data:`LANES_MIN` values use one set.
LANES = 4
LANES_MIN = 1 << 18
#: The reference of the power sums is the mean of :data:`SAMPLE_RUNS` runs of :data:`SAMPLE_RUN`
#: consecutive values spread evenly over the array: near the mean whatever the order of the values.
#: Runs, not single values: 64 runs touch 256 cache lines of a tensor that is out of the caches
#: where 4096 single values touched 4096 (in a resnet18 monitor step of 165 tensors the two
#: differed by about 2 ms, within the step's noise here).
SAMPLE_RUNS = 64
SAMPLE_RUN = 64
#: Accumulators of each power sum (:func:`power_sums_extremes`).
SUM_LANES = 16


def lanes_for(values: int) -> int:
    """Counter sets for an array of ``values`` values (:data:`LANES` or 1)."""
    return LANES if values >= LANES_MIN else 1


if AVAILABLE:

    @numba.njit(cache=True, nogil=True)
    def sample_mean(x):  # pragma: no cover - compiled
        """Mean of the finite values (float64; 0 if none) among :data:`SAMPLE_RUNS` runs of
        :data:`SAMPLE_RUN` consecutive values at evenly spaced starts (all values of a short array)."""
        n = x.shape[0]
        runs, run = (1, n) if n <= SAMPLE_RUNS * SAMPLE_RUN else (SAMPLE_RUNS, SAMPLE_RUN)
        starts = np.zeros(runs, dtype=np.int64)
        for r in range(1, runs):
            starts[r] = r * (n - run) // (runs - 1)
        total = 0.0
        for start in starts:  # a plain sum first (vectorised); a non-finite one is redone value by value
            for i in range(start, start + run):
                total += np.float64(x[i])
        if np.isfinite(total):
            return total / (runs * run) if n else 0.0
        total = 0.0
        count = 0
        for start in starts:
            for i in range(start, start + run):
                v = np.float64(x[i])
                if np.isfinite(v):
                    total += v
                    count += 1
        return total / count if count else 0.0

    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def power_sums_extremes(x, ref):  # pragma: no cover - compiled
        """``sum (x[i] - ref)^p`` for p = 1..4 (float64) and the extremes of ``x`` (NaN is
        passed over), in one read. A part of an array is passed as a view: loops from a run-time
        start ``lo`` keep numba's test for negative indices, which stops them vectorising
        (1.7 ns per value here instead of 0.3; the loops of :func:`count_keys` 0.7 instead of 0.35).

        :data:`SUM_LANES` independent accumulators, added at the end: one chain per sum took
        0.6 ns per value here, these 0.4 with the extremes included (which alone took 0.5).
        """
        a1 = np.zeros(SUM_LANES)
        a2 = np.zeros(SUM_LANES)
        a3 = np.zeros(SUM_LANES)
        a4 = np.zeros(SUM_LANES)
        vlo = np.full(SUM_LANES, x[0])
        vhi = np.full(SUM_LANES, x[0])
        hi = x.shape[0]
        end = hi // SUM_LANES * SUM_LANES
        for i in range(0, end, SUM_LANES):
            for j in range(SUM_LANES):
                v = x[i + j]
                d = np.float64(v) - ref
                d2 = d * d
                a1[j] += d
                a2[j] += d2
                a3[j] += d2 * d
                a4[j] += d2 * d2
                vlo[j] = v if v < vlo[j] else vlo[j]
                vhi[j] = v if v > vhi[j] else vhi[j]
        s1, s2, s3, s4 = a1.sum(), a2.sum(), a3.sum(), a4.sum()
        vmin, vmax = vlo.min(), vhi.max()
        for i in range(end, hi):
            v = x[i]
            d = np.float64(v) - ref
            d2 = d * d
            s1 += d
            s2 += d2
            s3 += d2 * d
            s4 += d2 * d2
            vmin = v if v < vmin else vmin
            vmax = v if v > vmax else vmax
        return s1, s2, s3, s4, vmin, vmax

    @numba.njit(cache=True, nogil=True)
    def count_keys(bits, shift, mask, lanes):  # pragma: no cover - compiled
        """Adds ``(bits[i] >> shift) & mask`` for every ``i`` into ``lanes[i % LANES]``
        (into ``lanes[0]`` when there is one set); ``shift >= 16`` and ``shift + log2(mask + 1) <= 32``.

        The key is read off the high 16-bit half as ``(half >> (shift - 16)) & mask`` in uint16:
        a shift of an int32 by a run-time amount compiles with a guard for amounts past the
        width, and that took 1.6-1.8 ns per value here against 0.7-0.9 for this (as fast as a
        compile-time shift).
        """
        half = bits.view(np.uint16)
        hi = bits.shape[0]
        s = np.uint16(shift - 16)
        m = np.uint16(mask)
        if lanes.shape[0] == 1:
            for i in range(hi):
                lanes[0, (half[2 * i + HI16] >> s) & m] += 1
            return
        end = hi // LANES * LANES
        for i in range(0, end, LANES):
            lanes[0, (half[2 * i + HI16] >> s) & m] += 1
            lanes[1, (half[2 * i + 2 + HI16] >> s) & m] += 1
            lanes[2, (half[2 * i + 4 + HI16] >> s) & m] += 1
            lanes[3, (half[2 * i + 6 + HI16] >> s) & m] += 1
        for i in range(end, hi):
            lanes[0, (half[2 * i + HI16] >> s) & m] += 1

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _kernel(x, ref, shift, mask, nbins, nthreads, nlanes):  # pragma: no cover - compiled
        n = x.shape[0]
        bits = x.view(np.int32)
        blocks = (n + BLOCK - 1) // BLOCK
        sums = np.zeros((blocks, 4))
        extremes = np.zeros((blocks, 2), dtype=np.float32)
        bad = np.zeros(blocks, dtype=np.int64)
        counts = np.zeros((nthreads, nlanes, nbins), dtype=np.int64)
        for b in numba.prange(blocks):
            lo = b * BLOCK
            hi = min(n, lo + BLOCK)
            s1, s2, s3, s4, vmin, vmax = power_sums_extremes(x[lo:hi], ref)  # views: see power_sums_extremes
            sums[b, 0] = s1
            sums[b, 1] = s2
            sums[b, 2] = s3
            sums[b, 3] = s4
            block_bits = bits[lo:hi]
            count_keys(block_bits, shift, mask, counts[numba.get_thread_id()])
            nonfinite = 0
            for i in range(hi - lo):  # exponent bits all ones: Inf or NaN (an integer test, immune to fastmath)
                nonfinite += (block_bits[i] & 0x7F800000) == 0x7F800000
            extremes[b, 0] = vmin
            extremes[b, 1] = vmax
            bad[b] = nonfinite
        return sums, extremes, bad, counts


def power_sums_and_counts(
    x: np.ndarray, shift: int, key_bits: int, threads: int | None = None
) -> tuple[np.ndarray, float, float, float, np.ndarray] | None:
    """Power sums, extremes and bit-pattern bucket counts of float32 values, in one pass.

    Args:
        x: (N,) contiguous float32 array, N >= 1.
        shift: the key of value ``v`` is ``(bits(v) >> shift) & (2^key_bits - 1)``, with
            ``bits(v)`` its int32 bit pattern: sign, exponent and the top mantissa bits.
        key_bits: number of key bits (``2^key_bits`` counters).
        threads: threads to use (default: torch's intra-op thread count, which torchrun sets to
            1 per process when it starts several, capped by numba's maximum).

    Returns:
        ``None`` if ``x`` holds NaN or Inf (the caller takes its general path), else
        ``(S, ref, lo, hi, counts)``: ``S[p-1] = sum_i (x_i - ref)^p`` for ``p = 1..4``
        (float64, (4,)) about ``ref`` = :func:`sample_mean` (near the mean, so that the central
        sums derived from ``S`` lose nothing to cancellation); the exact minimum and maximum; and
        the (2^key_bits,) int64 count of every key.
    """
    if x.dtype != np.float32 or x.ndim != 1 or not x.flags.c_contiguous or x.size == 0:
        raise ValueError("power_sums_and_counts needs a non-empty contiguous 1-D float32 array")
    if shift < 16 or shift + key_bits > 32:
        raise ValueError(f"keys of {key_bits} bits from bit {shift} do not lie in the high 16 bits of a float32")
    ref = float(sample_mean(x))
    with parallel_threads(threads) as threads:
        sums, extremes, bad, counts = _kernel(x, ref, int(shift), (1 << key_bits) - 1, 1 << key_bits, threads,
                                              lanes_for(x.size // threads))
    if bad.any():
        return None
    return sums.sum(0), ref, float(extremes[:, 0].min()), float(extremes[:, 1].max()), counts.sum((0, 1))

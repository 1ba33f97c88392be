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

__all__ = ["AVAILABLE", "BLOCK", "HI16", "LANES", "LANES_MIN", "SAMPLE_RUN", "SAMPLE_RUNS", "SUB_BLOCK", "lane_counters", "lanes_for",
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
#: Counters of padding after each set (:func:`lane_counters`): sets 2^15 counters apart lie a
#: multiple of 4 KB apart, and a load from one set then waits on stores to the others whose
#: addresses share its low 12 bits (four sets on a 62 %-zero gradient: 1.7 ns per value with the
#: sets 2^15 counters apart, 0.74 padded; weights 0.71 and 0.65; on a 2-core AMD EPYC, Zen 1).
LANE_PAD = 72
#: Values per round of the key loops: 8 increments per loop iteration (two per set). With four
#: per iteration the same loop took 3.3 ns per value on that Zen 1 VM against 0.65-0.75 for this
#: (weights, a sparse gradient, a ReLU output alike; one set: 3.3 and 0.72).
KEY_ROUND = 8
#: The reference of the power sums is the mean of :data:`SAMPLE_RUNS` runs of :data:`SAMPLE_RUN`
#: consecutive values spread evenly over the array: near the mean whatever the order of the values.
#: Runs, not single values: 64 runs touch 256 cache lines of a tensor that is out of the caches
#: where 4096 single values touched 4096 (in a resnet18 monitor step of 165 tensors the two
#: differed by about 2 ms, within the step's noise here).
SAMPLE_RUNS = 64
SAMPLE_RUN = 64
#: Values per sub-block of :func:`sums_extremes_keys` (64 KB of float32: the loops after the
#: first read them from the core's L2).
SUB_BLOCK = 1 << 14
#: The ordered key (see ``_ordered_extremes``) of +Inf; that of -Inf is its complement.
INF_KEY = 0x7F800000


def lanes_for(values: int) -> int:
    """Counter sets for an array of ``values`` values (:data:`LANES` or 1)."""
    return LANES if values >= LANES_MIN else 1


def lane_counters(sets: int, nbins: int) -> np.ndarray:
    """Zeroed (sets, nbins) int64 counters for :func:`count_keys`, each set followed by
    :data:`LANE_PAD` unused counters (a view with a padded row stride)."""
    return np.zeros((sets, nbins + LANE_PAD), dtype=np.int64)[:, :nbins]


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
    def _power_sums(x, ref):  # pragma: no cover - compiled
        """``sum (x[i] - ref)^p`` for p = 1..4 in float64: scalar accumulators, which the
        compiler keeps in vector registers (``reassoc``: the order of the additions is its choice,
        fixed at compile time). Accumulators in arrays are loaded and stored at every value
        (numba's arrays may alias ``x``): 0.6 ns per value here against 0.27 for this."""
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        for i in range(x.shape[0]):
            d = np.float64(x[i]) - ref
            d2 = d * d
            s1 += d
            s2 += d2
            s3 += d2 * d
            s4 += d2 * d2
        return s1, s2, s3, s4

    @numba.njit(cache=True, nogil=True, inline="always")
    def _flip(b):  # pragma: no cover - compiled
        """The int32 ``b`` with its low 31 bits flipped when its sign is set: the ordered key of
        the float32 of bit pattern ``b`` (see :func:`_ordered_extremes`), and back."""
        return np.int32(b ^ np.int32(np.int32(b >> np.int32(31)) & np.int32(0x7FFFFFFF)))

    @numba.njit(cache=True, nogil=True)
    def _ordered_extremes(bits, kmin, kmax):  # pragma: no cover - compiled
        """Smallest and largest of ``kmin``, ``kmax`` and the ordered keys of ``bits`` (int32).

        The ordered key of a float32 is its bit pattern with the low 31 bits flipped when the
        sign is set: an int32 that orders as the floats do (-0.0 just below +0.0), NaN beyond the
        infinities on its sign's side. An integer minimum vectorises (0.11 ns per value here);
        a float32 one with a comparison does not (1.7 ns: the compiler must keep NaN's order).
        """
        for i in range(bits.shape[0]):
            k = _flip(bits[i])
            kmin = k if k < kmin else kmin
            kmax = k if k > kmax else kmax
        return kmin, kmax

    @numba.njit(cache=True, nogil=True)
    def unordered(kmin, kmax):  # pragma: no cover - compiled
        """The float32 values of two ordered keys (see :func:`_ordered_extremes`)."""
        v = np.array([_flip(kmin), _flip(kmax)], dtype=np.int32).view(np.float32)  # the flip is its own inverse
        return v[0], v[1]

    @numba.njit(cache=True, nogil=True)
    def sums_extremes_keys(x, ref, shift, mask, lanes):  # pragma: no cover - compiled
        """Power sums about ``ref``, extremes (ordered keys, see :func:`_ordered_extremes`) and,
        with ``lanes`` of at least one row, the key counts of :func:`count_keys` added to them:
        sub-block by sub-block of :data:`SUB_BLOCK` values, so that each value is read from
        memory once and the later loops find it in the core's cache (weights and gradients of a
        training step are out of every cache). Returns ``s1, s2, s3, s4, kmin, kmax``; the
        extremes are those of the finite values only when there are no others (callers test for
        Inf and NaN apart).

        A part of an array is passed as a view, and so are the sub-blocks: loops from a run-time
        start ``lo`` keep numba's test for negative indices, which stops them vectorising (1.7 ns
        per value here instead of 0.3; the loops of :func:`count_keys` 0.7 instead of 0.35)."""
        n = x.shape[0]
        bits = x.view(np.int32)
        t1 = 0.0
        t2 = 0.0
        t3 = 0.0
        t4 = 0.0
        kmin = np.int32(2147483647)
        kmax = np.int32(-2147483648)
        for lo in range(0, n, SUB_BLOCK):
            hi = min(n, lo + SUB_BLOCK)
            s1, s2, s3, s4 = _power_sums(x[lo:hi], ref)
            t1 += s1
            t2 += s2
            t3 += s3
            t4 += s4
            kmin, kmax = _ordered_extremes(bits[lo:hi], kmin, kmax)
            if lanes.shape[0]:
                count_keys(bits[lo:hi], shift, mask, lanes)
        return t1, t2, t3, t4, kmin, kmax

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
        end = hi // KEY_ROUND * KEY_ROUND  # rounds of KEY_ROUND values (see there), then the rest
        if lanes.shape[0] == 1:
            for i in range(0, end, KEY_ROUND):
                for j in range(KEY_ROUND):
                    lanes[0, (half[2 * (i + j) + HI16] >> s) & m] += 1
        else:
            for i in range(0, end, KEY_ROUND):
                for j in range(0, KEY_ROUND, LANES):
                    lanes[0, (half[2 * (i + j) + HI16] >> s) & m] += 1
                    lanes[1, (half[2 * (i + j) + 2 + HI16] >> s) & m] += 1
                    lanes[2, (half[2 * (i + j) + 4 + HI16] >> s) & m] += 1
                    lanes[3, (half[2 * (i + j) + 6 + HI16] >> s) & m] += 1
        for i in range(end, hi):
            lanes[0, (half[2 * i + HI16] >> s) & m] += 1

    @numba.njit(parallel=True, cache=True, nogil=True, fastmath={"reassoc", "contract"})
    def _kernel(x, ref, shift, mask, nbins, nthreads, nlanes):  # pragma: no cover - compiled
        n = x.shape[0]
        blocks = (n + BLOCK - 1) // BLOCK
        sums = np.zeros((blocks, 4))
        extremes = np.zeros((blocks, 2), dtype=np.float32)
        bad = np.zeros(blocks, dtype=np.int64)
        counts = np.zeros((nthreads, nlanes, nbins + LANE_PAD), dtype=np.int64)  # padded sets: see LANE_PAD
        for b in numba.prange(blocks):
            lo = b * BLOCK
            hi = min(n, lo + BLOCK)
            s1, s2, s3, s4, kmin, kmax = sums_extremes_keys(x[lo:hi], ref, shift, mask, counts[numba.get_thread_id(), :, :nbins])  # views: see there
            sums[b, 0] = s1
            sums[b, 1] = s2
            sums[b, 2] = s3
            sums[b, 3] = s4
            # Inf or NaN: an ordered key at or beyond that of an infinity (an integer test, immune to fastmath)
            bad[b] = kmax >= INF_KEY or kmin <= ~INF_KEY
            extremes[b, 0], extremes[b, 1] = unordered(kmin, kmax)
        return sums, extremes, bad, counts[:, :, :nbins]


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

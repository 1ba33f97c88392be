"""Partials of float32 CPU tensors: a serial compiled pass per chunk, chunks spread over threads.

The training monitor summarises a step's tensors in the middle of a training loop. The parallel
kernel of :mod:`.kernels` runs on numba's OpenMP pool, a second OpenMP runtime beside torch's:
between the two, threads that spin while waiting for work take the cores from each other, and
on a small machine a summary that takes 50 ms alone took 700 ms between training ops (measured
here on 2 cores; ``OMP_WAIT_POLICY=passive`` removes the loss but must be set before the process
starts). Here the compiled pass is serial and releases the GIL; chunks of at most :data:`CHUNK`
values of large tensors, and batches of smaller tensors (:func:`_batch`, one call for many),
go to a pool of plain threads, which block (not spin) while idle.

One call per chunk (:func:`_pass`) gives its partial (:mod:`.partials`) in tight loops over
sub-blocks of its values (:func:`~nndist.stats.kernels.sums_extremes_keys`, one read from memory):
the power sums about the tensor's reference in float64 (vectorised), the extremes (as ordered
integer keys, vectorised), then the raw bucket key counts (in :data:`~nndist.stats.kernels.LANES`
counter sets for large chunks, so that the zeros of a sparse gradient do not queue on one
counter), into counters that each thread keeps and reuses. NaN and Inf are found from the
counts themselves (their magnitude keys are the top ones) and only then does a masked loop redo
the sums; values below ``min_abs`` in the bucket of ``min_abs`` (when ``min_abs`` is not an edge)
are moved to the zero bucket by a loop that runs only when that bucket is hit; the counts of a
one-chunk tensor are cut to their non-empty key ranges (:func:`_stores`) in the same thread. About 0.9-1.1 ns per value on one
core here (weights and 89 %-zero gradients alike), against 5-7 ns for a single loop doing
everything; the keys take about 0.55 of it, the sums 0.27 and the extremes 0.1 (a 2-core Xeon).
The literal twin in the tests is :meth:`Summary.update` of the same values in float64.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence

import numpy as np
import torch

from . import kernels
from .partials import KeySpace, compact_summary
from .summary import Summary

__all__ = ["AVAILABLE", "CHUNK", "COMPACT", "cpu_summaries"]

AVAILABLE = kernels.AVAILABLE
#: Values per chunk: the unit of work of one thread.
CHUNK = 1 << 20
#: Tensors up to this size are counted on their own key ranges (:func:`_compact`, about 6 ns per
#: value here); larger ones over the whole key space (:func:`_pass`, about 1.5 ns per value plus
#: a fixed cost of about 35 us for the 2^15 counters): on ReLU outputs the two took 51 and 50 us
#: at 8192 values, 167 and 77 at 32768.
COMPACT = 1 << 13

if AVAILABLE:
    import numba
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    @intrinsic
    def _address(typingctx, addr):  # noqa: ANN001, ANN202 - a numba intrinsic
        """The pointer at integer address ``addr`` (of a float32 tensor's data, see :func:`_batch`)."""
        if not isinstance(addr, types.Integer):
            return None

        def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
            return builder.inttoptr(args[0], cgutils.voidptr_t)

        return types.voidptr(addr), codegen

    @numba.njit(cache=True, nogil=True)
    def _masked(x, ref, fields):  # pragma: no cover - compiled
        """Power sums, extremes and NaN/+Inf counts of the finite values only (a chunk with NaN or Inf)."""
        bits = x.view(np.int32)
        s1 = 0.0
        s2 = 0.0
        s3 = 0.0
        s4 = 0.0
        vmin = np.float32(np.inf)
        vmax = np.float32(-np.inf)
        nan = 0
        posinf = 0
        finite = 0
        for i in range(x.shape[0]):
            b = bits[i]
            if (b & 0x7F800000) == 0x7F800000:
                if (b & 0x007FFFFF) != 0:
                    nan += 1
                elif b > 0:
                    posinf += 1
                continue
            v = x[i]
            d = np.float64(v) - ref
            d2 = d * d
            s1 += d
            s2 += d2
            s3 += d2 * d
            s4 += d2 * d2
            vmin = min(vmin, v)
            vmax = max(vmax, v)
            finite += 1
        fields[0], fields[1], fields[2] = finite, nan, posinf
        fields[3], fields[4], fields[5], fields[6] = s1, s2, s3, s4
        fields[8], fields[9] = vmin, vmax

    @numba.njit(cache=True, nogil=True)
    def _fields(x, ref, fields, shift, mask, lanes):  # pragma: no cover - compiled
        """Power sums and extremes of values taken to be finite into ``fields``, and with
        ``lanes`` of at least one row their key counts added there (one read: see
        :func:`~nndist.stats.kernels.sums_extremes_keys`)."""
        s1, s2, s3, s4, kmin, kmax = kernels.sums_extremes_keys(x, ref, shift, mask, lanes)
        fields[0], fields[1], fields[2] = x.shape[0], 0, 0
        fields[3], fields[4], fields[5], fields[6] = s1, s2, s3, s4
        fields[7] = ref
        fields[8], fields[9] = kernels.unordered(kmin, kmax)

    @numba.njit(cache=True, nogil=True)
    def _plain(x, ref, fields):  # pragma: no cover - compiled
        """:func:`_fields` without the key counts."""
        _fields(x, ref, fields, 0, 0, np.zeros((0, 1), dtype=np.int64))

    @numba.njit(cache=True, nogil=True)
    def _pass(x, ref, t32, shift, mask, k0, half, top, fields, lanes):  # pragma: no cover - compiled
        """A chunk's fields and its raw key counts over the whole key space, into ``lanes[0]``
        (``lanes``: (counter sets, nbins) scratch, overwritten)."""
        bits = x.view(np.int32)
        lanes[:] = 0
        # sums, extremes and raw keys in one read; the zero bucket and NaN/Inf are sorted out below and on the host
        _fields(x, ref, fields, shift, mask, lanes)
        counts = lanes[0]
        for j in range(1, lanes.shape[0]):
            counts += lanes[j]
        bad = 0
        for k in range(top, half):  # magnitude keys of NaN and Inf (exponent all ones)
            bad += counts[k] + counts[half + k]
        if bad:
            _masked(x, ref, fields)
        if counts[k0] + counts[half + k0]:  # bucket key0 holds values below min_abs when min_abs is no edge
            for i in range(x.shape[0]):
                k = (bits[i] >> shift) & mask
                if abs(x[i]) < t32 and k & (half - 1) == k0:
                    counts[k] -= 1
                    counts[k - k0] += 1  # key 0 (positive) or half (negative): both in the zero bucket

    @numba.njit(cache=True, nogil=True)
    def _stores(counts, k0, half, top, shift, vmin, vmax):  # pragma: no cover - compiled
        """Raw key counts over the whole key space as :func:`_compact` gives them: the zero
        bucket's count and the counts of the positive and of the negative keys, each from its
        first to its last non-empty key (copies).

        ``vmin, vmax``: the finite extremes; no finite value has a larger magnitude key than
        theirs, so the scans for the last keys start there, not at the top of the key space
        (about 16K empty counters per sign for weights and gradients).
        """
        zero = counts[:k0].sum() + counts[half : half + k0].sum()
        ends = np.array([vmax, -vmin], dtype=np.float32).view(np.int32)
        lo_p, hi_p = k0, min(top - 1, (ends[0] >> shift) & (half - 1)) if vmax > 0 else k0 - 1
        while lo_p <= hi_p and counts[lo_p] == 0:
            lo_p += 1
        while hi_p >= lo_p and counts[hi_p] == 0:
            hi_p -= 1
        lo_n, hi_n = k0, min(top - 1, (ends[1] >> shift) & (half - 1)) if vmin < 0 else k0 - 1
        while lo_n <= hi_n and counts[half + lo_n] == 0:
            lo_n += 1
        while hi_n >= lo_n and counts[half + hi_n] == 0:
            hi_n -= 1
        pos = counts[lo_p : hi_p + 1].copy()
        neg = counts[half + lo_n : half + hi_n + 1].copy()
        return zero, (lo_p if pos.size else k0), pos, (lo_n if neg.size else k0), neg

    @numba.njit(cache=True, nogil=True)
    def _key_ranges(x, t32, shift, mask, half, top):  # pragma: no cover - compiled
        """The smallest and largest magnitude key of the positive and of the negative values that
        are finite and outside the zero bucket (``top, -1`` when there are none)."""
        hi16 = x.view(np.uint16)  # keys off the high halves, as kernels.count_keys reads them
        s = np.uint16(shift - 16)
        m = np.uint16(mask)
        lo_p, hi_p, lo_n, hi_n = top, -1, top, -1
        for i in range(x.shape[0]):
            h = hi16[2 * i + kernels.HI16]
            mag = np.int64((h >> s) & m) & (half - 1)
            keep = np.int64((mag < top) & (abs(x[i]) >= t32))
            neg = np.int64(h >> np.uint16(15))
            sel_p = keep * (1 - neg)
            sel_n = keep * neg
            lo_p = min(lo_p, mag * sel_p + top * (1 - sel_p))
            hi_p = max(hi_p, mag * sel_p - (1 - sel_p))
            lo_n = min(lo_n, mag * sel_n + top * (1 - sel_n))
            hi_n = max(hi_n, mag * sel_n - (1 - sel_n))
        return lo_p, hi_p, lo_n, hi_n

    @numba.njit(cache=True, nogil=True)
    def _range_counts(x, t32, shift, mask, half, top, lo_p, wp, lo_n, wn):  # pragma: no cover - compiled
        """Counts on ``[positive keys from lo_p (wp) | negative keys from lo_n (wn) | zero | NaN/Inf]``."""
        hi16 = x.view(np.uint16)
        s = np.uint16(shift - 16)
        m = np.uint16(mask)
        lanes = np.zeros((kernels.LANES, wp + wn + 2), dtype=np.int64)  # see kernels.LANES
        off_n = wp - lo_n
        for i in range(x.shape[0]):
            h = hi16[2 * i + kernels.HI16]
            mag = np.int64((h >> s) & m) & (half - 1)
            neg = np.int64(h >> np.uint16(15))  # the sign bit (``k >= half`` here took 7 ns per value instead of 2)
            j = mag + neg * off_n - (1 - neg) * lo_p
            zero = np.int64(abs(x[i]) < t32)
            j = j * (1 - zero) + zero * (wp + wn)
            bad = np.int64(mag >= top)
            lanes[i % kernels.LANES, j * (1 - bad) + bad * (wp + wn + 1)] += 1
        return lanes.sum(axis=0)

    @numba.njit(cache=True, nogil=True)
    def _compact(x, ref, t32, shift, mask, k0, half, top, fields):  # pragma: no cover - compiled
        """A whole (small) tensor's fields and its counts on the key ranges it occupies:
        ``(zero, pos_off, pos, neg_off, neg)``, without a pass over the whole key space.

        The loops select by arithmetic, not by jumps: the sign of the values is random, and a
        jump on it is mispredicted every other value (6 ns per value instead of 2 here; the
        loops are separate functions for the same reason: fused, LLVM put the jumps back).
        """
        _plain(x, ref, fields)
        lo_p, hi_p, lo_n, hi_n = _key_ranges(x, t32, shift, mask, half, top)
        wp = max(0, hi_p - lo_p + 1)
        wn = max(0, hi_n - lo_n + 1)
        counts = _range_counts(x, t32, shift, mask, half, top, lo_p, wp, lo_n, wn)
        if counts[wp + wn + 1]:
            _masked(x, ref, fields)
        return counts[wp + wn], (lo_p if wp else k0), counts[:wp].copy(), (lo_n if wn else k0), counts[wp : wp + wn].copy()


    @numba.njit(cache=True, nogil=True)
    def _whole(x, compact, t32, shift, mask, k0, half, top, fields, lanes):  # pragma: no cover - compiled
        """A one-chunk tensor in one call: its reference, fields and stores ``(zero, pos_off, pos,
        neg_off, neg)``, by :func:`_compact` up to ``compact`` values, else :func:`_pass` and
        :func:`_stores` (one call instead of three: each costs a few microseconds of dispatch, and
        a step has a hundred and more such tensors)."""
        ref = kernels.sample_mean(x)
        if x.shape[0] <= compact:
            return _compact(x, ref, t32, shift, mask, k0, half, top, fields)
        _pass(x, ref, t32, shift, mask, k0, half, top, fields, lanes)
        return _stores(lanes[0], k0, half, top, shift, fields[8], fields[9])


    @numba.njit(cache=True, nogil=True)
    def _batch(addrs, sizes, compact, lanes_min, t32, shift, mask, k0, half, top, fields, lanes):  # pragma: no cover - compiled
        """Many one-chunk tensors in one call, each as :func:`_whole` does it: ``fields[r]`` and
        the stores of tensor r, given by the address and size of its contiguous float32 data.

        One call for a job's tensors instead of one each: a resnet18 step has some 150 tensors of
        at most :data:`CHUNK` values, and with a call each the two threads spent much of their
        time handing the interpreter lock to each other between calls (the small tensors of a
        step took 19.8 ms on two threads against 25.9 on one, and 17.8 on two in batches; a
        2-core Zen 1 VM).
        ``lanes_min``: :data:`~nndist.stats.kernels.LANES_MIN` (an argument, read when called).
        Returns ``(zero, pos_off, neg_off)`` arrays and the lists of positive and negative counts.
        """
        n = addrs.shape[0]
        zero = np.zeros(n, dtype=np.int64)
        pos_off = np.zeros(n, dtype=np.int64)
        neg_off = np.zeros(n, dtype=np.int64)
        pos = []
        neg = []
        for r in range(n):
            x = numba.carray(_address(addrs[r]), (sizes[r],), np.float32)
            sets = lanes if sizes[r] >= lanes_min else lanes[:1]
            z, po, p, no, ng = _whole(x, compact, t32, shift, mask, k0, half, top, fields[r], sets)
            zero[r], pos_off[r], neg_off[r] = z, po, no
            pos.append(p)
            neg.append(ng)
        return zero, pos_off, neg_off, pos, neg


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _pool(threads: int) -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL._max_workers != threads:  # noqa: SLF001 - the size is all we read
            if _POOL is not None:
                _POOL.shutdown(wait=False)
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="nndist-summary")
        return _POOL


_LOCAL = threading.local()


def _scratch(nbins: int) -> np.ndarray:
    """This thread's (LANES, nbins) int64 counters (:func:`~nndist.stats.kernels.lane_counters`),
    made once and reused (a fresh 1 MB array per chunk costs page faults that here took longer
    than the counting)."""
    lanes = getattr(_LOCAL, "lanes", None)
    if lanes is None or lanes.shape[1] != nbins:
        lanes = _LOCAL.lanes = kernels.lane_counters(kernels.LANES, nbins)
    return lanes


def cpu_summaries(space: KeySpace, tensors: Sequence[torch.Tensor], threads: int | None = None) -> list[Summary]:
    """Scalar summaries of float32 CPU tensors (float16/bfloat16 are widened exactly).

    Args:
        space: the key space of the summaries' accuracy (``m <= 6``).
        tensors: CPU tensors of any shape.
        threads: worker threads (default: torch's intra-op thread count).

    Returns:
        One summary per tensor, equal to ``Summary().update(t)`` (counts, extremes and
        non-finite counts exactly; moments to float64 rounding).
    """
    flat = [t.detach().to(torch.float32).contiguous().reshape(-1) for t in tensors]
    arrays = [t.numpy() for t in flat]
    # a large tensor is counted in chunks of CHUNK values over the whole key space, which are
    # added; the others (one chunk or less) go in batches of about CHUNK values, one call each,
    # and each is finished in its batch, summary included (Python that overlaps the other
    # threads' compiled passes)
    chunks = [(i, start) for i, a in enumerate(arrays) if a.size > CHUNK for start in range(0, a.size, CHUNK)]
    batches: list[list[int]] = []
    filled = CHUNK
    for i, a in enumerate(arrays):
        if 0 < a.size <= CHUNK:
            if filled + a.size > CHUNK:
                batches.append([])
                filled = 0
            batches[-1].append(i)
            filled += a.size
    jobs = [("chunk", j) for j in range(len(chunks))] + [("batch", b) for b in range(len(batches))]
    fields = np.zeros((len(chunks), 10))
    # the chunks of a tensor share its reference (computed here) and add their counts in its own array
    refs = {i: kernels.sample_mean(arrays[i]) for i, start in chunks if start == 0}
    dense = {i: np.zeros(space.nbins, dtype=np.int64) for i in refs}
    done: dict[int, Summary] = {}
    locks = {i: threading.Lock() for i in dense}
    shift = 23 - space.m  # keys: the sign, exponent and top m mantissa bits
    constants = (np.float32(space.t32), shift, space.nbins - 1, space.k0, space.half, space.top)
    store_args = (space.k0, space.half, space.top, shift)

    def run(job: tuple[str, int]) -> None:
        kind, j = job
        if kind == "batch":
            members = batches[j]
            addrs = np.array([flat[i].data_ptr() for i in members], dtype=np.int64)
            sizes = np.array([arrays[i].size for i in members], dtype=np.int64)
            part = np.zeros((len(members), 10))
            zero, pos_off, neg_off, pos, neg = _batch(addrs, sizes, COMPACT, kernels.LANES_MIN, *constants, part, _scratch(space.nbins))
            for r, i in enumerate(members):
                done[i] = compact_summary(space, part[r], int(zero[r]), (int(neg_off[r]), neg[r]), (int(pos_off[r]), pos[r]),
                                          arrays[i].size, trimmed=True)
            return
        i, start = chunks[j]
        lanes = _scratch(space.nbins)[: kernels.lanes_for(CHUNK)]
        _pass(arrays[i][start : start + CHUNK], refs[i], *constants, fields[j], lanes)
        with locks[i]:
            np.add(dense[i], lanes[0], out=dense[i])

    def size(job: tuple[str, int]) -> int:
        kind, j = job
        if kind == "batch":
            return sum(arrays[i].size for i in batches[j])
        i, start = chunks[j]
        return min(CHUNK, arrays[i].size - start)

    threads = max(1, int(threads or torch.get_num_threads()))
    if threads == 1 or len(jobs) == 1 or sum(a.size for a in arrays) < 2 * CHUNK:
        for job in jobs:
            run(job)
    else:  # one task per thread; each takes the next job, largest first, until none is left
        queue = iter(sorted(jobs, key=lambda job: -size(job)))  # next() on it is atomic under the GIL

        def work() -> None:
            for job in queue:
                run(job)

        list(_pool(threads).map(lambda _: work(), range(threads)))
    out = []
    for i, a in enumerate(arrays):
        if a.size == 0:
            out.append(space.empty())
        elif i in done:
            out.append(done[i])
        else:
            rows = fields[[j for j, (owner, _) in enumerate(chunks) if owner == i]]
            merged = rows[0].copy()
            merged[:7] = rows[:, :7].sum(0)
            merged[8], merged[9] = rows[:, 8].min(), rows[:, 9].max()
            zero, pos_off, pos, neg_off, neg = _stores(dense[i], *store_args, merged[8], merged[9])
            out.append(compact_summary(space, merged, zero, (neg_off, neg), (pos_off, pos), a.size, trimmed=True))
    return out

"""Partials of float32 CPU tensors: a serial compiled pass per chunk, chunks spread over threads.

The training monitor summarises a step's tensors in the middle of a training loop. The parallel
kernel of :mod:`.kernels` runs on numba's OpenMP pool, a second OpenMP runtime beside torch's:
between the two, threads that spin while waiting for work take the cores from each other, and
on a small machine a summary that takes 50 ms alone took 700 ms between training ops (measured
here on 2 cores; ``OMP_WAIT_POLICY=passive`` removes the loss but must be set before the process
starts). Here the compiled pass is serial and releases the GIL; chunks of at most :data:`CHUNK`
values go to a pool of plain threads, which block (not spin) while idle.

One call per chunk (:func:`_pass`) gives its partial (:mod:`.partials`) in three tight loops:
the power sums about the tensor's reference in float64 and the extremes (both vectorised), then
the raw bucket key counts. NaN and Inf are found from the counts themselves (their magnitude
keys are the top ones) and only then does a masked loop redo the sums; values below
``min_abs`` in the bucket of ``min_abs`` (when ``min_abs`` is not an edge) are moved to the
zero bucket by a loop that runs only when that bucket is hit. About 1.5 ns per value on one
core here, against 5-7 ns for a single loop doing everything. The literal twin in the tests is
:meth:`Summary.update` of the same values in float64.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Sequence

import numpy as np
import torch

from . import kernels
from .partials import KeySpace, whole_summary
from .summary import Summary

__all__ = ["AVAILABLE", "CHUNK", "cpu_summaries"]

AVAILABLE = kernels.AVAILABLE
#: Values per chunk: the unit of work of one thread.
CHUNK = 1 << 20

if AVAILABLE:
    import numba

    @numba.njit(cache=True, nogil=True)
    def _pass(x, ref, t32, shift, mask, k0, half, top, fields, counts):  # pragma: no cover - compiled
        n = x.shape[0]
        bits = x.view(np.int32)
        s1, s2, s3, s4 = kernels.power_sums(x, 0, n, ref)
        vmin = x[0]
        vmax = x[0]
        for i in range(n):  # vectorised
            vmin = min(vmin, x[i])
            vmax = max(vmax, x[i])
        for i in range(n):  # raw keys; the zero bucket and NaN/Inf are sorted out below and on the host
            counts[(bits[i] >> shift) & mask] += 1
        bad = 0
        for k in range(top, half):  # magnitude keys of NaN and Inf (exponent all ones)
            bad += counts[k] + counts[half + k]
        nan = 0
        posinf = 0
        if bad:
            s1 = 0.0
            s2 = 0.0
            s3 = 0.0
            s4 = 0.0
            vmin = np.float32(np.inf)
            vmax = np.float32(-np.inf)
            for i in range(n):
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
        if counts[k0] + counts[half + k0]:  # bucket key0 holds values below min_abs when min_abs is no edge
            for i in range(n):
                if abs(x[i]) < t32 and ((bits[i] >> shift) & mask) & (half - 1) == k0:
                    k = (bits[i] >> shift) & mask
                    counts[k] -= 1
                    counts[k - k0] += 1  # key 0 (positive) or half (negative): both in the zero bucket
        fields[0] = n - bad
        fields[1] = nan
        fields[2] = posinf
        fields[3] = s1
        fields[4] = s2
        fields[5] = s3
        fields[6] = s4
        fields[7] = ref
        fields[8] = vmin
        fields[9] = vmax


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


def _reference(x: np.ndarray) -> float:
    """Mean of an evenly strided sample of at most 4096 finite values (0 if none): near the mean."""
    sample = x[:: max(1, x.size // 4096)].astype(np.float64)
    sample = sample[np.isfinite(sample)]
    return float(sample.mean()) if sample.size else 0.0


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
    arrays = [t.detach().to(torch.float32).contiguous().reshape(-1).numpy() for t in tensors]
    refs = [_reference(a) for a in arrays]
    jobs = [(i, start) for i, a in enumerate(arrays) for start in range(0, a.size, CHUNK)]
    nbins = space.nbins
    fields = np.zeros((len(jobs), 10))
    counts = [np.zeros(nbins, dtype=np.int64) for _ in arrays]
    locks = [threading.Lock() for _ in arrays]
    t32 = np.float32(space.t32)
    shift, mask = 23 - space.m, nbins - 1

    def run(j: int) -> None:
        i, start = jobs[j]
        mine = np.zeros(nbins, dtype=np.int64)
        _pass(arrays[i][start : start + CHUNK], refs[i], t32, shift, mask, space.k0, space.half, space.top, fields[j], mine)
        with locks[i]:
            counts[i] += mine

    threads = max(1, int(threads or torch.get_num_threads()))
    work = sum(a.size for a in arrays)
    if threads == 1 or len(jobs) == 1 or work < 2 * CHUNK:
        for j in range(len(jobs)):
            run(j)
    else:
        list(_pool(threads).map(run, range(len(jobs))))
    out = []
    for i, a in enumerate(arrays):
        f = fields[[j for j, (t, _) in enumerate(jobs) if t == i]]
        if f.shape[0] == 0:  # an empty tensor
            out.append(space.empty())
            continue
        merged = f[0].copy()
        merged[:7] = f[:, :7].sum(0)
        merged[8], merged[9] = f[:, 8].min(), f[:, 9].max()
        out.append(whole_summary(space, merged, counts[i], a.size))
    return out

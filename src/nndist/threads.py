"""Numba's thread count for a parallel kernel, beside torch's.

Numba starts its OpenMP pool with ``omp_set_num_threads(NUMBA_NUM_THREADS)`` in the OpenMP
runtime that torch shares, and that changes torch's own thread count (1 to 2 here, at the first
summary of a process started with ``OMP_NUM_THREADS=1``: a run then trained on two threads after
its first measurement and, resumed, on one, with other float rounding). :func:`parallel_threads`
sets numba's count for one kernel call and puts torch's back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["parallel_threads"]


@contextlib.contextmanager
def parallel_threads(threads: int | None = None) -> Iterator[int]:
    """Numba's thread count for the calls inside; torch's is as it was afterwards.

    Args:
        threads: numba threads (default: torch's intra-op thread count, which torchrun sets to
            1 per process when it starts several), capped by numba's maximum.

    Yields:
        The thread count set.
    """
    import numba

    before = torch.get_num_threads()
    n = max(1, min(int(threads or before), numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)

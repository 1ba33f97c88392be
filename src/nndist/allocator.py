"""Allocator tuning for the CPU: fewer page faults in tight training and measurement loops.

glibc's malloc serves large blocks (a batch of activations) with fresh ``mmap`` pages and gives
them back on free, so every step of a loop page-faults its working set in again (README,
"Measured"). Raising the mmap threshold and the trim threshold keeps the
freed blocks in the heap for reuse. The ``nndist`` command calls :func:`tune_allocator` at start;
library users may call it themselves (it changes process-wide malloc settings).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Sets glibc malloc thresholds for large, repeated allocations; returns whether it applied."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024)  # glibc's largest allowed value
    ok &= mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
    ok &= mallopt(_M_TOP_PAD, 256 * 1024 * 1024)
    return bool(ok)

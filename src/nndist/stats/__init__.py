"""Streaming, mergeable distribution summaries (the statistics layer).

- :mod:`.summary`: :class:`Summary`, exact moments, quantile sketch, histogram, Gaussianity.
- :mod:`.moments`, :mod:`.sketch`, :mod:`.kernels`: the maths of its update paths.
- :mod:`.distances`: Wasserstein-1 and KS between two summaries.
- :mod:`.sync`: the one cross-process path (pack, merge to rank 0, all-reduce).
- :mod:`.tables`: summaries as table rows; ``weight_table``.
"""

from __future__ import annotations

from .distances import ks_distance, wasserstein
from .summary import SUMMARY_COLUMNS, Summary, SummaryError, summarize
from .sync import all_reduce, merge_to_main, pack, unpack

__all__ = [
    "SUMMARY_COLUMNS",
    "Summary",
    "SummaryError",
    "all_reduce",
    "ks_distance",
    "merge_to_main",
    "pack",
    "summarize",
    "unpack",
    "wasserstein",
]

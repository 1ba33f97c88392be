"""The report layer: the paper's claims, figures, TensorBoard events and the HTML report of a run."""

from __future__ import annotations

from .claims import CLAIMS, evaluate_claims, write_claims
from .finish import draw_figures, finish_run_directory, report_run
from .html import MAX_TABLE_ROWS, render_report, write_report
from .tensorboard import read_scalars, write_tensorboard

__all__ = [
    "CLAIMS",
    "MAX_TABLE_ROWS",
    "draw_figures",
    "evaluate_claims",
    "finish_run_directory",
    "read_scalars",
    "render_report",
    "report_run",
    "write_claims",
    "write_report",
    "write_tensorboard",
]

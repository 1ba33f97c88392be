"""Finishing a run directory: figures, TensorBoard events, claims and the HTML report."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

from ..errors import NndistError
from ..results import RunDir, layout, load_run
from .claims import evaluate_claims, write_claims
from .compare_figures import write_compare_figures
from .figures import write_figures
from .figures_gradients import write_gradient_figures
from .html import write_report
from .monitor_figures import write_monitor_figures
from .tensorboard import write_tensorboard

__all__ = ["FIGURES", "draw_figures", "finish_run_directory", "report_run"]

#: The static figures of each kind of run: ``fn(run) -> [paths]``.
FIGURES: dict[str, Callable[[RunDir], list[Path]]] = {
    layout.REPRODUCE: write_figures,
    layout.GRADIENTS: write_gradient_figures,
    layout.MONITOR: write_monitor_figures,
    layout.COMPARE: write_compare_figures,
}


def draw_figures(run_dir: str | Path | RunDir) -> list[Path]:
    """Draws the static figures of a run from its tables.

    Raises:
        NndistError: a table the figures need is missing (the run is not finished).
    """
    run = run_dir if isinstance(run_dir, RunDir) else load_run(run_dir)
    return FIGURES[run.kind](run)


def finish_run_directory(run_dir: str | Path, *, figures: bool = False) -> None:
    """Writes TensorBoard events, claims.csv and report.html for a completed run directory.

    Args:
        run_dir: the run directory.
        figures: also draw the static figures first.
    """
    if figures:
        draw_figures(run_dir)
    try:
        write_tensorboard(run_dir)
    except NndistError as exc:  # tensorboard is an optional extra
        warnings.warn(f"TensorBoard events not written: {exc}", stacklevel=2)
    write_claims(run_dir)
    write_report(run_dir)


def report_run(run_dir: str | Path, *, embed_figures: bool = False, redraw: bool = False, tensorboard: bool = True) -> tuple[Path, list[str]]:
    """``nndist report``: claims.csv and report.html for a run directory (figures drawn if missing).

    Args:
        run_dir: a ``reproduce`` or ``gradients`` run directory, finished or not.
        embed_figures: embed the figures in the page as base64.
        redraw: redraw the figures even if ``figures/`` exists.
        tensorboard: also rebuild the TensorBoard events (skipped, with a note, without tensorboard).

    Returns:
        The report's path and notes for the user (figures that could not be drawn).

    Raises:
        NndistError: not a run directory, or an unreadable table.
    """
    run = load_run(run_dir)  # fails early, naming the path and what is missing
    notes: list[str] = []
    # a monitor still running has new steps since its figures were drawn
    if redraw or (run.kind == layout.MONITOR and run.manifest.get("status") != "finished"):
        draw_figures(run)
    elif not run.file(layout.FIGURES_DIR).is_dir():
        # Runs made with --no-report get their figures here; an unfinished run has too few
        # tables for them, and its report says which parts are missing.
        try:
            draw_figures(run)
        except NndistError as exc:
            notes.append(str(exc))
    claims = evaluate_claims(run.path)
    write_claims(run.path, claims)
    path = write_report(run.path, embed_figures=embed_figures, claims=claims)
    if tensorboard:
        try:
            write_tensorboard(run.path)
        except NndistError as exc:  # tensorboard is an optional extra
            notes.append(f"TensorBoard events not written: {exc}")
    return path, notes

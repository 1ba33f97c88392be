"""``nndist report RUN_DIR``: test the paper's claims and write the HTML report of a run."""

from __future__ import annotations

import argparse
import sys

from ..errors import NndistError

EXAMPLES = """examples:
  nndist report runs/quick                   # claims.csv + report.html (figures linked)
  nndist report runs/quick --embed-figures   # one movable file with the figures inside
  nndist report runs/resnet20-grads --tensorboard
"""


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Registers the ``report`` sub-command."""
    p = subparsers.add_parser(
        "report",
        help="test the paper's claims on a run and write RUN_DIR/report.html and claims.csv",
        description=(
            "Evaluate the paper's claims on the run's own data (RUN_DIR/claims.csv) and write one "
            "self-contained HTML page (RUN_DIR/report.html) with the configuration, figures, summary "
            "tables and claims of a `nndist reproduce` or `nndist gradients` run. Prints the report's path."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `nndist reproduce` or `nndist gradients`")
    p.add_argument("--embed-figures", action="store_true",
                   help="embed the figures in the page as base64 instead of linking figures/*.png")
    p.add_argument("--figures", action="store_true", help="redraw the figures from the tables (drawn anyway when figures/ is missing)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also rebuild the TensorBoard events in RUN_DIR/tb from the tables (needs nndist[tb])")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Writes claims.csv and report.html (and tb/ with --tensorboard); prints the report path."""
    from ..claims import evaluate_claims, load_run, write_claims
    from ..report import write_report

    run = load_run(args.run_dir)  # fails early, naming the path and what is missing
    run_dir = run.path
    if args.figures:
        draw_figures(run_dir, run.kind)
    elif not (run_dir / "figures").is_dir():
        # Runs made with --no-report get their figures here; an unfinished run has too few
        # tables for them, and its report says which parts are missing.
        try:
            draw_figures(run_dir, run.kind)
        except NndistError as exc:
            print(f"nndist report: note: {exc}", file=sys.stderr)
    claims = evaluate_claims(run_dir)
    write_claims(run_dir, claims)
    path = write_report(run_dir, embed_figures=args.embed_figures, claims=claims)
    if args.tensorboard:
        from ..tb import write_tensorboard

        write_tensorboard(run_dir)
    print(path)
    print_claims(run_dir / "claims.csv")
    return 0


def print_claims(path) -> None:
    """Prints the summary row of every claim: id, verdict and the statement."""
    import pandas as pd

    claims = pd.read_csv(path)
    claims = claims[claims["level"] == "summary"]
    print(f"{'#':>3}  {'verdict':<13}claim")
    for row in claims.itertuples():
        print(f"{row.id:>3}  {row.verdict:<13}{row.claim}")


def draw_figures(run_dir, kind: str) -> None:
    """Draws the figures of a finished run from its tables (missing tables: nothing drawn)."""
    try:
        if kind == "gradients":
            from ..figures_gradients import write_gradient_figures

            write_gradient_figures(run_dir)
        else:
            from ..figures import write_figures

            write_figures(run_dir)
    except FileNotFoundError as exc:
        raise NndistError(f"cannot draw figures for {run_dir}: {exc.filename} is missing (is the run finished?)") from None

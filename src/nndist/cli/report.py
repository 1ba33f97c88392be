"""``nndist report RUN_DIR``: test the paper's claims and write the HTML report of a run."""

from __future__ import annotations

import argparse
import sys

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
            "tables and claims of a `nndist reproduce` or `nndist gradients` run (a `compare` run gets its report, "
            "without claims). Prints the report's path."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="directory written by `nndist reproduce`, `nndist gradients` or `nndist compare`")
    p.add_argument("--embed-figures", action="store_true",
                   help="embed the figures in the page as base64 instead of linking figures/*.png")
    p.add_argument("--figures", action="store_true", help="redraw the figures from the tables (drawn anyway when figures/ is missing)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also rebuild the TensorBoard events in RUN_DIR/tb from the tables (needs nndist[tb])")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Writes claims.csv and report.html (and tb/ with --tensorboard); prints the report path."""
    from ..report import report_run
    from ..results.layout import CLAIMS

    path, notes = report_run(args.run_dir, embed_figures=args.embed_figures, redraw=args.figures, tensorboard=args.tensorboard)
    for note in notes:
        print(f"nndist report: note: {note}", file=sys.stderr)
    print(path)
    print_claims(path.parent / CLAIMS)
    return 0


def print_claims(path) -> None:
    """Prints the summary row of every claim: id, verdict and the statement."""
    import pandas as pd

    claims = pd.read_csv(path)
    claims = claims[claims["level"] == "summary"]
    if claims.empty:
        print("the paper's claims apply to reproduce and gradients runs only: none to test here")
        return
    print(f"{'#':>3}  {'verdict':<13}claim")
    for row in claims.itertuples():
        print(f"{row.id:>3}  {row.verdict:<13}{row.claim}")

"""``nndist report RUN_DIR``: test the paper's claims and write the HTML report of a run."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  nndist report runs/quick                   # claims.csv + report.html (figures linked)
  nndist report runs/quick --embed-figures   # one movable file with the figures inside
  nndist report runs/resnet20-grads --no-tensorboard
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
    p.add_argument("--no-tensorboard", action="store_true",
                   help="do not rebuild the TensorBoard events in RUN_DIR/tb (written by default; needs nndist[tb])")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Writes claims.csv, report.html and tb/ (unless --no-tensorboard); prints the report path."""
    from ..report import report_run
    from ..results.layout import CLAIMS

    path, notes = report_run(args.run_dir, embed_figures=args.embed_figures, redraw=args.figures, tensorboard=not args.no_tensorboard)
    for note in notes:
        print(f"nndist report: note: {note}", file=sys.stderr)
    print(path)
    print_claims(path.parent / CLAIMS)
    return 0


def print_claims(path) -> None:
    """Prints the claims the run measured (id, verdict with its evidence, statement), the rest in one line."""
    import pandas as pd

    claims = pd.read_csv(path, keep_default_na=False)
    claims = claims[claims["level"] == "summary"]
    if claims.empty:
        print("the paper's claims apply to reproduce and gradients runs only: none to test here")
        return
    measured = claims[claims["verdict"] != "not measured"]
    print(f"{'#':>3}  {'verdict':<24}claim")
    for row in measured.itertuples():
        verdict = f"{row.verdict} ({row.evidence})" if getattr(row, "evidence", "") else row.verdict
        print(f"{row.id:>3}  {verdict:<24}{row.claim}")
    rest = claims[claims["verdict"] == "not measured"]
    if len(rest):
        why = "; ".join(dict.fromkeys(str(n) for n in rest["numbers"]))
        print(f"not measured by this run: {', '.join(str(i) for i in rest['id'])} ({why})")

"""``nndist compare A B [C ...]``: what changed between checkpoints, tensor by tensor."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  nndist compare runs/quick                                   # its first run: before vs after training
  nndist compare runs/quick:orthogonal:after runs/quick:xavier_normal:after --out runs/cmp-inits
  nndist compare base.safetensors finetuned/ --top 12        # a file and a Hugging Face folder
  nndist compare paper_cnn runs/quick:orthogonal:after --init orthogonal
  nndist compare ckpt_0.pt ckpt_1.pt ckpt_2.pt --against previous
"""

#: Columns printed on the terminal (compare.parquet has them all).
SHOWN = ("tensor", "status", "shape_a", "shape_b", "rel_change", "cosine", "sign_flip", "w1", "ks", "std_a", "std_b")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="compare the tensors of two or more checkpoints (any weights file, a run, a model name)",
        description=(
            "Compare checkpoints tensor by tensor, reading one tensor at a time: the shift of each "
            "distribution (Wasserstein-1, KS), its mean, std and kurtosis on both sides, and where "
            "shapes match the relative change ||B - A|| / ||A||, the cosine similarity and the fraction "
            "of flipped signs. Each source is a weights file or folder (.safetensors, a sharded Hugging "
            "Face folder or its index.json, .pt/.pth/.bin, .npz), a run directory (RUN_DIR: its first "
            "run's before and after checkpoints; RUN_DIR:<run key>[:<stage>]), or a model name, "
            "randomly initialised with --init (NAME@INIT for one source). Writes a run directory with "
            "compare.parquet, figures and a report; prints the ranked table, most changed first."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="A B [C ...]: weights files or folders, run directories, model names")
    p.add_argument("--init", help="initialisation of model-name sources (orthogonal, kaiming_normal, ...; default PyTorch's)")
    p.add_argument("--seed", type=int, default=0, help="seed of model-name sources (default 0)")
    p.add_argument("--against", default="first", choices=["first", "previous"],
                   help="with three or more sources, compare each with the first (default) or the previous")
    p.add_argument("--top", type=int, default=8, help="most changed tensors drawn as overlaid histograms (default 8)")
    p.add_argument("--rows", type=int, default=40, help="rows of the ranked table printed (default 40; 0 for all)")
    p.add_argument("--out", type=Path, default=Path("runs/compare"), help="run directory (default runs/compare)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.add_argument("--no-report", action="store_true", help="write the tables only: no figures, TensorBoard or report")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..results import load_run
    from ..studies.compare import run_compare

    out = run_compare(args.sources, args.out, init=args.init, seed=args.seed, against=args.against, top=args.top,
                      overwrite=args.overwrite, progress=not args.no_progress, report=not args.no_report)
    run_dir = load_run(out)
    table = run_dir.table("compare")
    for s in run_dir.manifest.get("sources") or []:
        print(f"{s['label']}: {s['tensors']} tensors ({s['summarised']} summarised), {s['values']:,} values"
              + (f", prefix {s['prefix_stripped']!r} stripped" if s.get("prefix_stripped") else ""))
    pairs = list(dict.fromkeys(zip(table["a"], table["b"])))
    shown = [c for c in SHOWN if c in table.columns]
    if len(pairs) > 1:
        shown = ["a", "b", *shown]
    limit = len(table) if args.rows <= 0 else args.rows
    with pd.option_context("display.max_rows", None, "display.width", 220, "display.max_colwidth", 60,
                           "display.float_format", "{:.4g}".format):
        print(table[shown].head(limit).to_string(index=False))
    if len(table) > limit:
        print(f"... {len(table) - limit} more rows in {out / 'compare.parquet'} (--rows 0 prints all)")
    counts = run_dir.manifest.get("counts") or {}
    print(", ".join(f"{n} {status}" for status, n in counts.items() if n))
    print(f"wrote {out}" + ("" if args.no_report else f" (report: {out / 'report.html'})"))
    return 0

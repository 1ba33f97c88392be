"""``nndist weights``: per-layer distribution of a model's parameters."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  nndist weights paper_cnn
  nndist weights paper_cnn --init orthogonal --seed 1
  nndist weights ../shared/models/resnet20-12fca82f.th --out resnet20_weights.csv
  nndist weights runs/quick/checkpoints/orthogonal/after.safetensors --out after.parquet
"""

#: Columns printed on the terminal; --out gets every column.
SHOWN = ("layer", "param", "shape", "n", "mean", "std", "min", "max", "skew", "kurtosis", "ks_normal", "nonfinite")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="per-layer table of parameter distributions of a model or checkpoint",
        description=(
            "Summarise every parameter tensor of a model (a registry name, randomly initialised, or a "
            "checkpoint: .safetensors written by nndist, or a CIFAR ResNet / paper CNN .th/.pt): n, mean, "
            "std, min, max, skew, excess kurtosis, quantiles, KS distance to a normal."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_OR_CHECKPOINT", help="model name or checkpoint path")
    p.add_argument("--init", help="for a model name: initialisation scheme (orthogonal, kaiming_normal, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    p.add_argument("--out", type=Path, help="also write the full table to FILE.csv or FILE.parquet")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import pandas as pd
    import torch

    from ..errors import NndistError
    from ..inits import init_model
    from ..io import write_parquet, write_text
    from ..models import load_model_spec
    from ..stats.weightstats import weight_table

    torch.manual_seed(args.seed)
    model, info = load_model_spec(args.model)
    if args.init:
        if info["weights"] is not None:
            raise NndistError("--init applies to a model name, not to a checkpoint; drop --init")
        init_model(model, args.init, seed=args.seed)
    table = weight_table(model)
    if args.out is not None:
        suffix = args.out.suffix.lower()
        if suffix == ".csv":
            write_text(args.out, table.to_csv(index=False))
        elif suffix == ".parquet":
            write_parquet(args.out, table)
        else:
            raise NndistError(f"--out must end in .csv or .parquet, got {args.out}")
    source = info["weights"] or f"{info['name']} (random init{', ' + args.init if args.init else ''}, seed {args.seed})"
    print(f"{info['name']}: {sum(int(p.numel()) for p in model.parameters()):,} parameters from {source}")
    with pd.option_context("display.max_rows", None, "display.width", 200, "display.float_format", "{:.4g}".format):
        print(table[[c for c in SHOWN if c in table.columns]].to_string(index=False))
    if "nonfinite" in table.columns and (table["nonfinite"] > 0).any():
        bad = table[table["nonfinite"] > 0]
        listed = ", ".join(f"{r.layer}.{r.param} ({int(r.nonfinite)})" for r in bad.itertuples())
        print(f"warning: {int(bad['nonfinite'].sum())} non-finite (NaN or Inf) value(s) in: {listed}; "
              "the other columns of these rows summarise the finite values")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0

"""``nndist weights``: the distribution of every tensor of a weights file, folder or model."""

from __future__ import annotations

import argparse
from pathlib import Path

EXAMPLES = """examples:
  nndist weights Llama-3.2-1B/ --group 'model.layers.*'       # a sharded Hugging Face folder, per block
  nndist weights model.safetensors.index.json --out llama.parquet
  nndist weights resnet50-0676ba61.pth --group layer --per-channel --out r50.csv
  nndist weights runs/quick/checkpoints/orthogonal/after.safetensors
  nndist weights paper_cnn --init orthogonal --seed 1          # a registry model, randomly initialised
"""

#: Columns printed on the terminal; --out gets every column.
SHOWN = ("layer", "param", "shape", "dtype", "channel", "n", "mean", "std", "min", "max", "skew", "kurtosis",
         "ks_normal", "nonfinite")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "weights",
        help="table of the value distribution of every tensor of a weights file, folder or model",
        description=(
            "Summarise every tensor of a checkpoint without its model code, one tensor at a time "
            "(memory: about the largest tensor): a .safetensors file, a sharded Hugging Face folder or "
            "its *.index.json (every shard), a PyTorch .pt/.pth/.bin state dict (also nested under "
            "state_dict, model, module, ...; read with weights_only=True), or a .npz. A registry model "
            "name is randomly initialised (--init, --seed). Per tensor: n, mean, std, min, max, skew, "
            "excess kurtosis, quantiles, KS distance to a normal; integer and bool tensors are listed."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="WEIGHTS_OR_MODEL", help="weights file or folder, or a model name")
    p.add_argument("--init", help="for a model name: initialisation scheme (orthogonal, kaiming_normal, ...)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    p.add_argument("--group", default="tensor",
                   help="rows per 'tensor' (default), 'layer' (name up to the last dot), 'block' (up to the "
                        "first number: model.layers.3) or a pattern such as 'model.layers.*'")
    p.add_argument("--per-channel", action="store_true", help="also one row per dim-0 slice (output channel)")
    p.add_argument("--key", help="for a PyTorch file: the entry holding the state dict (e.g. state_dict_ema)")
    p.add_argument("--out", type=Path, help="also write the full table to FILE.csv or FILE.parquet")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _open(args: argparse.Namespace):
    """The tensor source and a one-line description of it."""
    import torch

    from ..errors import NndistError
    from ..inits import init_model
    from ..models import MODELS, TORCHVISION_PREFIX, build_model
    from ..models.registry import get_model_spec, is_path_like
    from ..models.weightfiles import ModuleSource, open_weights

    spec = str(args.model)
    if Path(spec).exists() or is_path_like(spec):
        if args.init:
            raise NndistError("--init applies to a model name, not to a weights file; drop --init")
        src = open_weights(spec, key=args.key)
        infos = list(src.infos.values())
        prefix = f", prefix {src.prefix!r} stripped" if src.prefix else ""
        shards = f" in {len(src.files)} files" if len(src.files) > 1 else ""
        what = (f"{spec}: {len(infos)} tensors{shards} ({sum(i.summarised for i in infos)} summarised), "
                f"{sum(i.numel for i in infos):,} values{prefix}")
        return src, what
    if not (spec in MODELS or spec.startswith(TORCHVISION_PREFIX)):
        get_model_spec(spec)  # raises the listing of the valid names
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        model = build_model(spec)
        if args.init:
            init_model(model, args.init, seed=args.seed)
    n = sum(int(p.numel()) for p in model.parameters())
    return ModuleSource(model), f"{spec}: {n:,} parameters from random init{', ' + args.init if args.init else ''}, seed {args.seed}"


class _Probe(Exception):
    pass


def _check_out(path: Path) -> None:
    """Fails now, with the error the final write would give, rather than after reading every tensor."""
    from ..errors import NndistError
    from ..io import atomic_path

    if path.suffix.lower() not in (".csv", ".parquet"):
        raise NndistError(f"--out must end in .csv or .parquet, got {path}")
    try:
        with atomic_path(path):  # creates and removes a temporary file beside it
            raise _Probe
    except _Probe:
        pass


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from ..stats.weightstats import weight_table, write_table

    if args.out is not None:
        _check_out(args.out)
    src, what = _open(args)
    with src:
        table = weight_table(src, group=args.group, per_channel=args.per_channel, progress=not args.no_progress)
    if args.out is not None:
        write_table(table, args.out)
    print(what)
    with pd.option_context("display.max_rows", None, "display.width", 220, "display.max_colwidth", 60,
                           "display.float_format", "{:.4g}".format):
        print(table[[c for c in SHOWN if c in table.columns]].to_string(index=False))
    whole = table[table["channel"].isna()] if "channel" in table else table
    if (whole["nonfinite"].fillna(0) > 0).any():
        bad = whole[whole["nonfinite"].fillna(0) > 0]
        listed = ", ".join(f"{r.layer}.{r.param} ({int(r.nonfinite)})" for r in bad.itertuples())
        print(f"warning: {int(bad['nonfinite'].sum())} non-finite (NaN or Inf) value(s) in: {listed}; "
              "the other columns of these rows summarise the finite values")
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0

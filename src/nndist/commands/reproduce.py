"""``nndist reproduce``: the paper's initialisation study, end to end."""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from ..errors import NndistError

EXAMPLES = """examples:
  nndist reproduce --profile quick --data shapes --out runs/demo
  nndist reproduce --profile quick --data ../shared/data/cifar10-jpeg --out runs/quick
  nndist reproduce --profile paper --data cifar10 --out runs/paper
  nndist reproduce --inits orthogonal,zeros --epochs 1 --train-samples 2000 --every-epoch --out runs/small
  nndist reproduce --resume runs/paper          # continue a killed run
"""


def _csv(value: str) -> tuple[str, ...]:
    items = tuple(v.strip() for v in value.split(",") if v.strip())
    if not items:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return items


def _floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {value!r}") from None


def _samples(value: str) -> int | str:
    from ..reproduce import parse_samples

    try:
        return parse_samples(value)
    except NndistError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "reproduce",
        help="train the paper's CNN from several initialisations and measure distributions",
        description=(
            "Train the paper's CNN (Table 1) with Adam from each initialisation scheme on the same "
            "batches and measure weight, bias and feature distributions of the studied layers before "
            "and after training. Writes tables, checkpoints, figures, TensorBoard events, the paper's "
            "claims and an HTML report into --out."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="JSON file of options (keys as in manifest.json's config); flags override it")
    p.add_argument("--profile", choices=["quick", "paper"], help="quick: 10K/2K images, 3 epochs; paper: all data, 50 epochs (default quick)")
    p.add_argument("--data", help="cifar10 (torchvision download), shapes (built in), or PATH to an image folder with train/ and test/ (default cifar10)")
    p.add_argument("--model", help="model name (default paper_cnn)")
    p.add_argument("--inits", type=_csv, help="comma-separated init schemes (default: the paper's seven)")
    p.add_argument("--layers", type=_csv, help="comma-separated module names to study (default conv1,conv2,conv3,fc1)")
    p.add_argument("--epochs", type=int, help="training epochs (quick: 3, paper: 50)")
    p.add_argument("--train-samples", type=_samples, help="training images, an integer or 'all' (class-stratified subset)")
    p.add_argument("--valid-samples", type=_samples, help="held-out images, an integer or 'all'")
    p.add_argument("--batch-size", type=int, help="Adam batch size (default 64)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, help="Adam weight decay (default 0)")
    p.add_argument("--seed", type=int, help="data-order seed (default 0)")
    p.add_argument("--seeds", type=int, help="initialisation seeds per scheme (default 1)")
    p.add_argument("--gain", type=float, help="gain for the init schemes (default: ReLU gain for Kaiming, 1 otherwise)")
    p.add_argument("--bias-init", help="bias initialisation override: default, zeros, ones or a number")
    p.add_argument("--every-epoch", action="store_true", default=None, help="also measure distributions after every epoch")
    p.add_argument("--mean", type=_floats, help="per-channel normalisation mean, e.g. 0.4914,0.4822,0.4465")
    p.add_argument("--std", type=_floats, help="per-channel normalisation std, e.g. 0.2470,0.2435,0.2616")
    p.add_argument("--device", help="cpu, cuda or auto (default auto)")
    p.add_argument("--checkpoint-every", type=int, help="also save training state every K steps")
    p.add_argument("--skip-bad-images", action="store_true", default=None, help="skip unreadable images (listed in the manifest)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/reproduce)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    group.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run (its saved options are used)")
    p.add_argument("--no-report", action="store_true", help="write tables only: no figures, TensorBoard, claims or report (nndist report adds them later)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


FLAG_FIELDS = (
    "profile", "data", "model", "inits", "layers", "epochs", "train_samples", "valid_samples", "batch_size", "lr",
    "weight_decay", "seed", "seeds", "gain", "bias_init", "every_epoch", "mean", "std", "device", "checkpoint_every",
    "skip_bad_images",
)


def config_from_args(args: argparse.Namespace):
    """Builds the config: defaults, then --config's file (or a resumed run's), then flags."""
    from ..reproduce import ReproduceConfig

    values: dict = {}
    source = None
    if args.resume is not None:
        source = args.resume / "manifest.json"
        if not source.is_file():
            raise NndistError(f"--resume {args.resume}: no manifest.json there, so it is not a run directory to resume")
    elif args.config is not None:
        source = args.config
    if source is not None:
        try:
            loaded = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise NndistError(f"cannot read options from {source}: {exc}") from None
        if args.resume is not None:
            loaded = loaded.get("config", {})
        known = {f.name for f in dataclasses.fields(ReproduceConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise NndistError(f"{source}: unknown option(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        values.update(loaded)
        for key in ("inits", "layers", "mean", "std", "from_profile"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
    for name in FLAG_FIELDS:
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    return ReproduceConfig(**values)


def run(args: argparse.Namespace) -> int:
    from ..reproduce import run_reproduce

    cfg = config_from_args(args)
    out = args.resume if args.resume is not None else (args.out or Path("runs/reproduce"))
    run_dir = run_reproduce(cfg, out, overwrite=args.overwrite, resume=args.resume is not None, progress=not args.no_progress, report=not args.no_report)
    print(f"wrote {run_dir} (report: {run_dir / 'report.html'})")
    summarise(run_dir)
    if (run_dir / "claims.csv").is_file():
        from .report import print_claims

        print_claims(run_dir / "claims.csv")
    return 0


def summarise(run_dir: Path) -> None:
    """Prints each run's final training loss and validation accuracy."""
    import pandas as pd

    loss = pd.read_parquet(run_dir / "loss.parquet")
    acc = pd.read_parquet(run_dir / "accuracy.parquet")
    if loss.empty:
        return
    last_epoch = loss["epoch"].max()
    final_loss = loss[loss["epoch"] == last_epoch].groupby(["init", "seed"], sort=False)["loss"].mean()
    valid = acc[(acc["split"] == "valid")]
    valid = valid[valid["epoch"] == valid["epoch"].max()].set_index(["init", "seed"])["accuracy"]
    print(f"{'init':<18}{'seed':>5}{'final train loss':>18}{'valid acc':>11}")
    for (init, seed), value in final_loss.items():
        print(f"{init:<18}{seed:>5}{value:>18.4f}{100 * valid.get((init, seed), float('nan')):>10.2f}%")

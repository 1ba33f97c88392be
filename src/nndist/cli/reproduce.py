"""``nndist reproduce``: the paper's initialisation study, end to end."""

from __future__ import annotations

import argparse
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
    if value == "all":
        return "all"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: must be a positive integer or 'all'")
    return n


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
    p.add_argument("--keep-state", action="store_true", help="keep the resume state (state/) after the run has finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


FLAG_FIELDS = (
    "profile", "data", "model", "inits", "layers", "epochs", "train_samples", "valid_samples", "batch_size", "lr",
    "weight_decay", "seed", "seeds", "gain", "bias_init", "every_epoch", "mean", "std", "device", "checkpoint_every",
    "skip_bad_images",
)


def run(args: argparse.Namespace) -> int:
    from ..studies import ReproduceConfig, run_reproduce
    from ..studies.options import config_from_file

    flags = {name: getattr(args, name) for name in FLAG_FIELDS if getattr(args, name) is not None}
    if args.resume is not None:
        if flags:
            raise NndistError(f"--resume reads every option from the run's manifest; drop {', '.join('--' + f.replace('_', '-') for f in flags)}")
        cfg, out = None, args.resume
    else:
        cfg = config_from_file(ReproduceConfig, args.config, **flags) if args.config is not None else ReproduceConfig(**flags)
        out = args.out or Path("runs/reproduce")
    run_dir = run_reproduce(cfg, out, overwrite=args.overwrite, resume=args.resume is not None,
                            progress=not args.no_progress, report=not args.no_report, keep_state=args.keep_state)
    print(f"wrote {run_dir}" + ("" if args.no_report else f" (report: {run_dir / 'report.html'})"))
    summarise(run_dir)
    print_claims_of(run_dir)
    return 0


def summarise(run_dir: Path) -> None:
    """Prints each run's final training loss and validation accuracy."""
    from ..results import load_run

    run = load_run(run_dir)
    finals, acc = run.final_losses(), run.table("accuracy")
    if finals.empty:
        return
    valid = acc[acc["split"] == "valid"] if acc is not None else None
    last = valid[valid["epoch"] == valid.groupby(["init", "seed"])["epoch"].transform("max")] if valid is not None else None
    acc_of = {} if last is None else {(r.init, int(r.seed)): float(r.accuracy) for r in last.itertuples()}
    print(f"{'init':<18}{'seed':>5}{'final train loss':>18}{'valid acc':>11}")
    for r in finals.itertuples():
        print(f"{r.init:<18}{int(r.seed):>5}{r.final_loss:>18.4f}{100 * acc_of.get((r.init, int(r.seed)), float('nan')):>10.2f}%")


def print_claims_of(run_dir: Path) -> None:
    """Prints the claims of a run whose report was written."""
    from ..results.layout import CLAIMS
    from .report import print_claims

    if (run_dir / CLAIMS).is_file():
        print_claims(run_dir / CLAIMS)

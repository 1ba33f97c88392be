"""``nndist gradients``: per-channel Emission and Absorption over a dataset."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import NndistError

EXAMPLES = """examples:
  nndist gradients --model cifar_resnet20 --weights ../shared/models/resnet20-12fca82f.th \\
      --data ../shared/data/cifar10-jpeg --samples 10000 --out runs/grad20
  nndist gradients --model cifar_resnet56 --weights resnet56-4bfd9763.th --data cifar10 --layers layer1.0.conv1,linear
  nndist gradients --model paper_cnn --weights runs/quick/checkpoints/orthogonal/after.safetensors --data shapes
  nndist gradients --model torchvision:resnet50 --weights IMAGENET1K_V1 --data /data/imagenet --split test
  nndist gradients --model torchvision:resnet50 --weights DEFAULT --data /imagenet --layers-like-author \\
      --definition author_code --figure author --channels 15 --layer-figures all
  nndist gradients --model torchvision:vit_b_16 --data ../shared/data/cifar10-jpeg --samples 64 --image-size 224
  nndist gradients --resume --out runs/grad20          # continue a killed run (options from its manifest)
"""


def _names(value: str) -> str | tuple[str, ...]:
    """``all``, ``none``, ``auto`` or comma-separated names."""
    if value in ("all", "none", "auto"):
        return value
    return tuple(v.strip() for v in value.split(",") if v.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gradients",
        help="per-channel Emission and Absorption of every conv/linear layer over a dataset",
        description=(
            "Stream samples through the model and measure, per sample and channel, the Local "
            "Gradients' Emission and Absorption (paper section 2.2) of every layer that maps channels "
            "linearly (convolutions of any dimension, transposed convolutions, linear layers, attention "
            "projections). Writes gradients.parquet, per-sample arrays, channel-to-channel matrices, an "
            "overview figure, Figure 4 of the layers asked for, TensorBoard events and an HTML report. The "
            "model runs in eval mode (train mode, one image at a time, with --definition author_code). "
            "--resume reads every option from the run's manifest."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", help="model name: cifar_resnet20/32/44/56/110, paper_cnn, torchvision:NAME")
    p.add_argument("--weights", help="checkpoint path (.th/.pt/.safetensors) or a torchvision weights name")
    p.add_argument("--data", default="cifar10", help="cifar10, shapes or PATH to an image folder (default cifar10)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split (default test)")
    p.add_argument("--samples", default="all", help="number of samples or 'all' (class-stratified subset; default all)")
    p.add_argument("--batch-size", type=int, default=128, help="samples per batch (default 128)")
    p.add_argument("--layers", help="comma-separated module names (default: every handled layer)")
    p.add_argument("--layers-like-author", action="store_true",
                   help="a torchvision ResNet's layers as the published code indexes them (stem conv 0, then conv1/2/3 of each block)")
    p.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "logit"], help="per-sample loss whose gradient is measured")
    p.add_argument("--definition", default="paper", choices=["paper", "author_code"],
                   help="paper: eq. 19-20 (default); author_code: the published code's Emission, Absorption and backward seed")
    p.add_argument("--figure", default="paper", choices=["paper", "author"], help="draw Figure 4 the paper's way or the published code's")
    p.add_argument("--channels", type=int, default=15, help="channels per layer in Figure 4 (default 15)")
    p.add_argument("--layer-figures", type=_names, default="none",
                   help="layers that get their own Figure 4 and heatmap: none (default; the overview only), all, or names")
    p.add_argument("--channel-matrices", type=_names, default="auto",
                   help="layers whose mean ||LG c1->c2|| matrix is kept: auto (up to 256x256 entries; default), all, none or names")
    p.add_argument("--image-size", type=int, help="resize images to this size (models that take any size)")
    p.add_argument("--keep-head", action="store_true", help="keep a torchvision model's own head on data with other classes")
    p.add_argument("--no-per-sample", action="store_true", help="do not keep per-sample values (only summaries)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset, of random weights and of a replaced head (default 0)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images (listed in the manifest)")
    p.add_argument("--out", type=Path, default=Path("runs/gradients"), help="run directory (default runs/gradients)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    group.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-report", action="store_true", help="write tables only: no figures, TensorBoard, claims or report (nndist report adds them later)")
    p.add_argument("--keep-state", action="store_true", help="keep the resume state (state/) after the run has finished")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import parse_samples
    from ..studies import GradientsConfig, run_gradients
    from .reproduce import print_claims_of

    cfg = None if args.resume else GradientsConfig(
        model=args.model,
        weights=args.weights,
        data=args.data,
        split=args.split,
        samples=parse_samples(str(args.samples)),
        batch_size=args.batch_size,
        layers=tuple(v.strip() for v in args.layers.split(",") if v.strip()) if args.layers else None,
        layers_like_author=args.layers_like_author,
        loss=args.loss,
        definition=args.definition,
        figure=args.figure,
        channels=args.channels,
        layer_figures=args.layer_figures,
        channel_matrices=args.channel_matrices,
        image_size=args.image_size,
        keep_head=args.keep_head,
        per_sample=not args.no_per_sample,
        seed=args.seed,
        device=args.device,
        skip_bad_images=args.skip_bad_images,
    )
    if cfg is not None and args.model is None:
        raise NndistError("--model is required (a model name such as cifar_resnet20, or torchvision:NAME)")
    out = run_gradients(cfg, args.out, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress, report=not args.no_report, keep_state=args.keep_state)
    print(f"wrote {out}" + ("" if args.no_report else f" (report: {out / 'report.html'})"))
    print(summary_line(out))
    print_claims_of(out)
    return 0


def summary_line(run_dir: Path) -> str:
    """Measured, unsupported (count and types) and no-local-gradient layers of a gradients run."""
    from collections import Counter

    from ..results import load_run

    m = load_run(run_dir).manifest
    uns = Counter(m.get("unsupported", {}).values())
    types = ", ".join(f"{t} x{c}" if c > 1 else t for t, c in sorted(uns.items()))
    return (f"{len(m.get('layers', {}))} layers measured ({m.get('n_samples')} samples); "
            f"unsupported: {sum(uns.values())}" + (f" ({types})" if types else "")
            + f"; no channel-to-channel gradient: {len(m.get('no_local_gradient', {}))}")

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
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "gradients",
        help="per-channel Emission and Absorption of every conv/linear layer over a dataset",
        description=(
            "Stream samples through the model and measure, per sample and channel, the Local "
            "Gradients' Emission and Absorption (paper section 2.2) of every Conv2d and Linear layer. "
            "Writes gradients.parquet, per-sample arrays, channel-to-channel matrices, Figure 4, "
            "heatmaps, TensorBoard events and an HTML report. The model runs in eval mode."
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
    p.add_argument("--layers", help="comma-separated module names (default: every Conv2d and Linear)")
    p.add_argument("--loss", default="cross_entropy", choices=["cross_entropy", "logit"], help="per-sample loss whose gradient is measured")
    p.add_argument("--no-per-sample", action="store_true", help="do not keep per-sample values (only summaries)")
    p.add_argument("--seed", type=int, default=0, help="subset seed (default 0)")
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
        loss=args.loss,
        per_sample=not args.no_per_sample,
        seed=args.seed,
        device=args.device,
        skip_bad_images=args.skip_bad_images,
    )
    if cfg is not None and args.model is None:
        raise NndistError("--model is required (a model name such as cifar_resnet20, or torchvision:NAME)")
    out = run_gradients(cfg, args.out, overwrite=args.overwrite, resume=args.resume, progress=not args.no_progress, report=not args.no_report, keep_state=args.keep_state)
    print(f"wrote {out}" + ("" if args.no_report else f" (report: {out / 'report.html'})"))
    print_claims_of(out)
    return 0

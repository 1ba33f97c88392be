"""``nndist evaluate``: top-1 accuracy of a model on a data split."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  nndist evaluate --model cifar_resnet20 --weights ../shared/models/resnet20-12fca82f.th \\
      --data ../shared/data/cifar10-jpeg
  nndist evaluate --model runs/quick/checkpoints/orthogonal/after.safetensors --data shapes
  nndist evaluate --model paper_cnn --weights after.safetensors --data cifar10 --samples 1000
  nndist evaluate --model torchvision:resnet18 --weights IMAGENET1K_V1 --data /data/imagenet-folder
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        help="top-1 accuracy of a model on a data split",
        description=(
            "Evaluate a model (registry name with --weights, or a checkpoint path) on a split of a data "
            "source, normalised as the model expects, and print top-1 accuracy and mean cross-entropy."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model name (paper_cnn, cifar_resnet20, torchvision:NAME) or a checkpoint path")
    p.add_argument("--weights", help="checkpoint path (.th/.pt/.pth/.safetensors) or a torchvision weights name")
    p.add_argument("--data", default="cifar10", help="cifar10, shapes or PATH to an image folder with train/ and test/ (default cifar10)")
    p.add_argument("--split", default="test", choices=["train", "test"], help="which split (default test)")
    p.add_argument("--samples", default="all", help="number of samples (class-stratified subset) or 'all' (default all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the subset (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch (default 256)")
    p.add_argument("--image-size", type=int, help="resize images to this size (default: keep)")
    p.add_argument("--resize", choices=["cifar", "imagenet"], help="resize mode (default imagenet for torchvision models, else cifar)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data import parse_samples
    from ..studies import evaluate_model

    result = evaluate_model(
        args.model, args.weights, data=args.data, split=args.split, samples=parse_samples(str(args.samples)),
        seed=args.seed, batch_size=args.batch_size, image_size=args.image_size, resize=args.resize,
        skip_bad_images=args.skip_bad_images, device=args.device, progress=not args.no_progress,
    )
    print(f"top1={result['top1']:.2f}% n={result['n']} loss={result['loss']:.4f}")
    if result["bad_files"]:
        print(f"skipped {len(result['bad_files'])} bad file(s): {', '.join(result['bad_files'][:5])}")
    return 0

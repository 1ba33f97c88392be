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
    from ..data import load_split, stratified_subset
    from ..errors import NndistError
    from ..models import create_model, get_model_spec, load_model_spec, evaluate

    if args.batch_size < 1:
        raise NndistError(f"--batch-size must be positive, got {args.batch_size}")
    if args.weights is None:
        model, info = load_model_spec(args.model)
        spec = info["spec"]
    else:
        spec = get_model_spec(args.model)
        model = create_model(args.model, weights=args.weights)
    resize = args.resize or ("imagenet" if spec.input_size is None else "cifar")
    data = load_split(
        args.data, args.split, image_size=args.image_size, resize=resize,
        skip_bad_images=args.skip_bad_images, progress=not args.no_progress,
    )
    samples = args.samples if args.samples == "all" else _int(args.samples)
    if samples != "all" and not 1 <= samples <= len(data):
        raise NndistError(
            f"--samples {samples}: the {args.split} split of {args.data} has {len(data)} images; "
            f"pass a number from 1 to {len(data)}, or 'all'"
        )
    if samples != "all":
        data = data.subset(stratified_subset(data.labels, samples, seed=args.seed))
    device = None if args.device == "auto" else args.device
    result = evaluate(model, data, batch_size=args.batch_size, device=device, progress=not args.no_progress,
                      mean=spec.mean, std=spec.std)
    print(f"top1={result['top1']:.2f}% n={result['n']} loss={result['loss']:.4f}")
    if data.bad_files:
        print(f"skipped {len(data.bad_files)} bad file(s): {', '.join(data.bad_files[:5])}")
    return 0


def _int(value: str) -> int:
    from ..errors import NndistError

    try:
        return int(value)
    except ValueError:
        raise NndistError(f"--samples must be a number or 'all', got {value!r}") from None

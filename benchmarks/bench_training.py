"""One epoch of all seven initialisations: nndist's batched training vs the straightforward way.

Straightforward: torchvision ImageFolder + DataLoader (PIL decode, ToTensor, Normalize every
epoch) and seven sequential training loops. nndist: the split decoded once into a cached uint8
tensor, normalised once, batches by indexing, and the seven inits trained together
(nndist.studies.training.RunSet: channels-last forward, one fused Adam). Same model, optimiser, batch
size and batch order; both in this one process, back to back.

Also reports the largest difference between a run trained in the set and the same model trained
by the plain loop (module forward, default Adam): float32 rounding of two different op orders.

Usage: python benchmarks/bench_training.py [--samples N] [--data PATH]
Last line: speedup=<straightforward time / nndist time>
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nndist.data import generate_shapes, load_split, stratified_subset  # noqa: E402
from nndist.paper import CIFAR10_MEAN, CIFAR10_STD  # noqa: E402
from nndist.inits import PAPER_INITS, init_model  # noqa: E402
from nndist.models import create_model  # noqa: E402
from nndist.studies.training import RunSet, run_adam  # noqa: E402


def image_folder(args) -> Path:
    if args.data:
        return Path(args.data)
    env = os.environ.get("NNDIST_DATA_DIR")
    if env and (Path(env) / "cifar10-jpeg").is_dir():
        return Path(env) / "cifar10-jpeg"
    shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"
    if shared.is_dir():
        return shared
    # No real data: write the built-in shapes as a PNG image folder.
    from PIL import Image

    root = Path(tempfile.mkdtemp(prefix="nndist-bench-"))
    for split, n in (("train", args.samples), ("test", 100)):
        images, labels = generate_shapes(n, seed=0)
        for i, (im, lab) in enumerate(zip(images, labels)):
            d = root / split / f"c{int(lab)}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im.permute(1, 2, 0).numpy()).save(d / f"{i:05d}.png")
    return root


def models():
    out = []
    for s in PAPER_INITS:
        m = create_model("paper_cnn")
        init_model(m, s, generator=1)
        out.append(m)
    return out


def straightforward(root: Path, indices: np.ndarray, batch: int) -> float:
    import torchvision
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms

    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)])
    ds = Subset(torchvision.datasets.ImageFolder(str(root / "train"), transform=tf), indices.tolist())
    t0 = time.perf_counter()
    for model in models():
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, generator=torch.Generator().manual_seed(0))
        for x, y in loader:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return time.perf_counter() - t0


def batched(root: Path, indices: np.ndarray, batch: int) -> float:
    data = load_split(str(root), "train", progress=False)  # decoded once, cached (cache warm here)
    t0 = time.perf_counter()
    x = data.normalized(CIFAR10_MEAN, CIFAR10_STD, indices=indices)
    y = data.labels[indices]
    runs = RunSet(models())
    opt = run_adam(runs, lr=1e-4)
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(indices), batch):
        idx = order[start : start + batch]
        runs.step(opt, x[idx], y[idx])
    return time.perf_counter() - t0


def stack_vs_alone(steps: int = 20) -> float:
    """Largest parameter difference after ``steps`` Adam steps, in the set vs the plain loop."""
    torch.manual_seed(0)
    ms = models()
    alone = [copy.deepcopy(m) for m in ms]
    runs = RunSet(ms)
    opt = run_adam(runs, lr=1e-4)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-4) for m in alone]
    for _ in range(steps):
        x, y = torch.randn(64, 3, 32, 32), torch.randint(0, 10, (64,))
        runs.step(opt, x, y)
        for m, o in zip(alone, opts):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    diff = 0.0
    for r, m in enumerate(alone):
        for p, q in zip(runs.models[r].parameters(), m.parameters()):
            diff = max(diff, (p - q).abs().max().item())
    return diff


def main() -> None:
    from nndist.allocator import tune_allocator

    tune_allocator()  # as the nndist command does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50000, help="training images (default 50000, all of CIFAR-10)")
    ap.add_argument("--data", help="image folder with train/ (default: $NNDIST_DATA_DIR/cifar10-jpeg or ../shared/data)")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()
    root = image_folder(args)
    labels = load_split(str(root), "train", progress=False).labels
    indices = stratified_subset(labels, min(args.samples, len(labels)), seed=0)
    t_batched = batched(root, indices, args.batch_size)
    t_plain = straightforward(root, indices, args.batch_size)
    diff = stack_vs_alone()
    print(f"data: {root} ({len(indices)} training images), 7 inits, batch {args.batch_size}, torch threads {torch.get_num_threads()}")
    print(f"{'method':<44}{'seconds':>10}")
    print(f"{'ImageFolder + DataLoader + 7 sequential loops':<44}{t_plain:>10.1f}")
    print(f"{'nndist (cached tensor, 7 inits batched)':<44}{t_batched:>10.1f}")
    print(f"max |set - plain loop| after 20 Adam steps: {diff:.3g}")
    print(f"speedup={t_plain / t_batched:.2f}")


if __name__ == "__main__":
    main()

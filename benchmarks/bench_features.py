"""Cost of streaming feature summaries over a split, against the plain forward passes.

Runs the paper CNN over N images (eval mode, no grad, batches of 1000) twice in one process:
plain forward passes, and forward passes with nndist's streamed summaries (moments, quantile
sketch, histogram) of the four studied layers' outputs. Quantiles come from the mergeable
sketch: no feature tensor outlives its batch.

Usage: python benchmarks/bench_features.py [--samples N]
Last line: overhead=<(with summaries - plain) / plain>
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nndist.models import create_model  # noqa: E402
from nndist.paper import PAPER_LAYERS  # noqa: E402
from nndist.stats.tables import feature_summaries  # noqa: E402


def main() -> None:
    from nndist.allocator import tune_allocator

    tune_allocator()  # as the nndist command does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = create_model("paper_cnn").eval()
    x = torch.randn(args.samples, 3, 32, 32)

    def plain() -> float:
        t0 = time.perf_counter()
        with torch.no_grad():
            for s in range(0, len(x), args.batch_size):
                model(x[s : s + args.batch_size])
        return time.perf_counter() - t0

    def summarised() -> float:
        t0 = time.perf_counter()
        feature_summaries(model, PAPER_LAYERS, {"train": x}, batch_size=args.batch_size)
        return time.perf_counter() - t0

    plain(), summarised()  # warm-up
    tp = min(plain() for _ in range(args.repeats))
    ts = min(summarised() for _ in range(args.repeats))
    values = sum(o.numel() for o in [torch.empty(16 * 32 * 32), torch.empty(16 * 16 * 16), torch.empty(16 * 8 * 8), torch.empty(512)]) * args.samples
    print(f"{args.samples} images, layers {', '.join(PAPER_LAYERS)} ({values / 1e6:.0f}M feature values), threads {torch.get_num_threads()}")
    print(f"{'plain forward':<32}{tp:>8.2f} s")
    print(f"{'forward + streamed summaries':<32}{ts:>8.2f} s")
    print(f"overhead={(ts - tp) / tp:.2f}")


if __name__ == "__main__":
    main()

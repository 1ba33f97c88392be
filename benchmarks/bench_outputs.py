"""Run-directory size and post-processing time of ``nndist gradients`` on real models.

For each torchvision model (random weights, offline), ``--samples`` CIFAR-10 test images
(``$NNDIST_DATA_DIR/cifar10-jpeg`` or ``../shared/data``, else the built-in ``shapes``) resized to
``--image-size``, this runs the gradients study with its defaults and reports the measurement time
(the Emission/Absorption pass), the post-processing time (figures, TensorBoard events, claims and the
HTML report) and the size of the run directory. Targets (``vit_b_16``, 64 samples): the directory at
most 150 MB, post-processing no longer than the measurement.

Usage: ``PYTHONPATH=src python benchmarks/bench_outputs.py [--models vit_b_16,swin_t] [--samples 64]``.
Last line: ``size_mb=<vit_b_16's> post_over_measure=<vit_b_16's>`` (or the first model's).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from nndist.studies import GradientsConfig, run_gradients  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
MODELS = ("vit_b_16", "swin_t", "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small")


def data_source() -> str:
    root = Path(os.environ["NNDIST_DATA_DIR"]) if os.environ.get("NNDIST_DATA_DIR") else SHARED
    return str(root / "cifar10-jpeg") if (root / "cifar10-jpeg").is_dir() else "shapes"


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--image-size", type=int, default=224)
    args = ap.parse_args()
    data = data_source()
    rows = []
    with tempfile.TemporaryDirectory(prefix="nndist-bench-outputs-") as tmp:
        for name in args.models.split(","):
            out = Path(tmp) / name
            t0 = time.perf_counter()
            run_gradients(GradientsConfig(model=f"torchvision:{name}", data=data, samples=args.samples, batch_size=args.batch_size,
                                          image_size=args.image_size, device="cpu"), out, progress=False)
            wall = time.perf_counter() - t0
            m = json.loads((out / "manifest.json").read_text())
            t = m["timings"]
            rows.append((name, len(m["layers"]), t["measure"], t["report"], wall, size_mb(out)))
            print(f"{name}: {len(m['layers'])} layers, measure {t['measure']:.1f} s, post-processing {t['report']:.1f} s, "
                  f"wall {wall:.1f} s, run directory {rows[-1][-1]:.1f} MB", flush=True)
    print(f"\ndata {data}, {args.samples} samples at {args.image_size} px, batch {args.batch_size}, random weights")
    print(f"{'model':<22}{'layers':>7}{'measure s':>11}{'post s':>9}{'post/measure':>14}{'dir MB':>9}")
    for name, layers, measure, post, _, mb in rows:
        print(f"{name:<22}{layers:>7}{measure:>11.1f}{post:>9.1f}{post / measure:>14.2f}{mb:>9.1f}")
    first = next((r for r in rows if r[0] == "vit_b_16"), rows[0])
    print(f"size_mb={first[5]:.1f} post_over_measure={first[3] / first[2]:.2f}")


if __name__ == "__main__":
    main()

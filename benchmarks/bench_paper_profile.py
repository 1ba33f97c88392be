"""The paper profile's wall time, estimated from one epoch of it.

Runs ``nndist reproduce --profile paper`` (all of CIFAR-10: ``$NNDIST_DATA_DIR/cifar10-jpeg`` or
``../shared/data``; 7 inits) for one epoch, as the command does (allocator tuning included), reads
the manifest's timings and prints the measured parts: data load, the measurements before and after
training, one epoch (its 782 steps, the epoch-end validation of 10,000 images x 7 runs and the
state save), and figures, TensorBoard, claims and report. The full profile trains 50 epochs, so

    estimate = load + measure before + measure after + report + 50 x epoch

(the measurements do not depend on the number of epochs).

Usage: ``PYTHONPATH=src python benchmarks/bench_paper_profile.py [--data PATH]``.
Last line: ``estimate_s=<seconds>``.
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

from nndist.allocator import tune_allocator  # noqa: E402
from nndist.paper import PAPER_EPOCHS  # noqa: E402
from nndist.studies import ReproduceConfig, run_reproduce  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    tune_allocator()  # as the nndist command does
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    root = Path(os.environ["NNDIST_DATA_DIR"]) if os.environ.get("NNDIST_DATA_DIR") else SHARED
    ap.add_argument("--data", default=str(root / "cifar10-jpeg"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nndist-bench-paper-") as tmp:
        t0 = time.perf_counter()
        run = run_reproduce(ReproduceConfig(profile="paper", data=args.data, epochs=1, device="cpu"), Path(tmp) / "run", progress=False)
        wall = time.perf_counter() - t0
        t = json.loads((run / "manifest.json").read_text())["timings"]
    parts = {
        "data load": t["load_data"],
        "measurements before training": t["measure_before"],
        "measurements after training": t["measure_after"],
        "one epoch (782 steps, validation, state)": t["train"],
        "figures, TensorBoard, claims, report": t["report"],
    }
    print(f"paper profile, 1 epoch of {PAPER_EPOCHS}, data {args.data}; one-epoch run wall {wall:.0f} s")
    for name, seconds in parts.items():
        print(f"{name:<44}{seconds:>9.1f} s")
    estimate = t["load_data"] + t["measure_before"] + t["measure_after"] + t["report"] + PAPER_EPOCHS * t["train"]
    print(f"{'estimate for ' + str(PAPER_EPOCHS) + ' epochs':<44}{estimate:>9.0f} s ({estimate / 60:.1f} min)")
    print(f"estimate_s={estimate:.0f}")


if __name__ == "__main__":
    main()

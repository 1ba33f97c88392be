"""Runs every benchmark (each in its own process) and prints one table of their last lines."""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = [
    ("bench_stats.py", []),
    ("bench_features.py", []),
    ("bench_gradients.py", []),
    ("bench_training.py", []),
    ("bench_monitor.py", []),
]


def main() -> int:
    rows = []
    for script, extra in BENCHMARKS:
        t0 = time.perf_counter()
        print(f"== {script}", flush=True)
        done = subprocess.run([sys.executable, str(HERE / script), *extra], text=True, capture_output=True)
        print(done.stdout, end="")
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
        last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else f"failed ({done.returncode})"
        rows.append((script, last, time.perf_counter() - t0))
    print(f"\nmachine: {platform.processor() or platform.machine()}, {platform.platform()}")
    print(f"{'benchmark':<22}{'result':<64}{'wall s':>8}")
    for script, last, secs in rows:
        print(f"{script:<22}{last:<64}{secs:>8.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

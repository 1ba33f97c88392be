"""Benchmark: ``Summary.update`` on a conv layer's output against the conv forward that made it.

In one process, interleaved round by round so that load from other jobs hits every method alike:

(a) the forward of ``Conv2d(3, 16, 3, padding=1)`` on a (200, 3, 32, 32) float32 batch, giving a
    (200, 16, 32, 32) float32 output (3.3M values);
(b) ``Summary().update(output)`` (a fresh scalar summary each time);
(c) per-channel mode: ``update(x)`` of a (128, 512) float32 ``x`` into a persistent
    ``Summary(channels=512)`` (the use: once per batch per layer), and into a fresh one.

``--baseline PATH`` also times (b) and (c) with another copy of ``stats.py`` (for instance the
previous version from ``git show HEAD:src/nndist/stats.py > /tmp/stats_old.py``), in the same
rounds, so old and new are compared back to back on the same machine state.

Times are the minimum and median of ``--repeats`` rounds after one warm-up. The minimum is the
better estimate of the cost on a shared machine; the median shows the noise.

Usage: ``PYTHONPATH=src python benchmarks/bench_stats.py [--repeats 15] [--threads N] [--baseline PATH]``.
The last line is ``overhead=<update time / conv forward time>`` (minimum times).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from collections.abc import Callable
from types import ModuleType

import torch

import nndist
from nndist.stats import Summary


def load_baseline(path: str) -> ModuleType:
    """Imports another copy of ``stats.py`` as ``nndist._stats_baseline`` (its relative imports work)."""
    spec = importlib.util.spec_from_file_location("nndist._stats_baseline", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = nndist.__name__
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--baseline", default=None, help="path of another stats.py to time alongside")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, 3, padding=1)
    inp = torch.randn(200, 3, 32, 32)
    with torch.no_grad():
        feat = conv(inp)
    per_channel = torch.randn(128, 512)
    keep = Summary(512)

    def forward() -> None:
        with torch.no_grad():
            conv(inp)

    methods: dict[str, Callable[[], object]] = {
        "conv forward (200,16,32,32)": forward,
        "Summary().update (3.3M f32)": lambda: Summary().update(feat),
        "Summary(512).update (128,512)": lambda: keep.update(per_channel),
        "fresh Summary(512).update": lambda: Summary(512).update(per_channel),
    }
    if args.baseline:
        old = load_baseline(args.baseline)
        methods["baseline Summary().update"] = lambda: old.Summary().update(feat)
        methods["baseline Summary(512).update"] = lambda: keep_old.update(per_channel)
        methods["baseline fresh Summary(512).update"] = lambda: old.Summary(512).update(per_channel)
        keep_old = old.Summary(512)
    times: dict[str, list[float]] = {name: [] for name in methods}
    for f in methods.values():  # warm-up
        f()
    for _ in range(args.repeats):
        for name, f in methods.items():
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)

    conv_t = min(times["conv forward (200,16,32,32)"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.repeats} rounds")
    print(f"{'method':34s} {'min ms':>9s} {'median ms':>10s} {'min / conv':>11s}")
    for name, ts in times.items():
        print(f"{name:34s} {min(ts) * 1e3:9.2f} {statistics.median(ts) * 1e3:10.2f} {min(ts) / conv_t:11.2f}")
    if args.baseline:
        for key in ("Summary().update", "Summary(512).update", "fresh Summary(512).update"):
            new = min(t for n, t in ((n, min(v)) for n, v in times.items()) if n.startswith(key))
            base = min(times[f"baseline {key}"])
            print(f"speedup {key}: {base / new:.1f}x")
    print(f"overhead={min(times['Summary().update (3.3M f32)']) / conv_t:.3f}")


if __name__ == "__main__":
    main()

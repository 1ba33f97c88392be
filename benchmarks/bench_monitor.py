"""Cost of ``nndist.Monitor`` in a training loop, against the plain loop and the hand-written TensorBoard way.

torchvision ``resnet18(num_classes=10)`` at 32x32, batch 32, SGD, in one process on the CPU
(``--device cuda``: ``resnet50`` at 224x224, batch 64). Four loops over the same fixed batch:

* plain: forward, backward, ``optimizer.step()``;
* ``Monitor(every=20)`` and ``Monitor(every=1)``: weights, grads and features of every layer with
  parameters (62 parameter tensors and 41 layer outputs for resnet18);
* the TensorBoard way: ``SummaryWriter.add_histogram`` of every parameter and gradient at every step.

The loops take their steps in turn, one step each in a random order drawn anew for every
round (interleaved step by step, so that a slow moment of a shared machine hits all of them
alike; the order is random because a step that follows the TensorBoard loop's half second of
single-threaded numpy runs slower, by about 25 ms of 210 on a 2-core VM, and a fixed order
would always give that penalty to the same loop), and every step is timed. A repeat is 20
rounds: the steps of each loop at positions 0..19 of its 20-step cycle, the ``every=20`` loop
logging at position 0. A loop's per-step cost is the mean over the 20 positions of the median
over the repeats at that position: the ``every=20`` loop's logging step counts once in 20, and
a step that a neighbour on the machine slowed down counts no more than its median allows. On
CUDA each step ends with a synchronisation, and the monitor's host syncs are counted with
``torch.cuda.set_sync_debug_mode("warn")`` around ``step()``.

What the two dense targets ask of a machine: with a plain step of P ms, a monitor that adds M ms
per logging step and the TensorBoard way that adds T ms, ``dense_overhead <= 1.5`` holds when
P >= 2M and ``tb_ratio >= 4`` when P <= (T - 4M) / 3. Both hold at once only on a machine whose
plain step lies between the two, and such a machine exists only when T >= 10 M. The line
before the last prints M, T, their ratio and that window; ``tb_ceiling`` is ``tb / plain``, the
``tb_ratio`` of a monitor that cost nothing (below 4, no monitor meets that target on the machine).

Usage: python benchmarks/bench_monitor.py [--repeats 3] [--device cpu|cuda]
Last line: sparse_overhead=<every=20 / plain> dense_overhead=<every=1 / plain> tb_ratio=<tb / every=1>
tb_ceiling=<tb / plain> tb_overhead_ratio=<(tb - plain) / (every=1 - plain)>
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import nndist  # noqa: E402


def machine(device: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = f", {torch.cuda.get_device_name()}" if device == "cuda" else ""
    return f"{cpu}, {torch.get_num_threads()} torch threads{gpu}, torch {torch.__version__}"


class Loop:
    """One training loop: the model, its optimiser and what runs at each step."""

    def __init__(self, name: str, args, kind: str, out: Path) -> None:  # noqa: ANN001
        import torchvision

        torch.manual_seed(0)
        big = args.device == "cuda"
        self.name, self.kind, self.device = name, kind, args.device
        self.model = (torchvision.models.resnet50 if big else torchvision.models.resnet18)(num_classes=10).to(args.device)
        size, batch = (224, 64) if big else (32, 32)
        g = torch.Generator().manual_seed(1)
        self.x = torch.randn(batch, 3, size, size, generator=g).to(args.device)
        self.y = torch.randint(0, 10, (batch,), generator=g).to(args.device)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.monitor = None
        self.writer = None
        self.syncs: list[int] = []
        if kind.startswith("every="):
            self.monitor = nndist.Monitor(self.model, out / name, every=int(kind.split("=")[1]))
        elif kind == "tb":
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(out / name))
        self.step_no = 0

    def step(self) -> None:
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        if self.monitor is not None:
            if self.device == "cuda":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    logged = self.monitor.step()
                    torch.cuda.set_sync_debug_mode("default")
                if logged:
                    self.syncs.append(sum("synchroniz" in str(w.message) for w in caught))
            else:
                self.monitor.step()
        if self.writer is not None:
            for name, p in self.model.named_parameters():
                self.writer.add_histogram(f"weights/{name}", p, self.step_no)
                self.writer.add_histogram(f"grads/{name}", p.grad, self.step_no)
        self.opt.step()
        self.opt.zero_grad()
        self.step_no += 1

    def timed_step(self) -> float:
        """Seconds of one step (from a synchronised device to a synchronised device)."""
        if self.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        self.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    def close(self) -> None:
        if self.monitor is not None:
            self.monitor.close(report=False)
        if self.writer is not None:
            self.writer.close()


CYCLE = 20  # steps per cycle: the sparse loop logs once in each
SPARSE = f"every={CYCLE}"  # the sparse monitor loop (its name and kind)


def per_step(by_position: list[list[float]]) -> float:
    """A loop's cost per step: the mean over cycle positions of the median at each position."""
    return statistics.mean(statistics.median(t) for t in by_position)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help=f"cycles of {CYCLE} interleaved steps per loop")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="nndist-bench-monitor-") as tmp:
        loops = [Loop(name, args, kind, Path(tmp)) for name, kind in
                 (("plain", "plain"), (SPARSE, SPARSE), ("every=1", "every=1"), ("tensorboard", "tb"))]
        for loop in loops:  # warm-up: allocator, compiled kernels, first writes (the every=20 loop logs at step 0)
            for _ in range(2):
                loop.step()
        # times[name][position]: the seconds of that loop's steps at that position of the cycle
        times: dict[str, list[list[float]]] = {loop.name: [[] for _ in range(CYCLE)] for loop in loops}
        order = random.Random(0)
        for _ in range(args.repeats * CYCLE):
            for loop in order.sample(loops, len(loops)):
                position = loop.step_no % CYCLE
                times[loop.name][position].append(loop.timed_step())
        for loop in loops:
            loop.close()
    med = {name: per_step(by_position) for name, by_position in times.items()}
    print(f"machine: {machine(args.device)}")
    print(f"{'loop':<14}{'ms/step':>10}{'per repeat (mean of its cycle, ms)':>44}")
    for name, by_position in times.items():
        cycles = [statistics.mean(t[r] for t in by_position) for r in range(args.repeats)]
        print(f"{name:<14}{1e3 * med[name]:>10.1f}{'  '.join(f'{1e3 * v:.1f}' for v in cycles):>44}")
    logging = statistics.median(times[SPARSE][0])
    print(f"{SPARSE}: its logging step {1e3 * logging:.1f} ms (median), its other steps "
          f"{1e3 * per_step(times[SPARSE][1:]):.1f} ms (mean of the medians)")
    if args.device == "cuda":
        for loop in loops:
            if loop.syncs:
                print(f"{loop.name}: host syncs per logging step {sorted(set(loop.syncs))}")
    plain, monitor, tb = med["plain"], med["every=1"] - med["plain"], med["tensorboard"] - med["plain"]
    lo, hi = 2 * monitor, (tb - 4 * monitor) / 3
    window = f"{1e3 * lo:.1f}-{1e3 * hi:.1f} ms" if lo <= hi else "none (T < 10 M)"
    print(f"per logging step over plain: monitor M={1e3 * monitor:.1f} ms, TensorBoard T={1e3 * tb:.1f} ms; "
          f"both dense targets hold on a machine whose plain step is in: {window} (here {1e3 * plain:.1f} ms)")
    print(f"sparse_overhead={med[SPARSE] / plain:.3f} dense_overhead={med['every=1'] / plain:.3f} "
          f"tb_ratio={med['tensorboard'] / med['every=1']:.2f} tb_ceiling={med['tensorboard'] / plain:.2f} "
          f"tb_overhead_ratio={tb / monitor if monitor > 0 else float('inf'):.2f}")


if __name__ == "__main__":
    main()

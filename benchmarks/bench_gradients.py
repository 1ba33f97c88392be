"""Benchmark: emission/absorption against a plain backward pass and the literal definition.

On a CIFAR ResNet-56 (random weights, eval mode), batch 128, 32x32 inputs, this machine's CPU:

(a) plain forward + ``loss.backward()`` (parameter gradients included);
(b) ``nndist.emission_absorption`` for every convolution and the linear layer;
(c) the literal definition: the same plumbing, but each convolution's handler materialises every
    local gradient ``LG^{c1->c2}`` (one grouped transposed convolution per layer producing all
    ``C_out x C_in`` maps, cropped to the input) and takes their norms.

Times are the median of ``--repeats`` runs after one warm-up, (a) and (b) interleaved (the
literal, being slow, gets half as many). Peak memory is the process's peak
resident set size (``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` elsewhere) in a fresh subprocess per method
that builds the model and batch, runs the method twice, and exits; the table also shows the peak
minus the RSS just before the first run (the memory the method itself adds).

Usage: ``PYTHONPATH=src python benchmarks/bench_gradients.py [--batch 128] [--repeats 3]``.
The last line is ``overhead_ratio=<b/a> literal_speedup=<c/b> memory_ratio=<peak b / peak a>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nndist.probes.gradients import HANDLERS, LayerGradients, conv2d_handler, emission_absorption
from nndist.probes.gradients.conv2d import _padding, grouped_result


def make_model() -> nn.Module:
    from nndist.models import create_model

    return create_model("cifar_resnet56").eval()


def make_batch(batch: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)


def literal_conv2d_handler(module: nn.Module, input: Tensor, grad_output: Tensor) -> LayerGradients:
    """Materialises all ``C_out x C_in/groups`` local gradient maps of a Conv2d, then takes norms."""
    assert isinstance(module, nn.Conv2d)
    w = module.weight.detach()  # (C_out, C_in/g, K1, K2)
    B, C_out = grad_output.shape[:2]
    cin_g = w.shape[1]
    H1, W1 = input.shape[-2:]
    ph, pw = _padding(module)
    # groups=C_out: input channel c1 scatters into its own C_in/g outputs with W[c1, j]
    full = F.conv_transpose2d(grad_output, w, stride=module.stride, dilation=module.dilation, groups=C_out)
    lg = full[..., ph : ph + H1, pw : pw + W1]  # (B, C_out*C_in/g, <=H1, <=W1); rows past the end are zeros
    norms = lg.reshape(B, C_out, cin_g, -1).norm(dim=-1).permute(1, 0, 2)  # (C_out, B, C_in/g)
    return grouped_result(norms, module.groups)


def run_plain(model: nn.Module, x: Tensor, y: Tensor) -> None:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y, reduction="sum").backward()


def run_nndist(model: nn.Module, x: Tensor, y: Tensor) -> None:
    emission_absorption(model, x, y)


def run_literal(model: nn.Module, x: Tensor, y: Tensor) -> None:
    HANDLERS.add(nn.Conv2d, literal_conv2d_handler, overwrite=True)
    try:
        emission_absorption(model, x, y)
    finally:
        HANDLERS.add(nn.Conv2d, conv2d_handler, overwrite=True)


METHODS: dict[str, Callable[[nn.Module, Tensor, Tensor], None]] = {
    "plain": run_plain,
    "nndist": run_nndist,
    "literal": run_literal,
}


def timeit(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per function; the repeats are interleaved so that load drifts hit all alike."""
    for fn in fns.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _vm_hwm_kib() -> int:
    """Peak resident set of this process (VmHWM; unlike ru_maxrss it is not inherited across exec)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_memory_child(method: str, batch: int) -> None:
    torch.manual_seed(0)
    model = make_model()
    x, y = make_batch(batch)
    base = _vm_hwm_kib()
    METHODS[method](model, x, y)
    METHODS[method](model, x, y)
    peak = _vm_hwm_kib()
    print(json.dumps({"peak_kib": peak, "base_kib": base}))


def peak_memory(method: str, batch: int) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", method, "--batch", str(batch)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def check_agreement(model: nn.Module, x: Tensor, y: Tensor) -> float:
    fast = emission_absorption(model, x, y)
    HANDLERS.add(nn.Conv2d, literal_conv2d_handler, overwrite=True)
    try:
        slow = emission_absorption(model, x, y)
    finally:
        HANDLERS.add(nn.Conv2d, conv2d_handler, overwrite=True)
    err = 0.0
    for name in fast:
        for attr in ("emission", "absorption", "norm_sum"):
            a, b = getattr(fast[name], attr), getattr(slow[name], attr)
            err = max(err, float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)))
    return err


def main() -> None:
    from nndist.allocator import tune_allocator

    tune_allocator()  # as the nndist command does; applies to every method measured here
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--skip-literal", action="store_true", help="skip (c), the slow literal timing")
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child, args.batch)
        return

    mems = {m: peak_memory(m, args.batch) for m in ("plain", "nndist")}
    torch.manual_seed(0)
    model = make_model()
    x, y = make_batch(args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, cifar_resnet56 (eval)")
    print(f"max relative difference nndist vs literal (float32): {check_agreement(model, x[:8], y[:8]):.2e}")
    times = timeit(
        {m: (lambda m=m: METHODS[m](model, x, y)) for m in ("plain", "nndist")}, args.repeats
    )
    if not args.skip_literal:  # slow: fewer repeats
        times.update(timeit({"literal": lambda: run_literal(model, x, y)}, max(1, args.repeats // 2)))
    print(f"{'method':<10}{'time [s]':>10}{'peak RSS [MiB]':>16}{'added [MiB]':>13}")
    for method, t in times.items():
        mem = mems.get(method)
        peak = f"{mem['peak_kib'] / 1024:16.0f}" if mem else f"{'-':>16}"
        added = f"{(mem['peak_kib'] - mem['base_kib']) / 1024:13.0f}" if mem else f"{'-':>13}"
        print(f"{method:<10}{t:10.3f}{peak}{added}")
    literal = times.get("literal", float("nan"))
    print(
        f"overhead_ratio={times['nndist'] / times['plain']:.3f} "
        f"literal_speedup={literal / times['nndist']:.2f} "
        f"memory_ratio={mems['nndist']['peak_kib'] / mems['plain']['peak_kib']:.3f}"
    )


if __name__ == "__main__":
    main()

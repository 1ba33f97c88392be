"""Benchmark: emission/absorption against a plain backward pass, its floor and the literal definition.

On the pretrained CIFAR ResNet-56 (``$NNDIST_MODELS_DIR/resnet56-*.th``; random weights when it is
not set, and the first line says which) in eval mode, a batch of 128 CIFAR-10 test images
(``$NNDIST_DATA_DIR/cifar10-jpeg``; random inputs otherwise), this machine's CPU:

(a) plain forward + ``loss.backward()`` (parameter gradients included);
(f) the floor: forward + input-only backward, ``torch.autograd.grad(loss, inputs)``: the least
    any exact Emission/Absorption does (it must see ``G`` at every layer);
(f') the floor of a model whose eval-mode BatchNorms are folded into their convolutions by hand
    (``torch.fx.experimental.optimization.fuse``, built once, outside the timing): the least work for
    the same numbers when the fold is counted as free, which nndist's pass does too;
(b) ``nndist.emission_absorption`` for every convolution and the linear layer (it folds each
    eval-mode BatchNorm into the convolution before it: :mod:`nndist.probes.gradients.fold`);
(u) the same without the fold (``fold.disabled()``);
(c) the literal definition: the same plumbing, but each convolution's handler materialises every
    local gradient ``LG^{c1->c2}`` (one grouped transposed convolution per layer producing all
    ``C_out x C_in`` maps, cropped to the input) and takes their norms.

Run as a user's script runs it: no allocator tuning (``tune_allocator`` is the CLI's). Times are
the median of ``--repeats`` runs after one warm-up, (a), (f) and (b) interleaved in one process
(the literal, being slow, gets half as many). Peak memory is the process's peak resident set
size (``VmHWM`` from ``/proc/self/status``; ``ru_maxrss`` elsewhere) in a fresh subprocess per
method that builds the model and batch, runs the method twice, and exits; the table also shows the
peak minus the RSS just before the first run (the memory the method itself adds).

Usage: ``PYTHONPATH=src python benchmarks/bench_gradients.py [--batch 128] [--repeats 7]``.
The last line is ``overhead_ratio=<b/a> floor_ratio=<b/f> literal_speedup=<c/b> memory_ratio=<peak b / peak a>
folded_floor_ratio=<b/f'> unfolded_ratio=<u/a>``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nndist.probes.gradients import HANDLERS, LayerGradients, conv2d_handler, emission_absorption, fold
from nndist.probes.gradients.conv2d import _padding, grouped_result


def _shared(var: str, pattern: str):
    from pathlib import Path

    root = os.environ.get(var)
    found = sorted(Path(root).glob(pattern)) if root else []
    return found[0] if found else None


def make_model() -> tuple[nn.Module, str]:
    from nndist.models import create_model

    weights = _shared("NNDIST_MODELS_DIR", "resnet56-*.th")
    model = create_model("cifar_resnet56", weights=str(weights) if weights else None).eval()
    return model, f"pretrained ({weights.name})" if weights else "random weights (NNDIST_MODELS_DIR not set)"


def make_batch(batch: int) -> tuple[Tensor, Tensor, str]:
    data = _shared("NNDIST_DATA_DIR", "cifar10-jpeg")
    if data is None:
        g = torch.Generator().manual_seed(0)
        return torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g), "random inputs"
    from nndist.data import load_split, stratified_subset
    from nndist.models.registry import get_model_spec

    spec = get_model_spec("cifar_resnet56")
    test = load_split(str(data), "test", progress=False)
    idx = stratified_subset(test.labels, batch, seed=0)
    return test.normalized(spec.mean, spec.std, indices=idx), test.labels[idx], f"{batch} CIFAR-10 test images"


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


def run_input_only(model: nn.Module, x: Tensor, y: Tensor) -> None:
    x = x.detach().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x), y, reduction="sum"), x)


_FUSED: dict[int, nn.Module] = {}


def run_input_only_folded(model: nn.Module, x: Tensor, y: Tensor) -> None:
    from torch.fx.experimental.optimization import fuse

    if id(model) not in _FUSED:  # the hand-folded copy, built once (the first call is the warm-up)
        _FUSED[id(model)] = fuse(model)
    run_input_only(_FUSED[id(model)], x, y)


def run_nndist(model: nn.Module, x: Tensor, y: Tensor) -> None:
    emission_absorption(model, x, y)


def run_nndist_unfolded(model: nn.Module, x: Tensor, y: Tensor) -> None:
    with fold.disabled():
        emission_absorption(model, x, y)


def run_literal(model: nn.Module, x: Tensor, y: Tensor) -> None:
    HANDLERS.add(nn.Conv2d, literal_conv2d_handler, overwrite=True)
    try:
        emission_absorption(model, x, y)
    finally:
        HANDLERS.add(nn.Conv2d, conv2d_handler, overwrite=True)


METHODS: dict[str, Callable[[nn.Module, Tensor, Tensor], None]] = {
    "plain": run_plain,
    "input_only": run_input_only,
    "input_only_folded": run_input_only_folded,
    "nndist": run_nndist,
    "nndist_unfolded": run_nndist_unfolded,
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
    model, _ = make_model()
    x, y, _ = make_batch(batch)
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--memory-child", choices=sorted(METHODS), help=argparse.SUPPRESS)
    parser.add_argument("--skip-literal", action="store_true", help="skip (c), the slow literal timing")
    args = parser.parse_args()
    if args.memory_child:
        peak_memory_child(args.memory_child, args.batch)
        return

    mems = {m: peak_memory(m, args.batch) for m in ("plain", "input_only", "nndist")}
    torch.manual_seed(0)
    model, weights = make_model()
    x, y, inputs = make_batch(args.batch)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, cifar_resnet56 (eval), "
          f"{weights}, {inputs}")
    print(f"max relative difference nndist vs literal (float32): {check_agreement(model, x[:8], y[:8]):.2e}")
    timed = ("plain", "input_only", "input_only_folded", "nndist", "nndist_unfolded")
    times = timeit({m: (lambda m=m: METHODS[m](model, x, y)) for m in timed}, args.repeats)
    if not args.skip_literal:  # slow: fewer repeats
        times.update(timeit({"literal": lambda: run_literal(model, x, y)}, max(1, args.repeats // 2)))
    print(f"{'method':<18}{'time [s]':>10}{'peak RSS [MiB]':>16}{'added [MiB]':>13}")
    for method, t in times.items():
        mem = mems.get(method)
        peak = f"{mem['peak_kib'] / 1024:16.0f}" if mem else f"{'-':>16}"
        added = f"{(mem['peak_kib'] - mem['base_kib']) / 1024:13.0f}" if mem else f"{'-':>13}"
        print(f"{method:<18}{t:10.3f}{peak}{added}")
    literal = times.get("literal", float("nan"))
    if not args.skip_literal:  # the same three again in a process that has just done large work (the literal)
        again = timeit({m: (lambda m=m: METHODS[m](model, x, y)) for m in ("plain", "input_only", "nndist")}, args.repeats)
        print(f"after the literal's large allocations: plain {again['plain']:.3f} s, input_only {again['input_only']:.3f} s, "
              f"nndist {again['nndist']:.3f} s; overhead_ratio={again['nndist'] / again['plain']:.3f} "
              f"floor_ratio={again['nndist'] / again['input_only']:.3f}")
    print(
        f"overhead_ratio={times['nndist'] / times['plain']:.3f} "
        f"floor_ratio={times['nndist'] / times['input_only']:.3f} "
        f"literal_speedup={literal / times['nndist']:.2f} "
        f"memory_ratio={mems['nndist']['peak_kib'] / mems['plain']['peak_kib']:.3f} "
        f"folded_floor_ratio={times['nndist'] / times['input_only_folded']:.3f} "
        f"unfolded_ratio={times['nndist_unfolded'] / times['plain']:.3f}"
    )


if __name__ == "__main__":
    main()

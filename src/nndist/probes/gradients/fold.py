r"""Eval-mode BatchNorm folded into the convolution before it, for the measuring pass (``definition="paper"``).

In eval mode a BatchNorm is a per-channel affine map of its input, ``V' = a V + b`` with
``a = gamma / sqrt(running_var + eps)``. When it is the only consumer of a convolution's output
``V``, the pair is one convolution with weight ``a[c1] W[c1]`` and bias ``a (bias - mean) + beta``
whose output is ``V'``, and that convolution has the same Emission and Absorption as the original
one: with ``G' = dL/dV'``, the gradient at the original output is ``G = dL/dV = a G'``, and the local
gradient is linear in both ``G[c1]`` and ``W[c1]``, so::

    LG^{c1->c2} = convT(G[c1], W[c1, c2]) = convT(a[c1] G'[c1], W[c1, c2]) = convT(G'[c1], a[c1] W[c1, c2]),

the local gradient of the folded convolution. The folded pass skips the BatchNorm's forward and
backward (each a full read and write of the layer's output, and a tensor autograd keeps) and
gives the same numbers to rounding (the float64 tests compare both ways with the literal twin).

The dataflow comes from :func:`torch.fx.symbolic_trace`, once per model (cached while the model's
modules and ``forward`` stay the same objects); the folded weights are computed at every call
(:func:`torch.nn.utils.fusion.fuse_conv_bn_weights`), from the values the model holds then. A pair
is folded only where the rewrite is sure to compute the same function:

- a ``BatchNorm1d/2d/3d`` (exact class) in eval mode with running statistics, called once, on the
  output of a ``Conv1d/2d/3d`` (exact class, the same number of dimensions) that is called once
  and whose output nothing else uses;
- no module of the model has hooks (the graph calls only its leaf modules, so a hook on a
  container, such as a sharding wrapper's, would not run), no global module hook is registered,
  and the pair has no parametrisations and holds plain float32/float64 tensors (no ``DTensor``
  shards; half-precision weights are not rescaled in their own rounding);
- every studied layer is called as a module of the traced graph (so its hook fires there).

Tracing runs the Python of every ``forward`` above the leaf modules once, with symbolic values; a
model that holds a wrapper whose ``forward`` has effects of its own (``DistributedDataParallel``,
``DataParallel``, ``torch.distributed`` and ``torch.compile`` wrappers) is not traced.

Otherwise (a model that does not trace, a layer traced through, hooks) the model runs as it is.
"""

from __future__ import annotations

import contextlib
import copy
import weakref
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["disabled", "folded"]

_PAIRS = {
    nn.Conv1d: nn.BatchNorm1d,
    nn.Conv2d: nn.BatchNorm2d,
    nn.Conv3d: nn.BatchNorm3d,
}

_ENABLED = [True]


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Runs :func:`~nndist.probes.gradients.emission_absorption` without folding inside the block
    (the tests and benchmarks compare both)."""
    _ENABLED.append(False)
    try:
        yield
    finally:
        _ENABLED.pop()


@dataclass
class _Trace:
    signature: tuple[object, ...]
    graph_module: torch.fx.GraphModule | None  # None: the model does not trace
    pairs: tuple[tuple[str, str], ...]  # (convolution, BatchNorm) qualified names, folded in the graph
    called: frozenset[int]  # ids of the modules the graph calls


_TRACES: weakref.WeakKeyDictionary[nn.Module, _Trace] = weakref.WeakKeyDictionary()


def _signature(model: nn.Module) -> tuple[object, ...]:
    """What the trace depends on: every module object, and its ``forward`` if set on the instance."""
    return (id(type(model).forward), *((name, id(m), id(m.__dict__.get("forward"))) for name, m in model.named_modules()))


def _wrapper(m: nn.Module) -> bool:
    """A module whose ``forward`` does more than compute (gradient buckets, collectives, compilation)."""
    return isinstance(m, (nn.parallel.DistributedDataParallel, nn.DataParallel)) or type(m).__module__.startswith(
        ("torch.distributed", "torch._dynamo")
    )


def _trace(model: nn.Module) -> _Trace:
    signature = _signature(model)
    cached = _TRACES.get(model)
    if cached is not None and cached.signature == signature:
        return cached
    try:
        if any(_wrapper(m) for m in model.modules()):
            raise TypeError("a wrapper is not traced")
        gm = torch.fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - any model that does not trace runs as it is
        trace = _Trace(signature, None, (), frozenset())
    else:
        modules = dict(gm.named_modules())
        calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        pairs = []
        for node in list(gm.graph.nodes):
            if node.op != "call_module" or node.kwargs or len(node.args) != 1:
                continue
            src = node.args[0]
            if not isinstance(src, torch.fx.Node) or src.op != "call_module":
                continue
            conv, bn = modules[src.target], modules[node.target]
            if _PAIRS.get(type(conv)) is not type(bn) or len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
                continue
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            pairs.append((str(src.target), str(node.target)))
        gm.recompile()
        called = frozenset(id(modules[n.target]) for n in gm.graph.nodes if n.op == "call_module")
        trace = _Trace(signature, gm if pairs else None, tuple(pairs), called)
    _TRACES[model] = trace
    return trace


def _hooked(m: nn.Module) -> bool:
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks)


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    tensors = [*conv.parameters(), *conv.buffers(), *bn.parameters(), *bn.buffers()]
    return (
        not bn.training
        and bn.running_mean is not None
        and bn.running_var is not None
        and not parametrize.is_parametrized(conv)
        and not parametrize.is_parametrized(bn)
        and all(type(t.data) is torch.Tensor for t in tensors)
        and conv.weight.dtype in (torch.float32, torch.float64)
    )


def _global_hooks() -> bool:
    from torch.nn.modules import module as m

    return any(
        getattr(m, name, None)
        for name in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks", "_global_backward_pre_hooks")
    )


def _fold(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``conv`` computing ``bn(conv(x))``: its settings shared, its own tables of
    parameters, buffers and hooks (a hook put on the copy must not land on ``conv``), the folded
    weight and bias. (``copy.deepcopy`` took 10 ms per call for ResNet-56's 55 convolutions.)"""
    out = copy.copy(conv)
    for name, value in vars(conv).items():
        if isinstance(value, (dict, set)):
            object.__setattr__(out, name, type(value)(value))
    with torch.no_grad():
        w, b = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    out.weight, out.bias = w, b
    return out


@contextlib.contextmanager
def folded(model: nn.Module, studied: Sequence[nn.Module]) -> Iterator[tuple[nn.Module, dict[int, nn.Module]]]:
    """The module to run and the replacements of studied modules (by ``id``) for one measuring pass.

    Args:
        model: the model, already in eval mode.
        studied: the modules whose hooks the pass needs.

    Yields:
        ``(runner, replaced)``: ``runner`` is the traced graph with the foldable pairs folded (or
        ``model`` itself when nothing folds), ``replaced[id(conv)]`` the folded copy of each
        studied convolution that was folded. The graph's slots are restored on exit.
    """
    trace = _trace(model) if _ENABLED[-1] else None
    gm = None if trace is None else trace.graph_module
    if (gm is None or _global_hooks() or any(_hooked(m) for m in model.modules())
            or any(id(m) not in trace.called for m in studied)):
        yield model, {}
        return
    pairs = [(c, b, model.get_submodule(c), model.get_submodule(b)) for c, b in trace.pairs]
    if not all(_foldable(conv, bn) for _, _, conv, bn in pairs):
        yield model, {}
        return
    replaced: dict[int, nn.Module] = {}
    try:
        for target, _, conv, bn in pairs:
            new = _fold(conv, bn)
            gm.set_submodule(target, new)
            replaced[id(conv)] = new
        yield gm, replaced
    finally:
        for target, _, conv, _ in pairs:
            gm.set_submodule(target, conv)

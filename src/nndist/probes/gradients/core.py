"""Plumbing for emission/absorption: the handler table, hooks, the loss and one backward pass.

How a batch is processed (``definition="paper"``):

1. Every module of the model is switched to eval mode (BatchNorm then uses its running
   statistics and dropout is off, so samples do not interact and ``dL/dV`` of sample ``b`` is that
   sample's own gradient); each module's own ``training`` flag and every buffer are restored
   afterwards. Where an eval-mode BatchNorm is the only consumer of a convolution's output, the
   pass runs the model's traced graph with the two folded into one convolution, which has the
   same emission and absorption and skips the BatchNorm's forward and backward (:mod:`.fold`).
2. The floating inputs become fresh leaves that require grad (the user's tensors are untouched).
   Forward hooks on the studied layers record each call's input ``A`` and put a tensor hook on
   its output ``V``. An output that does not require grad (frozen layers, integer inputs) is
   replaced by a detached copy that does, so a graph always exists; user parameters are never
   touched. A composite module (attention) recomputes its output with its linear sub-layers
   explicit and tracks each of them the same way (:class:`~.types.CompositeHandler`).
3. The per-sample losses are summed and the backward pass is asked for the inputs' gradient
   only: autograd then skips every weight gradient, which makes the whole call cheaper than a
   plain forward + backward. Each tensor hook receives ``G = dL/dV`` (each sample's own gradient)
   as the backward pass reaches the layer, runs the layer's handler, and lets ``G`` go, so memory
   stays at the level of a plain backward. Tensor hooks see the gradient of ``V`` as it was
   produced, even when the model later modifies ``V`` in place (``relu_(conv(x))``).
4. A layer not on a path from the loss to an input (its hook never fired) is redone by
   ``torch.autograd.grad(loss_sum, [V, ...])`` (with copies of ``V`` if the model modifies it in
   place); a layer whose output does not affect the loss gets zeros.

Parametrised weights (``torch.nn.utils.parametrize``) are computed once per pass
(``parametrize.cached()``), so each handler sees the weight its forward used; such a module is
matched by its class before parametrisation. ``definition="author_code"`` runs the same steps in
train mode, one sample at a time, with the code's backward seed (:mod:`.author_code`).

Hooks are registered inside ``try/finally`` and removed also when the forward raises.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parameter import UninitializedTensorMixin
from torch.nn.utils import parametrize

from ...errors import NndistError, UnknownNameError
from ..hooks import forward_hooks
from .attention import FunctionalLinearsHandler, MultiheadAttentionHandler
from .author_code import author_seed
from .convnd import check_conv, conv_handler
from .conv_transpose import conv_transpose_handler
from .coverage import module_reason, parameter_reason, qualified_name
from .fold import folded
from .linear import LINEAR_TYPES, linear_handler
from .types import DEFINITIONS, CompositeHandler, Compute, LayerGradients, check_definition

ROOT = "(model)"
"""The name under which the root module is reported (``named_modules()`` calls it ``''``)."""


class Handler(Protocol):
    """Computes emission/absorption of one call of one layer.

    Args:
        module: The layer.
        input: Its first positional input ``A`` for this call, ``(B, C_in, ...)``.
        grad_output: ``G = dL/dV`` for this call, shaped like the layer's output ``(B, C_out, ...)``;
            row ``b`` is sample ``b``'s own gradient.
        definition: ``"paper"`` or ``"author_code"`` (see :class:`LayerGradients`). A handler whose
            signature has no ``definition`` keyword serves ``"paper"`` only.

    Returns:
        A :class:`LayerGradients` with ``emission`` ``(B, C_out)``, ``absorption`` (``(B, C_in)``;
        ``(B, C_out)`` under ``author_code``) and ``norm_sum`` ``(C_out, C_in)``, detached, in a
        floating dtype, on ``grad_output``'s device. A handler may raise
        :class:`~nndist.errors.NndistError` for a configuration it cannot handle.
    """

    def __call__(self, module: nn.Module, input: Tensor, grad_output: Tensor) -> LayerGradients: ...


Check = Callable[[str, nn.Module], None]


@dataclass(frozen=True)
class _Entry:
    handler: Handler | CompositeHandler
    check: Check | None
    definitions: tuple[str, ...]

    @property
    def composite(self) -> bool:
        return isinstance(self.handler, CompositeHandler)


def _definitions_of(handler: Handler | CompositeHandler) -> tuple[str, ...]:
    if isinstance(handler, CompositeHandler):
        return tuple(handler.definitions)
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return ("paper",)
    if any(p.name == "definition" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return DEFINITIONS
    return ("paper",)


def _base_type(module: nn.Module) -> type:
    """The module's class, or the class before ``torch.nn.utils.parametrize`` wrapped it."""
    return parametrize.type_before_parametrizations(module)


class HandlerTable:
    """Registry-like table from a module type (matched exactly, not by subclass) to its handler.

    Exact matching is deliberate: a subclass may change ``forward`` (weight standardisation,
    LoRA, ...), and a wrong number is worse than a layer reported in ``.unsupported``. A type can
    also be given by its qualified name (``"torchvision.models.swin_transformer.ShiftedWindowAttention"``),
    matched exactly against ``f"{cls.__module__}.{cls.__qualname__}"``, so that the package need
    not be imported. A parametrised module is matched by its class before parametrisation.
    """

    kind = "gradient handler"

    def __init__(self) -> None:
        self._entries: dict[type | str, _Entry] = {}

    def add(
        self,
        module_type: type | str,
        handler: Handler | CompositeHandler,
        *,
        check: Check | None = None,
        overwrite: bool = False,
    ) -> None:
        """Registers ``handler`` for ``module_type``; ``check(name, module)`` may reject a layer up front.

        Raises:
            ValueError: If the type has a handler and ``overwrite`` is false.
        """
        if isinstance(module_type, str):
            if "." not in module_type:
                raise NndistError(f"a type given by name must be qualified ('package.module.Class'), got {module_type!r}")
        elif not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
            raise NndistError(f"handlers are registered for nn.Module subclasses, got {module_type!r}")
        if module_type in self._entries and not overwrite:
            name = module_type if isinstance(module_type, str) else module_type.__name__
            raise ValueError(f"{self.kind} for {name} is already registered; pass overwrite=True")
        self._entries[module_type] = _Entry(handler, check, _definitions_of(handler))

    def remove(self, module_type: type | str) -> None:
        """Forgets the handler of ``module_type`` (no error if there is none)."""
        self._entries.pop(module_type, None)

    def get(self, module_type: type) -> Handler | CompositeHandler:
        """The handler of ``module_type``; :class:`UnknownNameError` listing the handled types otherwise."""
        return self._entry(module_type).handler

    def _find(self, module_type: type) -> _Entry | None:
        entry = self._entries.get(module_type)
        if entry is None and isinstance(module_type, type):
            entry = self._entries.get(qualified_name(module_type))
        return entry

    def _entry(self, module_type: type) -> _Entry:
        entry = self._find(module_type)
        if entry is None:
            raise UnknownNameError(
                f"no {self.kind} for {getattr(module_type, '__name__', module_type)}; handled types: "
                f"{', '.join(self.names())}; add one with nndist.register_handler"
            )
        return entry

    def names(self) -> list[str]:
        """Sorted names of the handled types (the class name; the last part of a qualified name)."""
        return sorted(t.rsplit(".", 1)[-1] if isinstance(t, str) else t.__name__ for t in self._entries)

    def __contains__(self, module_type: object) -> bool:
        return isinstance(module_type, (type, str)) and (
            module_type in self._entries or (isinstance(module_type, type) and self._find(module_type) is not None)
        )

    def __iter__(self) -> Iterator[type | str]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"HandlerTable({self.names()})"


HANDLERS = HandlerTable()
for _t in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.LazyConv1d, nn.LazyConv2d, nn.LazyConv3d):
    HANDLERS.add(_t, conv_handler, check=check_conv)
for _t in (
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.LazyConvTranspose1d,
    nn.LazyConvTranspose2d,
    nn.LazyConvTranspose3d,
):
    HANDLERS.add(_t, conv_transpose_handler, check=check_conv)
for _t in LINEAR_TYPES:
    HANDLERS.add(_t, linear_handler)
HANDLERS.add(nn.MultiheadAttention, MultiheadAttentionHandler())
HANDLERS.add("torchvision.models.swin_transformer.ShiftedWindowAttention", FunctionalLinearsHandler(("qkv", "proj")))
del _t


def register_handler(
    module_type: type | str, handler: Handler | CompositeHandler, *, check: Check | None = None, overwrite: bool = False
) -> Handler | CompositeHandler:
    """Makes :func:`emission_absorption` handle layers of exactly ``module_type``.

    Args:
        module_type: An ``nn.Module`` subclass (matched exactly, not its subclasses), or its
            qualified name ``"package.module.Class"``.
        handler: See :class:`Handler`: ``handler(module, input, grad_output[, definition=...]) ->
            LayerGradients``; or a :class:`~nndist.probes.gradients.types.CompositeHandler` for a module
            whose forward uses several channel maps functionally.
        check: Optional ``check(name, module)`` run before the forward pass; raise
            :class:`~nndist.errors.NndistError` to reject a layer's configuration.
        overwrite: Replace an existing handler.

    Returns:
        ``handler``, so this can be used on a function directly.
    """
    HANDLERS.add(module_type, handler, check=check, overwrite=overwrite)
    return handler


class GradientResults(dict[str, LayerGradients]):
    """Results keyed by module name (``model.named_modules()`` order; the root is ``(model)``).

    A composite module's sub-layers are keyed ``NAME.part`` (``attn.q_proj``, ``attn.out_proj``).

    Attributes:
        unsupported: ``{module name: type name}`` for modules that hold parameters of their own, have
            no handler, are no container and have a local gradient as far as is known; they are
            reported, never dropped silently.
        no_local_gradient: ``{module or parameter name: reason}`` for what holds parameters but has
            no channel-to-channel local gradient (normalisation layers, embeddings, parameters held
            directly by a container such as a class token; see :mod:`.coverage`).
        not_called: ``{name: type name}`` for handled layers whose forward did not run in this pass
            (a parent used their weights functionally without a composite handler, or the branch
            was not taken).
        definition: ``"paper"`` or ``"author_code"``; under ``author_code`` ``absorption`` is indexed by
            output channel (see :class:`LayerGradients`).
    """

    def __init__(
        self,
        *args: object,
        unsupported: dict[str, str] | None = None,
        no_local_gradient: dict[str, str] | None = None,
        not_called: dict[str, str] | None = None,
        definition: str = "paper",
    ) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.unsupported: dict[str, str] = dict(unsupported or {})
        self.no_local_gradient: dict[str, str] = dict(no_local_gradient or {})
        self.not_called: dict[str, str] = dict(not_called or {})
        self.definition = definition

    def __repr__(self) -> str:
        return (
            f"GradientResults(definition={self.definition!r}, layers={list(self)}, unsupported={self.unsupported}, "
            f"no_local_gradient={list(self.no_local_gradient)}, not_called={self.not_called})"
        )


LossFn = Callable[[Tensor, Union[Tensor, None]], Tensor]
Inputs = Union[Tensor, Sequence[Tensor]]


def _per_sample_loss(loss: str | LossFn, outputs: Tensor, targets: Tensor | None, batch: int) -> Tensor:
    if callable(loss):
        losses = loss(outputs, targets)
        if not isinstance(losses, Tensor) or tuple(losses.shape) != (batch,):
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise NndistError(f"the loss callable must return per-sample losses of shape ({batch},), got {shape}")
        return losses
    if not isinstance(outputs, Tensor):
        raise NndistError(f"loss={loss!r} needs the model to return a tensor, got {type(outputs).__name__}")
    if loss == "cross_entropy":
        assert targets is not None
        losses = F.cross_entropy(outputs, targets, reduction="none")
        return losses.reshape(batch, -1).sum(1)
    # "logit": the target's logit, or the predicted class's
    labels = outputs.detach().argmax(1) if targets is None else targets
    logits = outputs.gather(1, labels.unsqueeze(1)).squeeze(1)
    return logits.reshape(batch, -1).sum(1)


def _check_loss(loss: str | LossFn, targets: Tensor | None, definition: str) -> None:
    if definition == "author_code":
        if not (isinstance(loss, str) and loss == "cross_entropy"):
            raise NndistError(
                "definition='author_code' uses the code's backward seed (softmax probability of the true class "
                "at its logit); leave loss at its default"
            )
        if targets is None:
            raise NndistError("definition='author_code' needs targets (the true classes)")
        return
    if callable(loss):
        return
    if loss not in ("cross_entropy", "logit"):
        raise NndistError(f"unknown loss {loss!r}; use 'cross_entropy', 'logit' or a callable (outputs, targets) -> (B,)")
    if loss == "cross_entropy" and targets is None:
        raise NndistError("loss='cross_entropy' needs targets; pass targets=... or use loss='logit'")


@dataclass
class _Selected:
    """One hooked module: its handler and, for a composite, the parts that are measured."""

    name: str  # display name (root: ROOT)
    module: nn.Module
    entry: _Entry
    parts: tuple[str, ...] = ()  # composite only

    def output_names(self) -> list[str]:
        return [self.part_name(p) for p in self.parts] if self.entry.composite else [self.name]

    def part_name(self, part: str) -> str:
        return part if self.name == ROOT else f"{self.name}.{part}"


@dataclass
class _Coverage:
    handled: dict[str, _Selected] = field(default_factory=dict)  # display name -> selection
    unsupported: dict[str, str] = field(default_factory=dict)
    no_local_gradient: dict[str, str] = field(default_factory=dict)
    all_names: dict[str, nn.Module] = field(default_factory=dict)


def _own_parameters(module: nn.Module) -> list[str]:
    names = [n for n, p in module._parameters.items() if p is not None]
    if parametrize.is_parametrized(module):
        names += list(module.parametrizations.keys())  # type: ignore[union-attr]
    return names


def _coverage(model: nn.Module) -> _Coverage:
    cov = _Coverage()
    skip: set[str] = set()  # submodules covered by a parent (composite parts, parametrizations)
    for name, m in model.named_modules():
        shown = name or ROOT
        cov.all_names[shown] = m
        if name in skip or any(name.startswith(s + ".") for s in skip):
            continue
        prefix = f"{name}." if name else ""
        if parametrize.is_parametrized(m):
            skip.add(f"{prefix}parametrizations")
        t = _base_type(m)
        own = _own_parameters(m)
        entry = HANDLERS._find(t)
        if entry is not None:
            sel = _Selected(shown, m, entry)
            if entry.composite:
                handler: CompositeHandler = entry.handler  # type: ignore[assignment]
                sel.parts = tuple(handler.parts(m))
                skip.update(f"{prefix}{p}" for p in sel.parts)
                covered = set(handler.covered_parameters(m))
                for p in own:
                    if p not in covered:
                        cov.no_local_gradient[f"{prefix}{p}"] = parameter_reason(t, p)
            cov.handled[shown] = sel
            continue
        if not own:
            continue
        reason = module_reason(t)
        if reason is not None:
            cov.no_local_gradient[shown] = reason
        elif any(True for _ in m.children()) and not parametrize.is_parametrized(m):
            for p in own:
                cov.no_local_gradient[f"{prefix}{p}"] = parameter_reason(t, p)
        else:
            cov.unsupported[shown] = t.__name__
    return cov


def _select(cov: _Coverage, layers: Iterable[str] | str | None) -> dict[str, _Selected]:
    if layers is None:
        return dict(cov.handled)
    wanted = [layers] if isinstance(layers, str) else list(layers)
    wanted = [ROOT if w == "" else w for w in wanted]
    part_of = {  # composite parts by result name
        n: (sel, p) for sel in cov.handled.values() if sel.entry.composite for p, n in zip(sel.parts, sel.output_names())
    }
    parts: dict[str, set[str]] = {}
    for name in wanted:
        if name in cov.handled:
            parts.setdefault(name, set()).update(cov.handled[name].parts)
        elif name in part_of:
            sel, p = part_of[name]
            parts.setdefault(sel.name, set()).add(p)
        elif name in cov.all_names:
            raise NndistError(
                f"layer {name!r} ({_base_type(cov.all_names[name]).__name__}) has no emission/absorption handler; "
                "register one with nndist.register_handler"
            )
        else:
            valid = [n for sel in cov.handled.values() for n in dict.fromkeys([sel.name, *sel.output_names()])]
            raise NndistError(f"unknown layer {name!r}; valid names: {', '.join(valid) or '(none)'}")
    chosen: dict[str, _Selected] = {}
    for name, sel in cov.handled.items():  # keep named_modules() order
        if name in parts:
            keep = tuple(p for p in sel.parts if p in parts[name])
            chosen[name] = _Selected(sel.name, sel.module, sel.entry, keep)
    return chosen


def check_layers(model: nn.Module, layers: Iterable[str] | str | None) -> list[str]:
    """The result names :func:`emission_absorption` would give for ``layers`` (all handled: None).

    Raises:
        NndistError: an unknown name (the message lists the valid ones) or a layer without handler.
    """
    chosen = _select(_coverage(model), layers)
    return [n for sel in chosen.values() for n in sel.output_names()]


@dataclass
class _Call:
    name: str  # result name
    compute: Compute | None  # dropped once used, so the input it holds can go
    output: Tensor | None  # kept by the slow path only
    version: int


def _add(results: dict[str, LayerGradients], name: str, res: LayerGradients) -> None:
    res = LayerGradients(res.emission.detach(), res.absorption.detach(), res.norm_sum.detach())
    results[name] = results[name] + res if name in results else res


Record = Callable[[str, Tensor, Compute], Tensor]


def _plain_compute(sel: _Selected, a: Tensor) -> Compute:
    handler: Any = sel.entry.handler
    module = sel.module
    if "author_code" in sel.entry.definitions:
        return lambda g, d: handler(module, a, g, definition=d)
    return lambda g, d: handler(module, a, g)


def _forward(model: nn.Module, args: tuple[object, ...], chosen: dict[str, _Selected], record: Record) -> object:
    """Runs the model with a forward hook on every chosen module; ``record`` tracks each output ``V``."""
    by_id = {id(sel.module): sel for sel in chosen.values()}

    def hook(module: nn.Module, hargs: tuple[Any, ...], hkwargs: dict[str, Any], output: Any) -> Any:
        sel = by_id[id(module)]
        if sel.entry.composite:
            wanted = set(sel.parts)

            def track(part: str, v: Tensor, compute: Compute) -> Tensor:
                return record(sel.part_name(part), v, compute) if part in wanted else v

            return sel.entry.handler.recompute(module, hargs, hkwargs, output, track)  # type: ignore[union-attr]
        if not isinstance(output, Tensor):
            raise NndistError(f"layer {sel.name!r} returned {type(output).__name__}, not a tensor")
        a = hargs[0] if hargs and isinstance(hargs[0], Tensor) else output
        v = record(sel.name, output, _plain_compute(sel, a))
        return v if v is not output else None

    with forward_hooks([sel.module for sel in chosen.values()], hook, with_kwargs=True):
        return model(*args)


def _run_streaming(
    model: nn.Module,
    args: tuple[object, ...],
    losses_of: Callable[[object], Tensor],
    chosen: dict[str, _Selected],
    results: dict[str, LayerGradients],
    definition: str,
    called: set[str],
) -> set[str]:
    """Fast path: each ``G`` is consumed by a tensor hook on ``V`` as the backward pass reaches it.

    The backward is asked for the gradient of the (floating) model inputs only, so autograd
    skips every weight gradient, and each ``G`` is freed as soon as its handler has run. Tensor
    hooks see ``V``'s gradient even when the model later modifies ``V`` in place. Returns the
    result names whose hook never fired (not on a path to an input): they need the slow path.
    """
    calls: list[_Call] = []
    fired: set[int] = set()
    roots = [a for a in args if isinstance(a, Tensor) and a.requires_grad]

    def tensor_hook(i: int) -> Callable[[Tensor], None]:
        def fn(grad: Tensor) -> None:
            fired.add(i)
            call = calls[i]
            assert call.compute is not None
            with torch.no_grad():
                _add(results, call.name, call.compute(grad, definition))
            call.compute = None  # let the input go as soon as it is used

        return fn

    def record(name: str, v: Tensor, compute: Compute) -> Tensor:
        called.add(name)
        if not v.requires_grad:  # frozen layer or integer input: make V a leaf so a graph exists
            v = v.detach().requires_grad_()
            roots.append(v)
        # V itself is not kept: autograd frees it as the backward pass moves on
        calls.append(_Call(name, compute, None, 0))
        v.register_hook(tensor_hook(len(calls) - 1))
        return v

    outputs = _forward(model, args, chosen, record)
    losses = losses_of(outputs)
    if roots and losses.requires_grad:
        torch.autograd.grad(losses.sum(), roots, allow_unused=True)
    del outputs, losses
    return {c.name for i, c in enumerate(calls) if i not in fired}


def _run_all_grads(
    model: nn.Module,
    args: tuple[object, ...],
    losses_of: Callable[[object], Tensor],
    chosen: dict[str, _Selected],
    copy_outputs: bool,
) -> tuple[list[_Call], list[Tensor | None]] | None:
    """Slow path: ``autograd.grad(loss, [V_1, ..., V_L])``; ``None`` if a ``V`` was modified in place."""
    calls: list[_Call] = []

    def record(name: str, v: Tensor, compute: Compute) -> Tensor:
        if not v.requires_grad:
            v = v.detach().requires_grad_()
        calls.append(_Call(name, compute, v, v._version))
        return v.clone() if copy_outputs else v  # with copies, in-place changes hit the copy

    outputs = _forward(model, args, chosen, record)
    losses = losses_of(outputs)
    if any(c.output is not None and c.output._version != c.version for c in calls):
        return None
    if not calls or not losses.requires_grad:
        return calls, [None] * len(calls)
    grads = torch.autograd.grad(losses.sum(), [c.output for c in calls if c.output is not None], allow_unused=True)
    return calls, list(grads)


def _measure(
    model: nn.Module,
    args: tuple[object, ...],
    losses_of: Callable[[object], Tensor],
    chosen: dict[str, _Selected],
    definition: str,
    called: set[str],
) -> dict[str, LayerGradients]:
    """One pass (streaming, then the slow path for what it missed) over one batch."""
    results: dict[str, LayerGradients] = {}
    with parametrize.cached():  # every access in this pass sees the weight the forward used
        missing = _run_streaming(model, args, losses_of, chosen, results, definition, called)
        if not missing:
            return results
        # layers not on a path to an input: ask autograd for their G directly
        rest: dict[str, _Selected] = {}
        for sel in chosen.values():
            if sel.entry.composite:
                parts = tuple(p for p in sel.parts if sel.part_name(p) in missing)
                if parts:
                    rest[sel.name] = _Selected(sel.name, sel.module, sel.entry, parts)
            elif sel.name in missing:
                rest[sel.name] = sel
        for n in missing:
            results.pop(n, None)
        run = _run_all_grads(model, args, losses_of, rest, copy_outputs=False)
        if run is None:  # an output was modified in place: record copies instead
            run = _run_all_grads(model, args, losses_of, rest, copy_outputs=True)
        assert run is not None
        calls, grads = run
        del run
        with torch.no_grad():
            for i, call in enumerate(calls):
                grad = grads[i]
                if grad is None:
                    assert call.output is not None
                    grad = torch.zeros_like(call.output)
                assert call.compute is not None
                _add(results, call.name, call.compute(grad, definition))
                grads[i] = None
                call.compute = None
    return results


class TrainModeNotice(UserWarning):
    """Issued when a model with BatchNorm or dropout in train mode is measured in eval mode, or when
    ``definition="author_code"`` runs a model with active dropout in train mode."""


_MODE_SENSITIVE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def _random_in_train_mode(model: nn.Module) -> list[str]:
    """Modules that are random in train mode: dropout, torchvision's StochasticDepth, attention dropout."""
    return [
        n or ROOT
        for n, m in model.named_modules()
        if (isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "StochasticDepth")
        and float(getattr(m, "p", 0.0)) > 0
        or isinstance(m, nn.MultiheadAttention) and m.dropout > 0
    ]


def _snapshot(model: nn.Module) -> list[tuple[Tensor, Tensor]]:
    """Every materialised buffer and a copy of it (running statistics, counters, spectral-norm vectors)."""
    return [(b, b.detach().clone()) for b in model.buffers() if not isinstance(b, UninitializedTensorMixin)]


def _restore(snapshot: list[tuple[Tensor, Tensor]]) -> None:
    with torch.no_grad():
        for buf, saved in snapshot:
            buf.copy_(saved)


def _leaves(args: tuple[object, ...]) -> tuple[object, ...]:
    """Floating inputs as fresh leaves that require grad; inference tensors cloned; others as given."""
    return tuple(
        a.clone().requires_grad_() if isinstance(a, Tensor) and a.is_inference() and a.is_floating_point()
        else a.detach().requires_grad_() if isinstance(a, Tensor) and a.is_floating_point()
        else a.clone() if isinstance(a, Tensor) and a.is_inference()
        else a
        for a in args
    )


def _stack(per_sample: list[dict[str, LayerGradients]]) -> tuple[dict[str, LayerGradients], set[str]]:
    """Concatenates one-sample results; names missing in some sample are returned apart."""
    common = [n for n in per_sample[0] if all(n in r for r in per_sample)]
    out = {
        n: LayerGradients(
            torch.cat([r[n].emission for r in per_sample]),
            torch.cat([r[n].absorption for r in per_sample]),
            torch.stack([r[n].norm_sum for r in per_sample]).sum(0),
        )
        for n in common
    }
    partial = {n for r in per_sample for n in r} - set(common)
    return out, partial


def emission_absorption(
    model: nn.Module,
    inputs: Inputs,
    targets: Tensor | None = None,
    *,
    loss: str | LossFn = "cross_entropy",
    layers: Iterable[str] | str | None = None,
    definition: str = "paper",
) -> GradientResults:
    """Per-sample emission and absorption of every handled layer (paper, section 2.2).

    For output channel ``c1`` and input channel ``c2`` of a layer, the local gradient
    ``LG^{c1->c2}`` is output channel ``c1``'s contribution to ``dL/dA[c2]`` (for a convolution,
    the transposed convolution of ``G[c1]`` with ``W[c1, c2]``; for a linear layer ``g_i W_ij``);
    summed over ``c1`` it is autograd's ``dL/dA``.

    ``definition="paper"`` (default): Emission ``Em^{c1} = sum_{c2} ||LG^{c1->c2}||``, absorption
    ``Ab^{c2} = sum_{c1} ||LG^{c1->c2}||`` (eqs. 19, 20). Both count each channel pair once, so per
    sample ``sum Em == sum Ab``. The model runs in eval mode (BatchNorm uses running statistics,
    so each sample's gradient is its own), the batch at once, with ``loss``.

    ``definition="author_code"``: the quantities of the author's code (fxnnxc/hex,
    ``channel_gradients/hook_wrapper.py`` lines 15-31, ``run.py`` lines 68, 98-112; see
    :mod:`nndist.probes.gradients.author_code`): Emission ``sqrt(sum_{c2} ||LG^{c1->c2}||^2)`` and
    "Absorption" ``||G[c1]||``, both ``(B, C_out)``, under the code's backward seed (softmax
    probability of the true class at its logit; ``loss`` must stay at its default and ``targets``
    are required), one sample per pass, the model in ``train()`` mode (BatchNorm on the sample's
    own statistics; dropout active too).

    Under both, every module's train/eval flag and every buffer (running statistics,
    ``num_batches_tracked``, ...) are restored afterwards, so measuring does not change the model.
    No hook is left on the model, also when the forward raises. A layer called several times in
    one forward contributes the sum of its calls. A non-finite loss gives NaN/Inf results, not an
    error.

    Args:
        model: Any ``nn.Module``. Handled by default: ``nn.Conv1d/2d/3d`` (any stride, padding incl.
            ``'same'``, dilation, groups, bias; ``padding_mode='zeros'``), ``nn.ConvTranspose1d/2d/3d``
            (stride, padding, output padding, dilation, groups), ``nn.Linear`` and the declared
            ``F.linear`` subclasses (:data:`~nndist.probes.gradients.linear.LINEAR_TYPES`, with any extra
            leading dimensions), ``nn.MultiheadAttention`` (q/k/v/out projections) and torchvision's
            Swin ``ShiftedWindowAttention`` (qkv/proj); parametrised weights included. More via
            :func:`register_handler`.
        inputs: The batch ``(B, ...)``, or a sequence of tensors passed as ``model(*inputs)``.
        targets: Class indices ``(B,)`` (or what a callable loss expects).
        loss: ``"cross_entropy"`` (needs targets), ``"logit"`` (the target's logit, or the
            predicted class's when ``targets`` is None), or a callable
            ``(outputs, targets) -> (B,)`` per-sample losses. The batch loss is their sum.
        layers: Names to study (``model.named_modules()`` names, ``(model)`` for the root, or a
            composite's ``NAME.part``); default all handled ones.
        definition: ``"paper"`` or ``"author_code"``.

    Returns:
        A :class:`GradientResults` dict ``{name: LayerGradients}`` with ``emission`` ``(B, C_out)``,
        ``absorption`` (``(B, C_in)``; ``(B, C_out)`` under ``author_code``) and ``norm_sum``
        ``(C_out, C_in)`` (sum over the batch of ``||LG^{c1->c2}||``), detached, on the gradient's
        device, in the model's floating dtype (float32 for half precision). ``.unsupported``,
        ``.no_local_gradient`` and ``.not_called`` say what was not measured and why.

    Raises:
        NndistError: Unknown layer name (the message lists valid ones), a layer without handler in
            ``layers``, an unsupported configuration (e.g. ``padding_mode='reflect'``), a bad loss
            or definition, missing targets, or a handler that does not serve ``definition``.
    """
    check_definition(definition)
    _check_loss(loss, targets, definition)
    cov = _coverage(model)
    chosen = _select(cov, layers)
    for sel in chosen.values():
        if sel.entry.check is not None:
            sel.entry.check(sel.name, sel.module)
        if definition not in sel.entry.definitions:
            raise NndistError(
                f"the handler for {_base_type(sel.module).__name__} ({sel.name!r}) computes only "
                f"{', '.join(sel.entry.definitions)}; give it a 'definition' keyword or leave the layer out"
            )

    def finish(results: dict[str, LayerGradients], called: set[str]) -> GradientResults:
        names = [n for sel in chosen.values() for n in sel.output_names()]
        not_called = {
            n: _base_type(sel.module).__name__ for sel in chosen.values() for n in sel.output_names() if n not in called
        }
        return GradientResults(
            {n: results[n] for n in names if n in results},
            unsupported=cov.unsupported,
            no_local_gradient=cov.no_local_gradient,
            not_called=not_called,
            definition=definition,
        )

    if not chosen:
        return finish({}, set())
    args: tuple[object, ...] = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if not args or not isinstance(args[0], Tensor):
        raise NndistError("inputs must be a tensor (B, ...) or a sequence of tensors whose first is batched")
    B = args[0].shape[0]
    modes = [(m, m.training) for m in model.modules()]
    if definition == "paper" and any(training and isinstance(m, _MODE_SENSITIVE) for m, training in modes):
        warnings.warn(
            "emission_absorption: the model is in train mode; Emission/Absorption are measured in eval "
            "mode (BatchNorm on running statistics, no dropout) so that samples do not interact, and "
            "the model's mode is restored afterwards",
            TrainModeNotice,
            stacklevel=2,
        )
    if definition == "author_code":
        if any(isinstance(a, Tensor) and (a.dim() == 0 or a.shape[0] != B) for a in args):
            raise NndistError("definition='author_code' slices every input tensor by sample: all must have the batch first")
        random_modules = _random_in_train_mode(model)
        if random_modules:
            warnings.warn(
                f"emission_absorption(definition='author_code') runs the model in train mode as the code does: "
                f"{', '.join(random_modules[:5])}{' ...' if len(random_modules) > 5 else ''} are random there",
                TrainModeNotice,
                stacklevel=2,
            )
    snapshot = _snapshot(model)
    called: set[str] = set()
    try:
        with torch.enable_grad(), torch.inference_mode(False):
            # Inputs become fresh leaves that require grad: the backward pass then reaches every
            # layer without computing any parameter gradient. User tensors are not modified.
            if definition == "paper":
                model.eval()
                # eval-mode BatchNorm folded into the convolution before it (same numbers, less work: .fold)
                with folded(model, [sel.module for sel in chosen.values()]) as (runner, replaced):
                    run = {n: _Selected(sel.name, replaced.get(id(sel.module), sel.module), sel.entry, sel.parts)
                           for n, sel in chosen.items()}
                    results = _measure(
                        runner, _leaves(args), lambda out: _per_sample_loss(loss, out, targets, B), run, definition, called  # type: ignore[arg-type]
                    )
            else:
                model.train()
                per_sample = []
                for b in range(B):
                    one = _leaves(tuple(a[b : b + 1] if isinstance(a, Tensor) else a for a in args))
                    y = targets[b : b + 1]  # type: ignore[index]
                    per_sample.append(
                        _measure(model, one, lambda out, y=y: _per_sample_loss(author_seed, out, y, 1), chosen, definition, called)  # type: ignore[misc]
                    )
                    _restore(snapshot)  # every sample sees the model as it was
                results, partial = _stack(per_sample)
                called -= partial
    finally:
        for m, training in modes:
            m.training = training
        _restore(snapshot)
    return finish(results, called)

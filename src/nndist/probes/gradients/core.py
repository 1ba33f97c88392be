"""Plumbing for emission/absorption: the handler table, hooks, the loss and one backward pass.

How a batch is processed:

1. Every module of the model is switched to eval mode (BatchNorm then uses its running
   statistics and dropout is off, so samples do not interact and ``dL/dV`` of sample ``b`` is that
   sample's own gradient); each module's own ``training`` flag is restored afterwards.
2. The floating inputs become fresh leaves that require grad (the user's tensors are untouched).
   Forward hooks on the studied layers record each call's input ``A`` and put a tensor hook on
   its output ``V``. An output that does not require grad (frozen layers, integer inputs) is
   replaced by a detached copy that does, so a graph always exists; user parameters are never
   touched.
3. The per-sample losses are summed and the backward pass is asked for the inputs' gradient
   only: autograd then skips every weight gradient, which makes the whole call cheaper than a
   plain forward + backward. Each tensor hook receives ``G = dL/dV`` (each sample's own gradient)
   as the backward pass reaches the layer, runs the layer's handler, and lets ``G`` go, so memory
   stays at the level of a plain backward. Tensor hooks see the gradient of ``V`` as it was
   produced, even when the model later modifies ``V`` in place (``relu_(conv(x))``).
4. A layer not on a path from the loss to an input (its hook never fired) is redone by
   ``torch.autograd.grad(loss_sum, [V, ...])`` (with copies of ``V`` if the model modifies it in
   place); a layer whose output does not affect the loss gets zeros.

Hooks are registered inside ``try/finally`` and removed also when the forward raises.
"""

from __future__ import annotations

import warnings

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import NndistError, UnknownNameError
from .conv2d import check_conv2d, conv2d_handler
from .linear import linear_handler
from .types import LayerGradients


class Handler(Protocol):
    """Computes emission/absorption of one call of one layer.

    Args:
        module: The layer.
        input: Its first positional input ``A`` for this call, ``(B, C_in, ...)``.
        grad_output: ``G = dL/dV`` for this call, shaped like the layer's output ``(B, C_out, ...)``;
            row ``b`` is sample ``b``'s own gradient (the loss is summed over the batch, eval mode).

    Returns:
        A :class:`LayerGradients` with ``emission`` ``(B, C_out)``, ``absorption`` ``(B, C_in)`` and
        ``norm_sum`` ``(C_out, C_in)``, detached, in a floating dtype, on ``grad_output``'s device.
        A handler may raise :class:`~nndist.errors.NndistError` for a configuration it cannot handle.
    """

    def __call__(self, module: nn.Module, input: Tensor, grad_output: Tensor) -> LayerGradients: ...


Check = Callable[[str, nn.Module], None]


@dataclass(frozen=True)
class _Entry:
    handler: Handler
    check: Check | None


class HandlerTable:
    """Registry-like table from a module type (matched exactly, not by subclass) to its handler.

    Exact matching is deliberate: a subclass may change ``forward`` (weight standardisation,
    LoRA, ...), and a wrong number is worse than a layer reported in ``.unsupported``.
    """

    kind = "gradient handler"

    def __init__(self) -> None:
        self._entries: dict[type, _Entry] = {}

    def add(self, module_type: type, handler: Handler, *, check: Check | None = None, overwrite: bool = False) -> None:
        """Registers ``handler`` for ``module_type``; ``check(name, module)`` may reject a layer up front.

        Raises:
            ValueError: If the type has a handler and ``overwrite`` is false.
        """
        if not isinstance(module_type, type) or not issubclass(module_type, nn.Module):
            raise NndistError(f"handlers are registered for nn.Module subclasses, got {module_type!r}")
        if module_type in self._entries and not overwrite:
            raise ValueError(f"{self.kind} for {module_type.__name__} is already registered; pass overwrite=True")
        self._entries[module_type] = _Entry(handler, check)

    def remove(self, module_type: type) -> None:
        """Forgets the handler of ``module_type`` (no error if there is none)."""
        self._entries.pop(module_type, None)

    def get(self, module_type: type) -> Handler:
        """The handler of ``module_type``; :class:`UnknownNameError` listing the handled types otherwise."""
        return self._entry(module_type).handler

    def _entry(self, module_type: type) -> _Entry:
        try:
            return self._entries[module_type]
        except KeyError:
            raise UnknownNameError(
                f"no {self.kind} for {module_type.__name__}; handled types: {', '.join(self.names())}; "
                "add one with nndist.gradients.register_handler"
            ) from None

    def names(self) -> list[str]:
        """Sorted names of the handled types."""
        return sorted(t.__name__ for t in self._entries)

    def __contains__(self, module_type: object) -> bool:
        return module_type in self._entries

    def __iter__(self) -> Iterator[type]:
        return iter(list(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"HandlerTable({self.names()})"


HANDLERS = HandlerTable()
HANDLERS.add(nn.Conv2d, conv2d_handler, check=check_conv2d)
HANDLERS.add(nn.Linear, linear_handler)


def register_handler(
    module_type: type, handler: Handler, *, check: Check | None = None, overwrite: bool = False
) -> Handler:
    """Makes :func:`emission_absorption` handle layers of exactly ``module_type``.

    Args:
        module_type: An ``nn.Module`` subclass (matched exactly, not its subclasses).
        handler: See :class:`Handler`: ``handler(module, input, grad_output) -> LayerGradients``.
        check: Optional ``check(name, module)`` run before the forward pass; raise
            :class:`~nndist.errors.NndistError` to reject a layer's configuration.
        overwrite: Replace an existing handler.

    Returns:
        ``handler``, so this can be used on a function directly.
    """
    HANDLERS.add(module_type, handler, check=check, overwrite=overwrite)
    return handler


# Per-channel affine layers: no channel-to-channel local gradient, so not "unsupported".
_NORM_TYPES: tuple[type, ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._BatchNorm,
        nn.modules.instancenorm._InstanceNorm,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.LocalResponseNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)


class GradientResults(dict[str, LayerGradients]):
    """Results keyed by module name (``model.named_modules()`` order).

    Attributes:
        unsupported: ``{module name: type name}`` for modules that hold parameters of their own but
            have no handler (normalisation layers excepted); they are reported, never dropped silently.
    """

    def __init__(self, *args: object, unsupported: dict[str, str] | None = None) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.unsupported: dict[str, str] = dict(unsupported or {})

    def __repr__(self) -> str:
        return f"GradientResults(layers={list(self)}, unsupported={self.unsupported})"


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


def _check_loss(loss: str | LossFn, targets: Tensor | None) -> None:
    if callable(loss):
        return
    if loss not in ("cross_entropy", "logit"):
        raise NndistError(f"unknown loss {loss!r}; use 'cross_entropy', 'logit' or a callable (outputs, targets) -> (B,)")
    if loss == "cross_entropy" and targets is None:
        raise NndistError("loss='cross_entropy' needs targets; pass targets=... or use loss='logit'")


def _select(
    model: nn.Module, layers: Iterable[str] | str | None
) -> tuple[dict[str, nn.Module], dict[str, str]]:
    handled: dict[str, nn.Module] = {}
    unsupported: dict[str, str] = {}
    all_names: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        all_names[name] = m
        if type(m) in HANDLERS:
            handled[name] = m
        elif not isinstance(m, _NORM_TYPES) and any(True for _ in m.parameters(recurse=False)):
            unsupported[name] = type(m).__name__
    if layers is None:
        return handled, unsupported
    wanted = [layers] if isinstance(layers, str) else list(layers)
    chosen: dict[str, nn.Module] = {}
    for name in wanted:
        if name in handled:
            continue
        if name in all_names:
            raise NndistError(
                f"layer {name!r} ({type(all_names[name]).__name__}) has no emission/absorption handler; "
                "register one with nndist.gradients.register_handler"
            )
        raise NndistError(f"unknown layer {name!r}; valid names: {', '.join(handled) or '(none)'}")
    for name in handled:  # keep named_modules() order
        if name in wanted:
            chosen[name] = handled[name]
    return chosen, unsupported


@dataclass
class _Call:
    name: str
    module: nn.Module
    input: Tensor | None
    output: Tensor | None  # kept by the slow path only
    version: int


def _compute(call: _Call, grad: Tensor | None) -> LayerGradients:
    if grad is None:
        assert call.output is not None
        grad = torch.zeros_like(call.output)
    assert call.input is not None
    res = HANDLERS.get(type(call.module))(call.module, call.input, grad)
    return LayerGradients(res.emission.detach(), res.absorption.detach(), res.norm_sum.detach())


def _add(results: dict[str, LayerGradients], name: str, res: LayerGradients) -> None:
    results[name] = results[name] + res if name in results else res


def _forward(
    model: nn.Module, args: tuple[object, ...], chosen: dict[str, nn.Module], hook: Callable[..., object]
) -> object:
    handles = []
    try:
        for m in chosen.values():
            handles.append(m.register_forward_hook(hook))
        return model(*args)
    finally:
        for h in handles:
            h.remove()


def _run_streaming(
    model: nn.Module,
    args: tuple[object, ...],
    targets: Tensor | None,
    loss: str | LossFn,
    chosen: dict[str, nn.Module],
    results: dict[str, LayerGradients],
) -> set[str]:
    """Fast path: each ``G`` is consumed by a tensor hook on ``V`` as the backward pass reaches it.

    The backward is asked for the gradient of the (floating) model inputs only, so autograd
    skips every weight gradient, and each ``G`` is freed as soon as its handler has run. Tensor
    hooks see ``V``'s gradient even when the model later modifies ``V`` in place. Returns the names
    of layers whose hook never fired (not on a path to an input): they need the slow path.
    """
    name_of = {id(m): n for n, m in chosen.items()}
    calls: list[_Call] = []
    fired: set[int] = set()
    roots = [a for a in args if isinstance(a, Tensor) and a.requires_grad]

    def tensor_hook(i: int) -> Callable[[Tensor], None]:
        def fn(grad: Tensor) -> None:
            fired.add(i)
            call = calls[i]
            with torch.no_grad():
                _add(results, call.name, _compute(call, grad))
            call.input = None  # let the input go as soon as it is used

        return fn

    def hook(module: nn.Module, hargs: tuple[object, ...], output: object) -> object:
        name = name_of[id(module)]
        if not isinstance(output, Tensor):
            raise NndistError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
        a = hargs[0] if hargs and isinstance(hargs[0], Tensor) else output
        v, replaced = output, False
        if not v.requires_grad:  # frozen layer or integer input: make V a leaf so a graph exists
            v, replaced = v.detach().requires_grad_(), True
            roots.append(v)
        # V itself is not kept: autograd frees it as the backward pass moves on
        calls.append(_Call(name, module, a, None, 0))
        v.register_hook(tensor_hook(len(calls) - 1))
        return v if replaced else None

    outputs = _forward(model, args, chosen, hook)
    losses = _per_sample_loss(loss, outputs, targets, args[0].shape[0])  # type: ignore[union-attr]
    if roots and losses.requires_grad:
        torch.autograd.grad(losses.sum(), roots, allow_unused=True)
    del outputs, losses
    return {c.name for i, c in enumerate(calls) if i not in fired}


def _run_all_grads(
    model: nn.Module,
    args: tuple[object, ...],
    targets: Tensor | None,
    loss: str | LossFn,
    chosen: dict[str, nn.Module],
    copy_outputs: bool,
) -> tuple[list[_Call], list[Tensor | None]] | None:
    """Slow path: ``autograd.grad(loss, [V_1, ..., V_L])``; ``None`` if a ``V`` was modified in place."""
    name_of = {id(m): n for n, m in chosen.items()}
    calls: list[_Call] = []

    def hook(module: nn.Module, hargs: tuple[object, ...], output: object) -> object:
        name = name_of[id(module)]
        if not isinstance(output, Tensor):
            raise NndistError(f"layer {name!r} returned {type(output).__name__}, not a tensor")
        a = hargs[0] if hargs and isinstance(hargs[0], Tensor) else output
        v, replaced = output, False
        if not v.requires_grad:
            v, replaced = v.detach().requires_grad_(), True
        calls.append(_Call(name, module, a, v, v._version))
        if copy_outputs:  # in-place changes then hit the copy, not the recorded V
            return v.clone()
        return v if replaced else None

    outputs = _forward(model, args, chosen, hook)
    losses = _per_sample_loss(loss, outputs, targets, args[0].shape[0])  # type: ignore[union-attr]
    if any(c.output is not None and c.output._version != c.version for c in calls):
        return None
    if not calls or not losses.requires_grad:
        return calls, [None] * len(calls)
    grads = torch.autograd.grad(losses.sum(), [c.output for c in calls if c.output is not None], allow_unused=True)
    return calls, list(grads)


class TrainModeNotice(UserWarning):
    """Issued when a model with BatchNorm or dropout in train mode is measured (in eval mode)."""


_MODE_SENSITIVE = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)


def emission_absorption(
    model: nn.Module,
    inputs: Inputs,
    targets: Tensor | None = None,
    *,
    loss: str | LossFn = "cross_entropy",
    layers: Iterable[str] | str | None = None,
) -> GradientResults:
    """Per-sample emission and absorption of every handled layer (paper, section 2.2).

    For output channel ``c1`` and input channel ``c2`` of a layer, the local gradient
    ``LG^{c1->c2}`` is output channel ``c1``'s contribution to ``dL/dA[c2]`` (for a convolution,
    the transposed convolution of ``G[c1]`` with ``W[c1, c2]``; for a linear layer ``g_i W_ij``);
    summed over ``c1`` it is autograd's ``dL/dA``. Emission ``Em^{c1} = sum_{c2} ||LG^{c1->c2}||``,
    absorption ``Ab^{c2} = sum_{c1} ||LG^{c1->c2}||``. Both count each channel pair once, so per
    sample ``sum Em == sum Ab``.

    The model runs in eval mode (BatchNorm uses running statistics, so each sample's gradient is
    its own); every module's train/eval flag is restored afterwards. No hook is left on the model,
    also when the forward raises. A layer called several times in one forward contributes the sum
    of its calls. A non-finite loss gives NaN/Inf results, not an error.

    Args:
        model: Any ``nn.Module``; handled by default: ``nn.Conv2d`` (any stride, padding incl.
            ``'same'``, dilation, groups, bias; ``padding_mode='zeros'`` only) and ``nn.Linear``
            (with any extra leading dimensions); more via :func:`register_handler`.
        inputs: The batch ``(B, ...)``, or a sequence of tensors passed as ``model(*inputs)``.
        targets: Class indices ``(B,)`` (or what a callable loss expects).
        loss: ``"cross_entropy"`` (needs targets), ``"logit"`` (the target's logit, or the
            predicted class's when ``targets`` is None), or a callable
            ``(outputs, targets) -> (B,)`` per-sample losses. The batch loss is their sum.
        layers: Module names (as in ``model.named_modules()``) to study; default all handled ones.

    Returns:
        A :class:`GradientResults` dict ``{name: LayerGradients}`` with ``emission`` ``(B, C_out)``,
        ``absorption`` ``(B, C_in)`` and ``norm_sum`` ``(C_out, C_in)`` (sum over the batch of
        ``||LG^{c1->c2}||``), detached, on the gradient's device, in the model's floating dtype
        (float32 for half precision); ``.unsupported`` lists modules with parameters but no handler.

    Raises:
        NndistError: Unknown layer name (the message lists valid ones), a layer without handler in
            ``layers``, an unsupported configuration (e.g. ``padding_mode='reflect'``), a bad loss
            or missing targets.
    """
    _check_loss(loss, targets)
    chosen, unsupported = _select(model, layers)
    for name, m in chosen.items():
        entry = HANDLERS._entry(type(m))
        if entry.check is not None:
            entry.check(name, m)
    results: dict[str, LayerGradients] = {}
    if not chosen:
        return GradientResults(unsupported=unsupported)
    args: tuple[object, ...] = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    if not args or not isinstance(args[0], Tensor):
        raise NndistError("inputs must be a tensor (B, ...) or a sequence of tensors whose first is batched")
    modes = [(m, m.training) for m in model.modules()]
    if any(training and isinstance(m, _MODE_SENSITIVE) for m, training in modes):
        warnings.warn(
            "emission_absorption: the model is in train mode; Emission/Absorption are measured in eval "
            "mode (BatchNorm on running statistics, no dropout) so that samples do not interact, and "
            "the model's mode is restored afterwards",
            TrainModeNotice,
            stacklevel=2,
        )
    try:
        model.eval()
        with torch.enable_grad(), torch.inference_mode(False):
            # Inputs become fresh leaves that require grad: the backward pass then reaches every
            # layer without computing any parameter gradient. User tensors are not modified.
            args = tuple(
                a.clone().requires_grad_() if isinstance(a, Tensor) and a.is_inference() and a.is_floating_point()
                else a.detach().requires_grad_() if isinstance(a, Tensor) and a.is_floating_point()
                else a.clone() if isinstance(a, Tensor) and a.is_inference()
                else a
                for a in args
            )
            missing = _run_streaming(model, args, targets, loss, chosen, results)
            if missing:  # layers not on a path to an input: ask autograd for their G directly
                rest = {n: chosen[n] for n in chosen if n in missing}
                for n in rest:
                    results.pop(n, None)
                run = _run_all_grads(model, args, targets, loss, rest, copy_outputs=False)
                if run is None:  # an output was modified in place: record copies instead
                    run = _run_all_grads(model, args, targets, loss, rest, copy_outputs=True)
                assert run is not None
                calls, grads = run
                del run
                with torch.no_grad():
                    for i, call in enumerate(calls):
                        _add(results, call.name, _compute(call, grads[i]))
                        grads[i] = None
    finally:
        for m, training in modes:
            m.training = training
    return GradientResults({n: results[n] for n in chosen if n in results}, unsupported=unsupported)

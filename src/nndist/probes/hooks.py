"""The one hook context: hooks are registered inside ``try/finally`` and never outlive it.

Every probe (features, channel-wise gradients, the training monitor) puts its hooks on a model
through :func:`forward_hooks`, so a hook is removed on normal exit and when the forward pass
raises (Captum's ``_utils/gradient.py`` habit).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

from torch import nn
from torch.utils.hooks import RemovableHandle

from ..errors import NndistError

__all__ = ["forward_hooks", "layer_modules"]


@contextlib.contextmanager
def forward_hooks(
    modules: Iterable[nn.Module],
    hook: Callable[..., object] | Callable[[nn.Module], Callable[..., object]],
    *,
    per_module: bool = False,
    with_kwargs: bool = False,
) -> Iterator[list[RemovableHandle]]:
    """Registers a forward hook on each module for the duration of the ``with`` block.

    Args:
        modules: the modules to hook.
        hook: ``hook(module, args, output)`` as :meth:`torch.nn.Module.register_forward_hook`
            takes it, or, with ``per_module=True``, ``hook(module)`` returning the hook of that
            module.
        per_module: build one hook per module with ``hook(module)``.
        with_kwargs: the hook also gets the forward's keyword arguments,
            ``hook(module, args, kwargs, output)``.

    Yields:
        The handles (removed when the block exits, normally or by an exception).
    """
    handles: list[RemovableHandle] = []
    try:
        for m in modules:
            handles.append(m.register_forward_hook(hook(m) if per_module else hook, with_kwargs=with_kwargs))  # type: ignore[arg-type]
        yield handles
    finally:
        for h in handles:
            h.remove()


def layer_modules(model: nn.Module, layers: Iterable[str]) -> dict[str, nn.Module]:
    """``{name: module}`` for module names of ``model``.

    Raises:
        NndistError: a name that is not a module of ``model`` (or the root's empty name); the
            message lists the layers that hold parameters.
    """
    modules = dict(model.named_modules())
    layers = list(layers)
    missing = [name for name in layers if name not in modules or name == ""]
    if missing:
        valid = ", ".join(n for n, m in model.named_modules() if n and any(True for _ in m.parameters(recurse=False)))
        raise NndistError(f"unknown layer name(s) {', '.join(missing)}; layers with parameters in this model: {valid}")
    return {name: modules[name] for name in layers}

"""What a monitor watches: the model behind its wrappers, the layers, their channels, the local shards.

* **Names.** Layer names are those of the model being trained: the wrappers' own prefixes are
  dropped, ``module.`` of ``DistributedDataParallel``/``DataParallel`` (the wrapper object is
  unwrapped) and ``_orig_mod.`` of ``torch.compile`` (likewise), and the inner names of FSDP1 and
  activation-checkpoint wrappers (``_fsdp_wrapped_module.``, ``_checkpoint_wrapped_module.``).
  FSDP2's ``fully_shard`` keeps the names as they are.
* **Layers.** By default every module that holds parameters of its own. ``layers`` takes module
  names (any module) and glob patterns (``fnmatch``; matched against the modules that hold
  parameters of their own); a name or pattern that matches nothing is an error listing the
  valid names.
* **Channels** (``per_channel=True``): dim 0 of a parameter and of its gradient; for the outputs
  of convolutions and batch/group/instance norms, dim 1 of ``(B, C, ...)``; the last dim of every
  other output (Linear, LayerNorm, embeddings on tokens).
* **Shards.** A parameter that is a DTensor sharded on dim 0 over a 1-D mesh (FSDP2) is read as
  its local shard, with the index of its first row in the full parameter, so each rank
  summarises its own rows and the monitor merges them; the full parameter is never gathered.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ...errors import NndistError

__all__ = ["Layer", "ParamView", "channel_dim", "param_view", "select_layers", "unwrap"]

_WRAPPER_PARTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")
_CHANNEL_DIM1 = (nn.modules.conv._ConvNd, nn.modules.batchnorm._BatchNorm, nn.GroupNorm,
                 nn.modules.instancenorm._InstanceNorm)


def unwrap(model: nn.Module) -> nn.Module:
    """The model being trained inside DDP/DataParallel and ``torch.compile`` wrappers."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
    return model


def clean_name(name: str) -> str:
    """A module name without the wrappers' inner parts."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_PARTS)


def named_modules(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``(clean name, module)`` of every module once (a wrapper and what it wraps share a name:
    the innermost module is kept)."""
    out: dict[str, nn.Module] = {}
    for name, m in model.named_modules():
        out[clean_name(name)] = m  # later (deeper) entries of the same clean name win
    yield from out.items()


def has_own_parameters(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def channel_dim(module: nn.Module) -> int:
    """The channel dimension of a module's output: 1 for conv/norm layers on (B, C, ...), else -1."""
    return 1 if isinstance(module, _CHANNEL_DIM1) else -1


@dataclass(frozen=True)
class Layer:
    """A watched layer: its clean name, the module, its own parameters ``(name, parameter)``."""

    name: str
    module: nn.Module
    params: tuple[tuple[str, nn.Parameter], ...]

    @property
    def type(self) -> str:
        return type(self.module).__name__


def _short_list(names: list[str], limit: int = 25) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "") if names else "(none)"


def select_layers(model: nn.Module, layers: Iterable[str] | str | None) -> list[Layer]:
    """The watched layers of (unwrapped) ``model`` in ``named_modules()`` order.

    Raises:
        NndistError: ``layers`` is not a list of strings, or one of them matches no module; the
            message lists the layers that hold parameters.
    """
    modules = dict(named_modules(model))
    with_params = [n for n, m in modules.items() if n and has_own_parameters(m)]
    if layers is None:
        chosen = set(with_params)
    else:
        wanted = [layers] if isinstance(layers, str) else list(layers)
        if not all(isinstance(w, str) for w in wanted):
            raise NndistError(f"layers must be module names or glob patterns (strings), got {layers!r}")
        chosen = set()
        for w in wanted:
            hits = [n for n in with_params if fnmatch.fnmatchcase(n, w)] if any(c in w for c in "*?[") else \
                   ([w] if w in modules and w else [])
            if not hits:
                raise NndistError(f"layer {w!r} matches no module of {type(model).__name__}; "
                                  f"layers with parameters: {_short_list(with_params)}")
            chosen.update(hits)
    if not chosen:
        raise NndistError(f"{type(model).__name__} has no module with parameters of its own to watch; pass layers=[...]")
    return [Layer(n, m, tuple(m.named_parameters(recurse=False))) for n, m in modules.items() if n in chosen]


@dataclass(frozen=True)
class ParamView:
    """The part of a parameter (or its gradient) this process holds.

    Attributes:
        local: the local values (the whole tensor, or this rank's shard of dim 0).
        shape: the full tensor's shape.
        start: index in dim 0 of the first local row (0 unless sharded).
        sharded: whether other ranks hold the other rows.
    """

    local: torch.Tensor
    shape: tuple[int, ...]
    start: int = 0
    sharded: bool = False

    @property
    def channels(self) -> int:
        return self.shape[0] if self.shape else 1


def _shard_start(t: torch.Tensor) -> int:
    """Index in dim 0 of the first local row of a DTensor sharded on dim 0 over a 1-D mesh."""
    from torch.distributed.tensor import Shard

    mesh, placements = t.device_mesh, tuple(t.placements)
    if mesh.ndim != 1 or placements != (Shard(0),):
        raise NndistError(f"parameters sharded as {placements} over a {mesh.ndim}-D mesh are not supported; "
                          "the monitor reads FSDP2's dim-0 shards over one mesh dimension")
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    except ImportError:  # pragma: no cover - older torch: torch.chunk's rule, which FSDP2 follows
        rows = math.ceil(t.shape[0] / mesh.size())
        return min(t.shape[0], mesh.get_local_rank() * rows)
    _, offset = compute_local_shape_and_global_offset(t.shape, mesh, placements)
    return int(offset[0]) if offset else 0


def param_view(t: torch.Tensor) -> ParamView:
    """A parameter or gradient as the values this process holds (a DTensor's local shard)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without DTensor
        DTensor = ()  # type: ignore[assignment]  # noqa: N806
    if isinstance(t, DTensor):
        return ParamView(t.to_local().detach(), tuple(t.shape), _shard_start(t), True)
    return ParamView(t.detach(), tuple(t.shape))

"""Features: the outputs of chosen layers, streamed batch by batch to a consumer."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .hooks import forward_hooks, layer_modules

__all__ = ["stream_features"]


@torch.no_grad()
def stream_features(
    model: nn.Module,
    layers: Sequence[str],
    inputs: Mapping[str, torch.Tensor],
    consume: Callable[[str, str, torch.Tensor], None],
    *,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Runs each input set through ``model`` (in eval mode) and hands every layer's output on.

    Args:
        model: the network (put in eval mode here).
        layers: module names whose outputs are consumed.
        inputs: input type -> (N, *input_shape) tensor.
        consume: ``consume(layer, input_type, output)`` for every batch; the output is detached
            and must not be kept (it is freed with its batch).
        batch_size: images per forward pass.
        progress: called with the number of images after each batch.
    """
    modules = layer_modules(model, layers)
    name_of = {id(m): name for name, m in modules.items()}
    model.eval()
    current: dict[str, str] = {}

    def hook(module: nn.Module, _args: Any, output: torch.Tensor) -> None:
        consume(name_of[id(module)], current["input"], output.detach())

    with forward_hooks(modules.values(), hook):
        for input_type, x in inputs.items():
            current["input"] = input_type
            for start in range(0, x.shape[0], batch_size):
                xb = x[start : start + batch_size]
                model(xb)
                if progress is not None:
                    progress(xb.shape[0])

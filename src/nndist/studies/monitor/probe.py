"""Emission and Absorption during training, on a fixed probe batch, without touching the training.

Every ``gradients_every`` steps the monitor runs :func:`nndist.emission_absorption` (the paper's
channel-wise gradients) on the same probe batch: in eval mode (BatchNorm on its running
statistics, no dropout), asking autograd for the inputs' gradient only, so no ``.grad`` is
written. Every module's train/eval flag and every buffer are put back afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...errors import NndistError
from ...probes.gradients import HANDLERS, LayerGradients, emission_absorption
from .targets import Layer

__all__ = ["Probe"]


class Probe:
    """The probe batch and the watched layers it measures.

    Args:
        model: the unwrapped model.
        layers: the watched layers; those with an Emission/Absorption handler (Conv2d,
            Linear, and types added with :func:`nndist.register_handler`) are measured.
        probe: ``(inputs, targets)``; targets may be None (the loss is then the predicted
            class's logit).

    Raises:
        NndistError: a probe that is not ``(inputs, targets)`` with a tensor batch, or no
            watched layer with a handler.
    """

    def __init__(self, model: nn.Module, layers: Sequence[Layer], probe: Any) -> None:
        if not (isinstance(probe, (tuple, list)) and len(probe) == 2 and isinstance(probe[0], torch.Tensor)):
            raise NndistError("probe must be (inputs, targets): a batch tensor (B, ...) and class indices (B,) or None")
        inputs, targets = probe
        if targets is not None and not isinstance(targets, torch.Tensor):
            raise NndistError(f"probe targets must be a tensor of class indices or None, got {type(targets).__name__}")
        raw = {id(m): name for name, m in model.named_modules()}
        self.layers = {layer.name: raw[id(layer.module)] for layer in layers if type(layer.module) in HANDLERS}
        if not self.layers:
            raise NndistError("gradients_every needs a watched layer with an Emission/Absorption handler "
                              f"({', '.join(HANDLERS.names())}); none of the watched layers is one")
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.model = model
        self.inputs = inputs.detach().to(device)
        self.targets = None if targets is None else targets.detach().to(device)
        self.samples = int(inputs.shape[0])

    def run(self) -> dict[str, LayerGradients]:
        """Emission/Absorption of the probe batch per watched layer (clean name -> result)."""
        model = self.model
        modes = [(m, m.training) for m in model.modules()]
        buffers = [(b, b.detach().clone()) for b in model.buffers()]
        try:
            model.eval()
            results = emission_absorption(model, self.inputs, self.targets, loss="logit" if self.targets is None else "cross_entropy",
                                          layers=list(self.layers.values()))
        finally:
            for m, training in modes:
                m.training = training
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
        return {name: results[raw] for name, raw in self.layers.items() if raw in results}

"""Training many initialisations of one architecture together, as one batched computation.

The initialisation study trains the same network from several initialisations (and seeds) on
the same sequence of batches. Instead of R sequential training loops, the R parameter sets are
stacked along a new leading dimension and the network runs once per batch under
:func:`torch.func.vmap`: convolutions become one grouped convolution, linear layers one batched
matrix product. Adam is elementwise, so a single Adam over the stacked parameters is exactly R
independent Adams; the loss is the sum of the R per-run mean losses, so each run's gradient is
its own. Each run's result therefore equals training it alone, up to float32 rounding in the
batched kernels (measured in ``benchmarks/bench_training.py``).

A run whose loss becomes non-finite is marked diverged at that step and frozen (its parameters
keep the last finite values); the others go on.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap


class StackedRuns:
    """R copies of one architecture with stacked parameters, trained together.

    Args:
        models: R modules of identical architecture (their current parameters are copied).

    Attributes:
        params: parameter name -> leaf tensor (R, *shape) that requires grad.
        buffers: buffer name -> tensor (R, *shape).
    """

    def __init__(self, models: list[nn.Module]) -> None:
        if not models:
            raise ValueError("StackedRuns needs at least one model")
        self.base = copy.deepcopy(models[0]).to("meta")
        self.num_runs = len(models)
        self.params = {
            name: torch.stack([dict(m.named_parameters())[name].detach() for m in models]).clone().requires_grad_(True)
            for name, _ in models[0].named_parameters()
        }
        self.buffers = {
            name: torch.stack([dict(m.named_buffers())[name].detach() for m in models]).clone()
            for name, _ in models[0].named_buffers()
        }
        self.frozen = torch.zeros(self.num_runs, dtype=torch.bool)
        self._frozen_values: dict[int, dict[str, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    def to(self, device: torch.device | str) -> "StackedRuns":
        self.params = {k: v.detach().to(device).requires_grad_(True) for k, v in self.params.items()}
        self.buffers = {k: v.to(device) for k, v in self.buffers.items()}
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs all R models on the same inputs.

        Args:
            x: (B, *input_shape) inputs shared by every run.

        Returns:
            (R, B, num_classes) outputs.
        """

        def one(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor]) -> torch.Tensor:
            return functional_call(self.base, (params, buffers), (x,))

        return vmap(one)(self.params, self.buffers)

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-run mean cross-entropy and the outputs: ((R,), (R, B, K))."""
        out = self.forward(x)
        r, b, k = out.shape
        loss = F.cross_entropy(out.reshape(r * b, k), y.repeat(r), reduction="none").view(r, b).mean(1)
        return loss, out

    def model(self, run: int) -> nn.Module:
        """A standalone module holding run ``run``'s current parameters (a copy)."""
        module = copy.deepcopy(self.base).to_empty(device=self.device)
        state = {k: v[run].detach().clone() for k, v in self.params.items()}
        state.update({k: v[run].detach().clone() for k, v in self.buffers.items()})
        module.load_state_dict(state, strict=True)
        return module.eval()

    def freeze(self, runs: Iterable[int]) -> None:
        """Stops updating ``runs``: their parameters are held at their current values."""
        for r in runs:
            if not self.frozen[r]:
                self.frozen[r] = True
                self._frozen_values[r] = {k: v[r].detach().clone() for k, v in self.params.items()}

    def restore_frozen(self) -> None:
        """Writes the held values back into frozen runs (call after each optimiser step)."""
        if not self._frozen_values:
            return
        with torch.no_grad():
            for r, values in self._frozen_values.items():
                for k, v in values.items():
                    self.params[k][r].copy_(v)

    def state_dict(self) -> dict:
        return {
            "params": {k: v.detach().cpu() for k, v in self.params.items()},
            "buffers": {k: v.cpu() for k, v in self.buffers.items()},
            "frozen": self.frozen.clone(),
            "frozen_values": {r: {k: v.cpu() for k, v in d.items()} for r, d in self._frozen_values.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        device = self.device
        with torch.no_grad():
            for k, v in state["params"].items():
                self.params[k].copy_(v.to(device))
            for k, v in state["buffers"].items():
                self.buffers[k].copy_(v.to(device))
        self.frozen = state["frozen"].clone()
        self._frozen_values = {int(r): {k: v.to(device) for k, v in d.items()} for r, d in state["frozen_values"].items()}


@torch.no_grad()
def evaluate_runs(runs: StackedRuns, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Accuracy and mean loss of every run on (x, y): two (R,) float64 tensors."""
    correct = torch.zeros(runs.num_runs, dtype=torch.float64)
    total_loss = torch.zeros(runs.num_runs, dtype=torch.float64)
    n = x.shape[0]
    for start in range(0, n, batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        loss, out = runs.losses(xb, yb)
        correct += (out.argmax(-1) == yb).sum(1).double().cpu()
        total_loss += loss.double().cpu() * xb.shape[0]
    return correct / max(n, 1), total_loss / max(n, 1)

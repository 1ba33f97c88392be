"""Training many initialisations of one architecture together, as one batched computation.

The initialisation study trains the same network from several initialisations (and seeds) on
the same sequence of batches. Instead of R sequential training loops, the R parameter sets are
stacked along a new leading dimension and the network runs once per batch under
:func:`torch.func.vmap`: convolutions become one grouped convolution, linear layers one batched
matrix product. Adam is elementwise, so a single Adam over the stacked parameters is exactly R
independent Adams; the loss is the sum of the R per-run mean losses, so each run's gradient is
its own. Each run's result therefore equals training it alone, up to float32 rounding in the
batched kernels (measured in ``benchmarks/bench_training.py``).

For the paper's CNN the stacked network is also written out by hand (:func:`paper_cnn_stacked`):
the first convolution sees the same input in every run, so it is one ordinary convolution with
R x 16 output channels; the later convolutions are grouped convolutions (groups = R); the linear
layers are batched matrix products laid out so that every gradient comes out contiguous; the
activations are channels-last, where this CPU's max pooling is about five times faster; and each
max pooling comes before its ReLU (the same values and the same gradients: max commutes with a
monotone function, and the pooled maximum is the one the ReLU then passes or blocks). On this
CPU one step of 7 runs at batch 64 takes 115-125 ms against 160-200 ms vmapped. It is tested
against vmap and against each model trained alone, in float64 (``tests/test_training.py``).
Any other architecture uses :func:`torch.func.vmap`.

A run whose loss becomes non-finite is marked diverged at that step and frozen (its parameters
keep the last finite values); the others go on.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .models import PaperCNN


def paper_cnn_stacked(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """R stacked paper CNNs (Table 1) on one shared batch, without vmap.

    Args:
        params: the stacked parameters of :class:`~nndist.models.PaperCNN`, each (R, *shape).
        x: (B, 3, 32, 32) inputs shared by every run.

    Returns:
        (R, B, num_classes) outputs, equal to running each model alone.
    """
    r = params["conv1.weight"].shape[0]
    b = x.shape[0]
    h = x.contiguous(memory_format=torch.channels_last)
    # conv1: one convolution with R*16 output channels (the input is shared), (B, R*16, 32, 32)
    h = F.conv2d(h, params["conv1.weight"].flatten(0, 1), params["conv1.bias"].flatten(), padding=1)
    h = F.relu(F.max_pool2d(h, 2))  # (B, R*16, 16, 16); pool before ReLU: same values and gradients
    h = F.conv2d(h, params["conv2.weight"].flatten(0, 1), params["conv2.bias"].flatten(), padding=1, groups=r)
    h = F.relu(F.max_pool2d(h, 2))  # (B, R*16, 8, 8)
    h = F.relu(F.conv2d(h, params["conv3.weight"].flatten(0, 1), params["conv3.bias"].flatten(), padding=1, groups=r))
    # nn.Flatten's (c, y, x) order per run; columns are samples: (R, 1024, B)
    h = h.reshape(b, r, -1).permute(1, 2, 0)
    # Linear layers as W @ h^T, so that dL/dW = g @ h comes out contiguous in nn.Linear's layout.
    h = F.relu(torch.baddbmm(params["fc1.bias"].unsqueeze(-1), params["fc1.weight"], h))  # (R, 512, B)
    out = torch.baddbmm(params["fc2.bias"].unsqueeze(-1), params["fc2.weight"], h)  # (R, K, B)
    return out.transpose(1, 2)


# Hand-written stacked forwards, by exact model type: fn(params, x) -> (R, B, K).
STACKED_FORWARDS: dict[type, Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]] = {
    PaperCNN: paper_cnn_stacked,
}


class StackedRuns:
    """R copies of one architecture with stacked parameters, trained together.

    Args:
        models: R modules of identical architecture (their current parameters are copied).
        fast: use the hand-written stacked forward where the architecture has one
            (:data:`STACKED_FORWARDS`); ``False`` always uses :func:`torch.func.vmap`.

    Attributes:
        params: parameter name -> leaf tensor (R, *shape) that requires grad.
        buffers: buffer name -> tensor (R, *shape).
    """

    def __init__(self, models: list[nn.Module], fast: bool = True) -> None:
        if not models:
            raise ValueError("StackedRuns needs at least one model")
        self.base = copy.deepcopy(models[0]).to("meta")
        self._stacked_forward = STACKED_FORWARDS.get(type(models[0])) if fast else None
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
        fast = self._stacked_forward
        if fast is not None and x.dim() == 4 and tuple(x.shape[1:]) == tuple(getattr(self.base, "input_size", ())):
            return fast(self.params, x)
        # Everything else, including inputs of the wrong shape (the model's own error names them).

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


def stacked_adam(runs: StackedRuns, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """One Adam over all stacked parameters (elementwise, so R independent Adams).

    Uses the fused implementation (one kernel for all parameters, about 10 % of a paper-CNN step
    saved on this CPU) where the device supports it, else the default one. Both compute the same
    update up to float32 rounding.
    """
    params = list(runs.params.values())
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # fused Adam not available for this device or dtype
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


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

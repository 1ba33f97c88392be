"""Training many initialisations of one architecture together, each run computed on its own.

The initialisation study trains the same network from several initialisations (and seeds) on
the same sequence of batches. A :class:`RunSet` holds the R models and takes one step of all of
them per batch: each run's forward pass uses only its own parameters, in ops of the same shapes
as when it is trained alone, the loss is the sum of the R per-run mean losses (so each run's
gradient is its own), and one fused Adam updates every parameter tensor. Adam is elementwise and
runs tensor by tensor, so this is exactly R independent Adams.

Because no op ever mixes runs, a run's arithmetic does not depend on how many runs share its
process: the result equals training it alone, bit for bit, on any machine, and a study spread
over several processes (``torchrun``) equals the one-process study bit for bit
(``tests/test_training.py``). Stacking the runs into grouped convolutions would round differently
with the number of runs beside it (``benchmarks/bench_training.py`` times both ways).

The paper's CNN has a hand-written forward for training
(:func:`nndist.models.paper_cnn_forward`: channels-last, each max pooling before its ReLU), tested
against the module's own forward in float64, ties included. Any other architecture runs its own
``forward``.

A run whose loss becomes non-finite is marked diverged at that step and frozen: it gets no
gradient from then on, so Adam leaves its parameters at the last finite values; the others go on.
"""

from __future__ import annotations

import copy
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..models import PaperCNN, paper_cnn_forward


# Hand-written training forwards, by exact model type: fn(model, x) -> (B, K).
FAST_FORWARDS: dict[type, Callable[[nn.Module, torch.Tensor], torch.Tensor]] = {
    PaperCNN: paper_cnn_forward,
}


class RunSet:
    """R models of one architecture, trained together on the same batches.

    Args:
        models: R modules of identical architecture; the set trains copies of them.
        fast: use the hand-written training forward where the architecture has one
            (:data:`FAST_FORWARDS`); ``False`` always uses the module's own ``forward``.

    Attributes:
        models: the R trained modules, in run order.
        frozen: (R,) bool, runs that no longer train (diverged).
    """

    def __init__(self, models: list[nn.Module], fast: bool = True) -> None:
        if not models:
            raise ValueError("RunSet needs at least one model")
        self.models = [copy.deepcopy(m) for m in models]
        self.fast_forward = FAST_FORWARDS.get(type(models[0])) if fast else None
        self.frozen = torch.zeros(len(models), dtype=torch.bool)

    @property
    def num_runs(self) -> int:
        return len(self.models)

    @property
    def device(self) -> torch.device:
        return next(self.models[0].parameters()).device

    def to(self, device: torch.device | str) -> "RunSet":
        for m in self.models:
            m.to(device)
        return self

    def parameters(self) -> list[torch.nn.Parameter]:
        """Every run's parameters, run by run (the order of the optimiser's state)."""
        return [p for m in self.models for p in m.parameters()]

    def forward_one(self, run: int, x: torch.Tensor) -> torch.Tensor:
        """Run ``run``'s outputs (B, K) on ``x``."""
        model = self.models[run]
        input_size = tuple(getattr(model, "input_size", ()))
        if self.fast_forward is not None and x.dim() == 4 and tuple(x.shape[1:]) == input_size:
            return self.fast_forward(model, x)
        return model(x)  # also for inputs of the wrong shape: the model's own error names them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Runs all R models on the same inputs: (R, B, num_classes)."""
        return torch.stack([self.forward_one(r, x) for r in range(self.num_runs)])

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        outs = [self.forward_one(r, x) for r in range(self.num_runs)]
        return [F.cross_entropy(out, y) for out in outs], outs

    def losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-run mean cross-entropy and the outputs: ((R,), (R, B, K)), each run on its own."""
        loss, outs = self._losses(x, y)
        return torch.stack(loss), torch.stack(outs)

    def step(self, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """One optimiser step of every run that still trains, on one batch.

        A run whose loss is not finite is frozen first (it gets no gradient, so the optimiser
        skips it). Returns the per-run losses (R,), the outputs (R, B, K) and the runs frozen now.
        """
        opt.zero_grad(set_to_none=True)
        losses, outs = self._losses(x, y)
        loss = torch.stack(losses).detach()
        finite = torch.isfinite(loss).cpu()
        newly = [r for r in range(self.num_runs) if not bool(finite[r]) and not bool(self.frozen[r])]
        self.freeze(newly)
        # Only the active runs' losses enter the sum: a frozen run's graph gets no gradient at all
        # (not a zero one, which would turn into NaN through a diverged run's NaN weights).
        active = [losses[r] for r in range(self.num_runs) if not bool(self.frozen[r])]
        if active:
            torch.stack(active).sum().backward()
            opt.step()
        return loss, torch.stack(outs).detach(), newly

    def model(self, run: int) -> nn.Module:
        """A standalone copy of run ``run``'s module, in eval mode."""
        return copy.deepcopy(self.models[run]).eval()

    def freeze(self, runs: Iterable[int]) -> None:
        """Stops training ``runs``: they get no gradient, so their parameters stay as they are."""
        for r in runs:
            self.frozen[r] = True

    def state_dict(self) -> dict:
        return {
            "models": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in self.models],
            "frozen": self.frozen.clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Loads :meth:`state_dict` output, or the stacked layout of earlier state files.

        Earlier states held each parameter stacked over the runs (``params``: name -> (R, ...))
        with a frozen run's parameters held at their last values; both load to the same models.
        """
        if "params" in state:  # stacked layout (state versions 2 and 3)
            per_run = [
                {**{k: v[r] for k, v in state["params"].items()}, **{k: v[r] for k, v in state["buffers"].items()}}
                for r in range(self.num_runs)
            ]
        else:
            per_run = state["models"]
        for model, sd in zip(self.models, per_run):
            model.load_state_dict(sd, strict=True)
        self.frozen = state["frozen"].clone()


def run_adam(runs: RunSet, lr: float, weight_decay: float = 0.0) -> torch.optim.Adam:
    """One Adam over every run's parameters (elementwise, tensor by tensor: R independent Adams).

    Uses the fused implementation (one kernel call for all parameters) where the device supports
    it, else the default one; both compute the same update up to float32 rounding.
    """
    params = runs.parameters()
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, ValueError):  # fused Adam not available for this device or dtype
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def load_optimizer_state(opt: torch.optim.Optimizer, state: dict, runs: RunSet) -> None:
    """Loads an optimiser state, also one saved for stacked parameters by earlier versions.

    The stacked layout held one state per parameter name with tensors (R, ...); here every run's
    parameter has its own, in :meth:`RunSet.parameters` order.
    """
    params = runs.parameters()
    n_params = len(params) // runs.num_runs
    stacked = len(state["param_groups"][0]["params"]) == n_params and (
        runs.num_runs > 1 or any(s["exp_avg"].dim() == params[int(i)].dim() + 1 for i, s in state["state"].items())
    )
    if stacked:
        per_param: dict[int, dict] = {}
        for i, s in state["state"].items():
            for r in range(runs.num_runs):
                per_param[r * n_params + int(i)] = {k: (v if k == "step" else v[r]).clone() for k, v in s.items()}
        group = dict(state["param_groups"][0], params=list(range(n_params * runs.num_runs)))
        state = {"state": per_param, "param_groups": [group]}
    opt.load_state_dict(state)


@torch.no_grad()
def evaluate_runs(runs: RunSet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
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

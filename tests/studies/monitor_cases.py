"""Shared cases of the monitor tests: tiny models that cover the channel rules, a training loop,
and the literal twin of every row: the float64 ``Summary`` of the same tensors, captured by hooks
of the test's own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from nndist.stats import SUMMARY_COLUMNS, Summary
from nndist.stats.tables import coarse_histogram

EXACT = ["n", "nonfinite", "min", "max", "q01", "q05", "q25", "q50", "q75", "q95", "q99"]
CLOSE = ["mean", "std", "skew", "kurtosis", "ks_normal"]


class Tiny(nn.Module):
    """Conv2d, BatchNorm2d (then an in-place ReLU), Linear, LayerNorm and a bias-free Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4 * 6 * 6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.conv(x)))
        return self.head(self.norm(self.fc(x.flatten(1))))


class Tokens(nn.Module):
    """An embedding on tokens (B, T) and a Linear on (B, T, E): channels are the last dim."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.emb(x)).mean(1)


def data(steps: int, seed: int = 0, batch: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(batch, 3, 6, 6, generator=g), torch.randint(0, 5, (batch,), generator=g)) for _ in range(steps)]


def tiny(seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return Tiny()


def train(model: nn.Module, batches, step_fn: Callable[[int], object] | None, lr: float = 0.05) -> None:
    """SGD over the batches, calling ``step_fn(step)`` after backward, before the optimizer step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for i, (x, y) in enumerate(batches):
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        if step_fn is not None:
            step_fn(i)
        opt.step()
        opt.zero_grad()


class Twin:
    """Float64 summaries of the weights, grads and outputs of the watched layers at given steps."""

    def __init__(self, model: nn.Module, layers: list[str], channel_dims: dict[str, int]) -> None:
        self.model, self.layers, self.channel_dims = model, layers, channel_dims
        self.outputs: dict[str, list[torch.Tensor]] = {}
        self.rows: list[dict] = []
        self.hist: list[dict] = []
        modules = dict(model.named_modules())
        for name in layers:
            modules[name].register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(_m, _a, out):  # noqa: ANN001
            if torch.is_grad_enabled():
                self.outputs.setdefault(name, []).append(out.detach().clone())
        return hook

    def _add(self, table: str, step: int, layer: str, param: str | None, x: torch.Tensor, dim: int, per_channel: bool) -> None:
        keys = {"step": step, "layer": layer, **({} if table == "features" else {"param": param})}
        s = Summary().update(x.double())
        self.rows.append({"table": table, **keys, "channel": np.nan, **s.rows()[0]})
        left, right, count = coarse_histogram(s, 8)
        self.hist += [{"table": table, "step": step, "layer": layer, "param": param, "left": a, "right": b, "count": c}
                      for a, b, c in zip(left, right, count)]
        if per_channel:
            x = x.reshape(1) if x.ndim == 0 else x
            c = x.shape[dim]
            for ch, row in enumerate(Summary(c).update(x.movedim(dim, -1).reshape(-1, c).double()).rows()):
                self.rows.append({"table": table, **keys, "channel": float(ch), **row})

    def record(self, step: int, logging: bool, per_channel: bool = False) -> None:
        """Call at the monitor's step: summarises what the monitor should have, then forgets outputs."""
        if logging:
            modules = dict(self.model.named_modules())
            for name in self.layers:
                for pname, p in modules[name].named_parameters(recurse=False):
                    self._add("weights", step, name, pname, p.detach(), 0, per_channel)
                    if p.grad is not None:
                        self._add("grads", step, name, pname, p.grad, 0, per_channel)
                if name in self.outputs:
                    out = torch.cat([o.reshape(-1, *o.shape[1:]) for o in self.outputs[name]])
                    dim = self.channel_dims[name] if out.ndim > 1 else -1
                    self._add("features", step, name, None, out, dim, per_channel)
        self.outputs = {}

    def frame(self, table: str) -> pd.DataFrame:
        rows = [r for r in self.rows if r["table"] == table]
        return pd.DataFrame(rows).drop(columns="table")


def assert_rows_equal(got: pd.DataFrame, want: pd.DataFrame, keys: list[str]) -> None:
    """Same rows (keys), exact counts/extremes/quantiles, moments to 1e-9 relative."""
    got = got.sort_values(keys, na_position="first").reset_index(drop=True)
    want = want.sort_values(keys, na_position="first").reset_index(drop=True)
    assert len(got) == len(want), (len(got), len(want))
    for k in keys:
        assert np.array_equal(got[k].to_numpy(), want[k].to_numpy()) or \
            np.array_equal(got[k].to_numpy(dtype=float), want[k].to_numpy(dtype=float), equal_nan=True), k
    for c in EXACT:
        assert np.array_equal(got[c].to_numpy(dtype=float), want[c].to_numpy(dtype=float), equal_nan=True), c
    for c in CLOSE:
        np.testing.assert_allclose(got[c].to_numpy(dtype=float), want[c].to_numpy(dtype=float), rtol=1e-9, atol=1e-12,
                                   err_msg=c)
    assert set(SUMMARY_COLUMNS) <= set(got.columns)


def hooks_on(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def listing(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and mtime (to show nothing was touched)."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*")) if p.is_file()}


class Plain(nn.Module):
    """No batch statistics (each rank's BatchNorm would see only its own samples)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 6 * 6, 8)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.fc(torch.relu(self.conv(x)).flatten(1))))

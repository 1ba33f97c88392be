"""TensorBoard events of a ``monitor`` run, rebuilt from its tables.

* scalars ``<table>/<layer>/<param>/mean`` and ``.../std`` at every logging step (``features``
  tags have no ``<param>``), and ``grads/<layer>/<param>/norm``, the L2 norm
  ``sqrt(n (std^2 + mean^2))``;
* histograms ``<table>/<layer>[/<param>]`` at every logging step, on the stored bucket edges
  (8 per octave of the summaries' fixed global edges, not re-binned), with the exact count,
  sum, sum of squares, min and max of the summary row;
* with a ``gradients`` table, scalars ``emission/<layer>`` and ``absorption/<layer>``: the sum over
  channels of the mean over the probe batch (the two are equal by the paper's identity).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..results import RunDir
from .tensorboard import _add_raw, _moments, _raw_from_bins

__all__ = ["write_monitor_events"]


def _tag(table: str, layer: str, param: object) -> str:
    return f"{table}/{layer}" if param is None or pd.isna(param) else f"{table}/{layer}/{param}"


def write_monitor_events(run: RunDir, writer, bins: int) -> None:  # noqa: ARG001 - bins: the stored edges are used
    hist = run.table("histograms")
    groups = {}
    if hist is not None and not hist.empty:
        for (table, layer, param, step), g in hist.groupby(["table", "layer", "param", "step"], sort=False, dropna=False):
            groups[(table, layer, None if pd.isna(param) else param, int(step))] = g
    for table in ("weights", "grads", "features"):
        df = run.table(table)
        if df is None or df.empty:
            continue
        df = df[df["channel"].isna()]
        for rec in df.itertuples(index=False):
            param = getattr(rec, "param", None)
            tag, step = _tag(table, rec.layer, param), int(rec.step)
            if rec.n:
                writer.add_scalar(f"{tag}/mean", float(rec.mean), step)
                writer.add_scalar(f"{tag}/std", float(rec.std), step)
                if table == "grads":
                    writer.add_scalar(f"{tag}/norm", math.sqrt(rec.n * (rec.std**2 + rec.mean**2)), step)
            g = groups.get((table, rec.layer, None if pd.isna(param) else param, step))
            if g is None or not rec.n:
                continue
            limits, counts = _raw_from_bins(g["left"].to_numpy(float), g["right"].to_numpy(float), g["count"].to_numpy(float))
            total, sumsq = _moments(rec.n, rec.mean, rec.std)
            _add_raw(writer, tag, step, limits, counts, n=rec.n, total=total, sumsq=sumsq, vmin=rec.min, vmax=rec.max)
    grads = run.table("gradients")
    if grads is not None and not grads.empty:
        totals = grads.groupby(["stat", "layer", "step"], sort=False)["mean"].sum()
        for (stat, layer, step), value in totals.items():
            if np.isfinite(value):
                writer.add_scalar(f"{stat}/{layer}", float(value), int(step))

"""Figures of a ``compare`` run: the shift of each layer against depth, and the most changed tensors.

* ``compare_shift``: for every layer (a tensor name up to its last dot) in depth order, the
  relative change ||B - A|| / ||A||, the Wasserstein-1 distance and the KS distance of its
  tensors, one line per parameter name (``weight``, ``bias``, ...) and pair.
* ``compare_histograms``: the value distributions of the ``top`` most changed tensors (largest
  relative change first), A and B overlaid on one linear grid per panel.

Depth is the order in which the first source of a pair holds its tensors (module order for
PyTorch state dicts, natural order for safetensors): the order of ``histograms.parquet``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..results import RunDir, load_run
from .figures import _plt, require_tables, save_figure
from .histview import bins_for, display_grid, series_densities

__all__ = ["A_COLOR", "B_COLOR", "depth_order", "most_changed", "write_compare_figures"]

A_COLOR = "#1f77b4"
B_COLOR = "#d62728"
_PARAM_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
_PANELS = (("rel_change", "relative change ||B-A|| / ||A||"), ("w1", "Wasserstein-1 (A, B)"), ("ks", "KS distance (A, B)"))


def depth_order(run: RunDir) -> list[str]:
    """Tensor names in depth order: as the sources hold them (``histograms.parquet``), then the rest."""
    hist = run.table("histograms")
    table = run.table("compare")
    seen = list(dict.fromkeys(hist["tensor"].astype(str))) if hist is not None else []
    rest = [t for t in dict.fromkeys(table["tensor"].astype(str)) if t not in set(seen)] if table is not None else []
    return seen + rest


def most_changed(table: pd.DataFrame, top: int) -> pd.DataFrame:
    """The ``top`` compared rows of largest relative change (all pairs), ties by W1."""
    rows = table[table["status"] == "compared"]
    return rows.sort_values(["rel_change", "w1"], ascending=False, na_position="last", kind="stable").head(top)


def _split(name: str) -> tuple[str, str]:
    layer, _, param = name.rpartition(".")
    return (layer, param) if layer else (name, "")


def figure_shift(run: RunDir) -> list[Path]:
    """Relative change, W1 and KS of every layer's tensors against depth."""
    plt = _plt()
    table = run.table("compare")
    rows = table[table["status"].isin(["compared", "shape mismatch"])].copy()
    order = {t: i for i, t in enumerate(depth_order(run))}
    split = [_split(t) for t in rows["tensor"]]
    rows["layer"] = [layer for layer, _ in split]
    rows["param"] = [param for _, param in split]
    rows["depth"] = rows["tensor"].map(order)
    layers = list(rows.groupby("layer")["depth"].min().sort_values(kind="stable").index)
    x_of = {layer: i for i, layer in enumerate(layers)}
    params = list(rows["param"].value_counts().index[: len(_PARAM_COLORS)])
    pairs = list(dict.fromkeys(zip(rows["a"], rows["b"])))
    fig, axes = plt.subplots(len(_PANELS), 1, figsize=(min(max(8.0, 3 + 0.18 * len(layers)), 18), 8.5), sharex=True,
                             squeeze=False)
    styles = ("-", "--", ":", "-.")
    for ax, (col, title) in zip(axes[:, 0], _PANELS):
        for p, pair in enumerate(pairs):
            sel = rows[(rows["a"] == pair[0]) & (rows["b"] == pair[1])]
            for k, param in enumerate(params + ["other"]):
                d = sel[sel["param"] == param] if param != "other" else sel[~sel["param"].isin(params)]
                if d.empty or d[col].isna().all():
                    continue
                d = d.assign(x=d["layer"].map(x_of)).sort_values("x")
                label = (param or "(no dot)") + (f" · {pair[0]} → {pair[1]}" if len(pairs) > 1 else "")
                color = _PARAM_COLORS[k] if param != "other" else "0.6"
                ax.plot(d["x"], d[col], styles[p % len(styles)], marker=".", color=color, linewidth=1, label=label)
        ax.set_ylabel(title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    if not layers:
        axes[0, 0].text(0.5, 0.5, "no tensor present in both sources", transform=axes[0, 0].transAxes, ha="center", color="0.4")
    else:
        step = max(1, len(layers) // 40)
        axes[-1, 0].set_xticks(range(0, len(layers), step))
        axes[-1, 0].set_xticklabels(layers[::step], rotation=70, ha="right", fontsize=6)
        if axes[0, 0].get_lines():
            axes[0, 0].legend(fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel("layer (depth order)", fontsize=8)
    fig.suptitle("Shift of each layer's tensors against depth", fontsize=10)
    # Fixed margins (saved with a tight bounding box): tight_layout gives up on long layer names.
    fig.subplots_adjust(left=0.1, right=0.98, top=0.94, bottom=0.25, hspace=0.12)
    return save_figure(fig, run, "compare_shift")


def figure_histograms(run: RunDir, top: int) -> list[Path]:
    """A and B overlaid for the ``top`` most changed tensors."""
    plt = _plt()
    table, hist = run.table("compare"), run.table("histograms")
    chosen = most_changed(table, top)
    ncols = max(1, min(4, len(chosen)))
    nrows = max(1, math.ceil(len(chosen) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols, 2.5 * nrows + 0.5), squeeze=False)
    groups = dict(tuple(hist.groupby(["source", "tensor"], sort=False))) if len(hist) else {}
    empty = hist.iloc[0:0]
    for ax, row in zip(axes.flat, chosen.itertuples()):
        sides = [groups.get((row.a, row.tensor), empty), groups.get((row.b, row.tensor), empty)]
        n = max(float(s["count"].sum()) for s in sides)
        grid = display_grid(sides, bins=bins_for(n))
        for dens, color, label in zip(series_densities(sides, grid), (A_COLOR, B_COLOR), ("A", "B")):
            ax.plot(np.repeat(grid, 2)[1:-1], np.repeat(dens, 2), color=color, linewidth=0.9, label=label)
        ax.set_title(row.tensor, fontsize=7)
        ax.text(0.98, 0.95, f"rel {row.rel_change:.3g}\nW1 {row.w1:.3g}\ncos {row.cosine:.3g}", transform=ax.transAxes,
                ha="right", va="top", fontsize=6)
        ax.tick_params(labelsize=6)
        ax.set_yticks([])
    for ax in list(axes.flat)[len(chosen):]:
        ax.set_axis_off()
    if chosen.empty:
        axes[0, 0].text(0.5, 0.5, "no tensor compared (none present in both with one shape)", transform=axes[0, 0].transAxes,
                        ha="center", va="center", fontsize=9, color="0.4")
    handles = [plt.Line2D([], [], color=A_COLOR, label="A"), plt.Line2D([], [], color=B_COLOR, label="B")]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(f"The {len(chosen)} most changed tensors: value distributions of A and B", fontsize=10)
    fig.subplots_adjust(left=0.03, right=0.95, top=0.88 if nrows == 1 else 0.92, bottom=0.08, wspace=0.15, hspace=0.35)
    return save_figure(fig, run, "compare_histograms")


def write_compare_figures(run_dir: str | Path | RunDir) -> list[Path]:
    """Draws the figures of a compare run directory; returns the written paths."""
    run = run_dir if isinstance(run_dir, RunDir) else load_run(run_dir)
    require_tables(run, "compare", "histograms")
    top = int((run.manifest.get("config") or {}).get("top") or 8)
    return figure_shift(run) + figure_histograms(run, top)

"""Figures of a ``monitor`` run: distributions over training steps, from its tables.

- ``bands_<table>`` (weights, grads, features): per layer, the median and the q25-q75 and
  q05-q95 bands against the step (the ``weight`` parameter of a layer, else its first one);
- ``std_heatmap``: layers x steps heatmaps of log10 std, one panel per table;
- ``last_histograms_<table>``: the last recorded step's histogram of each layer;
- ``channel_gradients`` (with ``gradients_every``): per layer, the median Emission of its first
  channels against the step, as Figure 4 shows them for one moment.

Only whole-tensor rows are drawn (``channel`` null). A run with more than :data:`MAX_PANELS`
layers shows every k-th layer (the caption says so); the tables hold all of them.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..paper import FIGURE4_CHANNELS
from ..results import RunDir, load_run
from .figures import _grid, _plt, rebin, require_tables, save_figure

__all__ = ["MAX_PANELS", "MONITOR_TABLES", "write_monitor_figures"]

MAX_PANELS = 48
MONITOR_TABLES = ("weights", "grads", "features")
_COLORS = {"weights": "#1f77b4", "grads": "#d62728", "features": "#2ca02c"}


def whole_rows(run: RunDir, table: str) -> pd.DataFrame | None:
    """The whole-tensor rows of a table, one parameter per layer (``weight`` if it has one)."""
    df = run.table(table)
    if df is None or df.empty:
        return None
    df = df[df["channel"].isna()]
    if "param" in df:
        first = df.groupby("layer", sort=False)["param"].agg(lambda p: "weight" if (p == "weight").any() else p.iloc[0])
        df = df[df["param"] == df["layer"].map(first)]
    return df.sort_values("step", kind="stable")


def shown_layers(run: RunDir, df: pd.DataFrame) -> tuple[list[str], str]:
    """The layers drawn (every k-th beyond :data:`MAX_PANELS`) and a note for the caption."""
    layers = run.layer_order(df)
    if len(layers) <= MAX_PANELS:
        return layers, ""
    k = math.ceil(len(layers) / MAX_PANELS)
    return layers[::k], f" (every {k}th of {len(layers)} layers)"


def _grid_axes(plt, count: int, width: float = 2.3, height: float = 1.7):
    cols = min(6, max(1, count))
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows + 0.7), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_axis_off()
    return fig, axes.flat


def _panel_label(ax, layer: str, param: str | None) -> None:
    ax.set_title(layer if not param or param == "weight" else f"{layer}.{param}", fontsize=7)
    ax.tick_params(labelsize=6)
    ax.grid(alpha=0.3)


def figure_bands(run: RunDir, table: str) -> list[Path]:
    """Median and quantile bands of each layer's values against the step."""
    df = whole_rows(run, table)
    if df is None:
        return []
    plt = _plt()
    layers, note = shown_layers(run, df)
    fig, axes = _grid_axes(plt, len(layers))
    color = _COLORS[table]
    for ax, layer in zip(axes, layers):
        d = df[df["layer"] == layer]
        x = d["step"].to_numpy()
        ax.fill_between(x, d["q05"], d["q95"], color=color, alpha=0.18, linewidth=0)
        ax.fill_between(x, d["q25"], d["q75"], color=color, alpha=0.38, linewidth=0)
        ax.plot(x, d["q50"], color=color, linewidth=1)
        _panel_label(ax, layer, d["param"].iloc[0] if "param" in d and len(d) else None)
    fig.suptitle(f"{table}: median, q25-q75 and q05-q95 against the step{note}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, run, "bands", table)


def figure_std_heatmap(run: RunDir) -> list[Path]:
    """Layers x steps heatmaps of log10 std, one panel per table."""
    tables = [(t, df) for t in MONITOR_TABLES if (df := whole_rows(run, t)) is not None]
    if not tables:
        return []
    plt = _plt()
    n_layers = max(len(run.layer_order(df)) for _, df in tables)
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), min(2 + 0.16 * n_layers, 14)), squeeze=False)
    for ax, (table, df) in zip(axes[0], tables):
        layers = run.layer_order(df)
        piv = df.pivot_table(index="layer", columns="step", values="std", aggfunc="first").reindex(layers)
        with np.errstate(divide="ignore", invalid="ignore"):
            data = np.log10(piv.to_numpy(dtype=float))
        data = np.where(np.isfinite(data), data, np.nan)
        steps = piv.columns.to_numpy()
        extent = (steps.min() - 0.5, steps.max() + 0.5, len(layers) - 0.5, -0.5) if len(steps) else None
        im = ax.imshow(data, aspect="auto", interpolation="nearest", cmap="viridis", extent=extent)
        ax.set_yticks(range(len(layers)))
        ax.set_yticklabels(layers, fontsize=max(3, min(7, 300 // max(1, len(layers)))))
        ax.set_xlabel("step", fontsize=8)
        ax.set_title(f"{table}: log10 std", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return save_figure(fig, run, "std_heatmap")


def figure_last_histograms(run: RunDir, table: str) -> list[Path]:
    """The last step's histogram of each layer (stored bins re-binned onto a linear grid)."""
    df = whole_rows(run, table)
    hist = run.table("histograms")
    if df is None or hist is None or hist.empty:
        return []
    last = int(df["step"].max())
    df = df[df["step"] == last]
    hist = hist[(hist["table"] == table) & (hist["step"] == last)]
    plt = _plt()
    layers, note = shown_layers(run, df)
    fig, axes = _grid_axes(plt, len(layers), height=1.4)
    for ax, layer in zip(axes, layers):
        row = df[df["layer"] == layer]
        h = hist[hist["layer"] == layer]
        if "param" in row:
            h = h[h["param"] == row["param"].iloc[0]]
        grid = _grid(row, bins=60)
        dens = rebin(h, grid)
        ax.plot(np.repeat(grid, 2)[1:-1], np.repeat(dens, 2), color=_COLORS[table], linewidth=0.8)
        ax.text(0.98, 0.95, f"σ={float(row['std'].iloc[0]):.3g}", transform=ax.transAxes, ha="right", va="top", fontsize=6)
        ax.set_yticks([])
        _panel_label(ax, layer, row["param"].iloc[0] if "param" in row else None)
    fig.suptitle(f"{table} at step {last}{note}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, run, "last_histograms", table)


def figure_channel_gradients(run: RunDir) -> list[Path]:
    """Median Emission of each layer's first channels against the step (the probe batch)."""
    g = run.table("gradients")
    if g is None or g.empty:
        return []
    g = g[(g["stat"] == "emission") & (g["channel"] < FIGURE4_CHANNELS)]
    plt = _plt()
    layers, note = shown_layers(run, g)
    fig, axes = _grid_axes(plt, len(layers), width=2.8)
    for ax, layer in zip(axes, layers):
        for channel, d in g[g["layer"] == layer].groupby("channel"):
            ax.plot(d["step"], d["q50"], linewidth=0.9, label=str(int(channel)))
        _panel_label(ax, layer, None)
    fig.suptitle(f"Emission (median over the probe batch) of the first {FIGURE4_CHANNELS} channels against the step{note}", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, run, "channel_gradients")


def write_monitor_figures(run_dir: str | Path | RunDir) -> list[Path]:
    """Draws every figure a monitor run directory supports; returns the written paths."""
    run = run_dir if isinstance(run_dir, RunDir) else load_run(run_dir)
    if all(run.table(t) is None for t in MONITOR_TABLES):
        require_tables(run, *MONITOR_TABLES[:1])
    paths: list[Path] = []
    for table in MONITOR_TABLES:
        paths += figure_bands(run, table)
    paths += figure_std_heatmap(run)
    for table in MONITOR_TABLES:
        paths += figure_last_histograms(run, table)
    return paths + figure_channel_gradients(run)

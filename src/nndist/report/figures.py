"""The paper's figures, redrawn from a run directory's tables (PNG and SVG).

- Figure 1: training loss per init (mean over seeds with a min-max band).
- Figure 2: weight and bias distributions before vs after training, per layer and init.
- Figure 3: feature distributions per layer and input type, before vs after training.
- Evolution (with ``--every-epoch``): std and Gaussianity of weights and features per epoch.

Histograms are stored on the summaries' fixed log-spaced bucket edges (exact, mergeable); for
display they are re-binned onto a common linear grid per panel so before and after share axes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import NndistError
from ..io import atomic_path
from ..paper import INPUT_TYPES
from ..results import RunDir, layout, load_run

BEFORE_COLOR = "#1f77b4"
AFTER_COLOR = "#d62728"
INPUT_COLORS = {"train": "#1f77b4", "valid": "#2ca02c", "random": "#7f7f7f"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, run: RunDir, name: str, layer: str | None = None) -> list[Path]:
    """Saves ``fig`` as figure ``name`` (of ``layer``) in the formats of :data:`~nndist.results.layout.FIGURE_FORMATS`."""
    paths = []
    for ext in layout.FIGURE_FORMATS[name]:
        path = run.file(layout.figure_file(name, layer, ext))
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=110, bbox_inches="tight")
        paths.append(path)
    _plt().close(fig)
    return paths


def rebin(hist: pd.DataFrame, grid: np.ndarray) -> np.ndarray:
    """Density of a stored histogram on a linear ``grid`` (edges); bucket mass goes to its centre."""
    if hist.empty:
        return np.zeros(len(grid) - 1)
    centre = 0.5 * (hist["left"].to_numpy() + hist["right"].to_numpy())
    counts = hist["count"].to_numpy(dtype=np.float64)
    idx = np.clip(np.searchsorted(grid, centre, side="right") - 1, 0, len(grid) - 2)
    mass = np.bincount(idx, weights=counts, minlength=len(grid) - 1)
    total = counts.sum()
    width = np.diff(grid)
    return mass / (total * width) if total > 0 else mass


def _grid(rows: pd.DataFrame, bins: int = 80) -> np.ndarray:
    lows = rows["q01"].to_numpy(dtype=np.float64)
    highs = rows["q99"].to_numpy(dtype=np.float64)
    lows, highs = lows[np.isfinite(lows)], highs[np.isfinite(highs)]
    # A diverged run's summaries can be all non-finite: fall back to a unit range.
    lo, hi = (lows.min(), highs.max()) if len(lows) and len(highs) else (-1.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.15 * (hi - lo)
    return np.linspace(lo - pad, hi + pad, bins + 1)


def _panel(ax, hist: pd.DataFrame, stats: pd.DataFrame, key: dict, colors: dict, label_fmt: str) -> None:
    """One panel: densities of several (stage or input) series on a shared linear grid."""
    sel = stats
    for col, value in key.items():
        sel = sel[sel[col] == value]
    if sel.empty:
        ax.set_axis_off()
        return
    # Fewer bins for small tensors (a 16-value bias), up to 80 for large ones.
    n = float(sel["n"].max()) if "n" in sel else 1e4
    grid = _grid(sel, bins=int(np.clip(2 * np.sqrt(max(n, 1.0)), 8, 80)))
    texts = []
    for series, color in colors.items():
        col, value = series
        srow = sel[sel[col] == value]
        if srow.empty:
            continue
        h = hist
        for c, v in key.items():
            h = h[h[c] == v]
        h = h[h[col] == value]
        dens = rebin(h, grid)
        # Plain step lines: far cheaper to draw than filled patches across ~80 panels.
        ax.plot(np.repeat(grid, 2)[1:-1], np.repeat(dens, 2), color=color, linewidth=0.8, label=label_fmt.format(value))
        texts.append((color, f"σ={float(srow['std'].iloc[0]):.3g}"))
    for i, (color, text) in enumerate(texts):
        ax.text(0.98, 0.95 - 0.11 * i, text, transform=ax.transAxes, ha="right", va="top", fontsize=6, color=color)
    ax.tick_params(labelsize=6)
    ax.set_yticks([])


def figure_loss(run: RunDir) -> list[Path]:
    """Figure 1: training loss per init (per-epoch mean, with per-step curve smoothed)."""
    plt = _plt()
    loss = run.table("loss")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if not loss.empty:
        steps_per_epoch = loss.groupby(["init", "seed", "epoch"]).size().max()
        for init, g in loss.groupby("init", sort=False):
            curves = []
            for _, gs in g.groupby("seed"):
                s = gs.sort_values("step")["loss"].to_numpy()
                window = max(1, int(steps_per_epoch) // 10)
                smooth = pd.Series(s).rolling(window, min_periods=1).mean().to_numpy()
                curves.append(smooth)
            n = min(len(c) for c in curves)
            stack = np.vstack([c[:n] for c in curves])
            x = np.arange(n) / steps_per_epoch
            # A diverged run's curve ends in NaN/inf; plot the finite part only.
            stack = np.where(np.isfinite(stack), stack, np.nan)
            finite = np.isfinite(stack).any(axis=0)
            if not finite.any():
                continue
            x, stack = x[finite], stack[:, finite]
            mean = np.nanmean(stack, axis=0)
            (line,) = ax.plot(x, mean, label=init, linewidth=1.2)
            if stack.shape[0] > 1:
                ax.fill_between(x, np.nanmin(stack, 0), np.nanmax(stack, 0), color=line.get_color(), alpha=0.2, linewidth=0)
        ax.axhline(math.log(10), color="k", linestyle=":", linewidth=0.8, label="ln 10")
    # Log scale: a diverging init (ones reaches ~1e7) would otherwise flatten every other curve.
    if ax.get_lines():
        ax.set_yscale("log")
        ax.legend(fontsize=7, ncol=2)
    else:  # a run stopped before its first step: say so on the figure
        ax.text(0.5, 0.5, "no training loss recorded yet\n(the run stopped before its first step)",
                transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.4")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss (cross-entropy, log scale)")
    ax.set_title("Figure 1: training loss per initialisation")
    ax.grid(alpha=0.3)
    return save_figure(fig, run, "fig1_loss")


def _before_after_grid(run: RunDir, table: str, col_fields: tuple[str, str], cols: list[tuple[str, str]],
                       col_title: str, title: str, name: str, panel_width: float) -> list[Path]:
    """A grid of before-vs-after densities: one row per init (first seed), one column per ``cols``."""
    plt = _plt()
    stats = run.table(table)
    hist = run.table("histograms")
    seed0 = stats["seed"].min()
    stats = stats[stats["seed"] == seed0]
    hist = hist[(hist["table"] == table) & (hist["seed"] == seed0)]
    inits = list(dict.fromkeys(stats["init"]))
    fig, axes = plt.subplots(len(inits), len(cols), figsize=(panel_width * len(cols), 1.32 * len(inits) + 0.6), squeeze=False)
    colors = {("stage", layout.BEFORE): BEFORE_COLOR, ("stage", layout.AFTER): AFTER_COLOR}
    for i, init in enumerate(inits):
        for j, col in enumerate(cols):
            ax = axes[i, j]
            _panel(ax, hist, stats, {"init": init, col_fields[0]: col[0], col_fields[1]: col[1]}, colors, "{}")
            if i == 0:
                ax.set_title(col_title.format(*col), fontsize=7)
            if j == 0:
                ax.set_ylabel(init, fontsize=7)
    handles = [plt.Line2D([], [], color=BEFORE_COLOR, label="before"), plt.Line2D([], [], color=AFTER_COLOR, label="after")]
    fig.legend(handles=handles, loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.92, bottom=0.04, wspace=0.25, hspace=0.45)
    return save_figure(fig, run, name)


def figure_weights(run: RunDir) -> list[Path]:
    """Figure 2: weight and bias distributions before vs after training (std annotated)."""
    stats = run.table("weights")
    cols = list(dict.fromkeys(zip(stats["layer"], stats["param"])))
    return _before_after_grid(run, "weights", ("layer", "param"), cols, "{}.{}",
                              "Figure 2: weight and bias distributions before vs after training", "fig2_weights", 1.9)


def figure_features(run: RunDir) -> list[Path]:
    """Figure 3: feature distributions per layer and input type, before vs after training."""
    stats = run.table("features")
    inputs = [i for i in INPUT_TYPES if i in set(stats["input"])]
    cols = [(layer, inp) for layer in dict.fromkeys(stats["layer"]) for inp in inputs]
    return _before_after_grid(run, "features", ("layer", "input"), cols, "{} / {}",
                              "Figure 3: feature distributions (layer outputs) before vs after training", "fig3_features", 1.55)


def figure_evolution(run: RunDir) -> list[Path]:
    """Std and KS-to-normal of each layer's weights and train features per epoch, per init."""
    plt = _plt()
    w, f = run.table("weights"), run.table("features")
    intermediate = ~w["stage"].isin([layout.BEFORE, layout.AFTER])
    if not intermediate.any():
        return []
    last = run.last_epoch()
    w = w[w["param"] == "weight"].assign(epoch=lambda d: d["stage"].map(lambda s: layout.stage_epoch(s, last)))
    f = f[f["input"] == "train"].assign(epoch=lambda d: d["stage"].map(lambda s: layout.stage_epoch(s, last)))
    layers = list(dict.fromkeys(w["layer"]))
    rows = [("weight std", w, "std"), ("weight KS to normal", w, "ks_normal"), ("feature std (train)", f, "std"), ("feature KS to normal", f, "ks_normal")]
    fig, axes = plt.subplots(len(rows), len(layers), figsize=(2.8 * len(layers), 2.1 * len(rows)), squeeze=False)
    for i, (title, df, col) in enumerate(rows):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            d = df[df["layer"] == layer]
            for init, g in d.groupby("init", sort=False):
                g = g.groupby("epoch")[col].mean()
                ax.plot(g.index, g.values, marker=".", linewidth=1, label=init)
            ax.set_title(f"{layer}: {title}", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=6)
    for ax in axes[-1]:
        ax.set_xlabel("epoch", fontsize=8)
    fig.suptitle("Evolution of weight and feature distributions over training", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, run, "evolution")


def write_figures(run_dir: str | Path | RunDir) -> list[Path]:
    """Draws every figure a reproduce run directory supports; returns the written paths."""
    run = run_dir if isinstance(run_dir, RunDir) else load_run(run_dir)
    require_tables(run, "loss", "weights", "features", "histograms")
    return figure_loss(run) + figure_weights(run) + figure_features(run) + figure_evolution(run)


def require_tables(run: RunDir, *names: str) -> None:
    """Raises a clear error if a table the figures are drawn from is missing."""
    for name in names:
        if run.table(name) is None:
            raise NndistError(f"cannot draw figures for {run.path}: {run.file(layout.table_file(name))} is missing (is the run finished?)")

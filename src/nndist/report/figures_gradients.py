"""Figures of a ``gradients`` run: an overview across layers, the paper's Figure 4, heatmaps.

- ``overview``: per layer (in depth order), the median over channels of each channel's median
  Emission and Absorption, with the channels' interquartile range as a band. Always drawn.
- ``fig4_<layer>``: box plots of Emission and Absorption of the first channels of a layer, for the
  layers the run's ``layer_figures`` option names. Where the per-sample arrays exist, the boxes
  are exact quantiles, read column by column from the memory-mapped arrays (memory bounded);
  otherwise they come from the quantile sketch and the figure says its resolution. Drawn the
  paper's way (Absorption beside Emission; box q25-q75, whiskers q05-q95) or, with
  ``figure="author"``, the published code's (Absorption on the first row, Emission on the second,
  Tukey whiskers at 1.5 IQR, no fliers).
- ``heatmap_<layer>``: the mean ||LG^{c1->c2}|| matrix, for those layers that kept one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..paper import FIGURE4_CHANNELS
from ..results import RunDir, layout, load_run
from .figures import _plt, require_tables, save_figure

STAT_COLORS = {"absorption": "#1f77b4", "emission": "#d62728"}


def exact_boxes(run: RunDir, layer: str, stat: str, channels: int, tukey: bool) -> list[dict] | None:
    """Box statistics from the per-sample array, one column at a time (None without the array)."""
    arr = run.per_sample(layer, stat)
    if arr is None:
        return None
    boxes = []
    for c in range(min(channels, arr.shape[1])):
        x = np.asarray(arr[:, c], dtype=np.float64)
        x = x[np.isfinite(x)]
        if x.size == 0:
            continue
        q05, q25, q50, q75, q95 = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95])
        if tukey:  # seaborn's whiskers: the most extreme values within 1.5 IQR of the box
            lo, hi = q25 - 1.5 * (q75 - q25), q75 + 1.5 * (q75 - q25)
            q05, q95 = float(x[x >= lo].min()), float(x[x <= hi].max())
        boxes.append({"label": str(c), "med": q50, "q1": q25, "q3": q75, "whislo": q05, "whishi": q95, "fliers": []})
    return boxes


def _sketch_boxes(stats: pd.DataFrame, layer: str, stat: str, channels: int) -> list[dict]:
    d = stats[(stats["layer"] == layer) & (stats["stat"] == stat)].sort_values("channel").head(channels)
    return [{"label": str(int(r.channel)), "med": r.q50, "q1": r.q25, "q3": r.q75, "whislo": r.q05, "whishi": r.q95, "fliers": []}
            for r in d.itertuples()]


def figure4(run: RunDir, stats: pd.DataFrame, layer: str, *, channels: int = FIGURE4_CHANNELS, style: str = "paper") -> list[Path]:
    """Box plots of Emission and Absorption for the first ``channels`` channels of ``layer``."""
    plt = _plt()
    author = style == "author"
    fig, axes = plt.subplots(2, 1, figsize=(7, 5.2)) if author else plt.subplots(1, 2, figsize=(10, 3.2))
    notes = []
    for ax, stat in zip(np.ravel(axes), ("absorption", "emission")):
        boxes = exact_boxes(run, layer, stat, channels, tukey=author)
        if boxes is None:
            boxes = _sketch_boxes(stats, layer, stat, channels)
            notes.append("boxes from the quantile sketch (within 1/129 relative); keep per-sample arrays for exact ones")
        if boxes:
            ax.bxp(boxes, showfliers=False, patch_artist=True, boxprops={"facecolor": STAT_COLORS[stat], "alpha": 0.45},
                   medianprops={"color": "k"})
        n = stats.loc[(stats["layer"] == layer) & (stats["stat"] == stat), "n"]
        ax.set_title(f"{layer}: {'Ab' if author else stat.capitalize()} ({stat}, n={int(n.max()) if len(n) else 0})", fontsize=9)
        ax.set_xlabel("channel", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    if notes:
        fig.text(0.01, 0.01, notes[0], fontsize=6, color="0.4")
    way = "the published code's way: Tukey whiskers, no fliers" if author else "box q25-q75, whiskers q05-q95"
    fig.suptitle(f"Figure 4: Absorption and Emission of the first {channels} channels ({way})", fontsize=9)
    if author:
        fig.subplots_adjust(left=0.09, right=0.98, top=0.9, bottom=0.12, hspace=0.45)
    else:
        fig.subplots_adjust(left=0.06, right=0.99, top=0.82, bottom=0.2, wspace=0.15)
    return save_figure(fig, run, "fig4", layer)


def heatmap(run: RunDir, matrix: np.ndarray, layer: str) -> list[Path]:
    """Heatmap of the mean ||LG^{c1->c2}|| (C_out x C_in) of ``layer``."""
    plt = _plt()
    h, w = matrix.shape
    fig, ax = plt.subplots(figsize=(min(2 + 0.09 * w, 12), min(1.5 + 0.09 * h, 12)))
    im = ax.imshow(matrix, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("input channel c2 (absorbing)", fontsize=8)
    ax.set_ylabel("output channel c1 (emitting)", fontsize=8)
    ax.set_title(f"{layer}: mean ||LG c1→c2||", fontsize=9)
    ax.tick_params(labelsize=7)
    fig.colorbar(im, ax=ax)
    return save_figure(fig, run, "heatmap", layer)


def overview(run: RunDir, stats: pd.DataFrame, layers: list[str]) -> list[Path]:
    """Per layer, the median and interquartile range over channels of the channels' median Em and Ab."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(min(4 + 0.12 * len(layers), 16), 3.6))
    x = np.arange(len(layers))
    for stat, color in STAT_COLORS.items():
        med = stats[stats["stat"] == stat].groupby("layer")["q50"]
        q = np.array([med.get_group(layer).quantile([0.25, 0.5, 0.75]).to_numpy() if layer in med.groups else [np.nan] * 3
                      for layer in layers])
        ax.plot(x, q[:, 1], color=color, marker=".", linewidth=1, label=f"{stat}: median over channels")
        ax.fill_between(x, q[:, 0], q[:, 2], color=color, alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    step = max(1, len(layers) // 30)
    ax.set_xticks(x[::step], [layers[i] for i in x[::step]], rotation=70, ha="right", fontsize=6)
    ax.set_ylabel("channel median (log scale)", fontsize=8)
    ax.set_title("Emission and Absorption across layers (band: channels' interquartile range)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, run, "overview")


def figure_layers(run: RunDir, layers: list[str]) -> list[str]:
    """The layers the run's ``layer_figures`` option names (``none``, ``all`` or a list)."""
    option = (run.manifest.get("config") or {}).get("layer_figures", "all")
    if option == "all":
        return layers
    if option in ("none", None):
        return []
    wanted = set([option] if isinstance(option, str) else option)
    return [layer for layer in layers if layer in wanted]


def write_gradient_figures(run_dir: str | Path | RunDir) -> list[Path]:
    """Draws the overview, and Figure 4 and the heatmap of the layers the run asked for."""
    run = run_dir if isinstance(run_dir, RunDir) else load_run(run_dir)
    require_tables(run, "gradients")
    stats = run.table("gradients")
    cfg = run.manifest.get("config") or {}
    layers = run.layer_order(stats)
    paths = overview(run, stats, layers)
    norms_file = run.file(layout.CHANNEL_NORMS)
    norms = np.load(norms_file) if norms_file.is_file() else None
    try:
        for layer in figure_layers(run, layers):
            paths += figure4(run, stats, layer, channels=int(cfg.get("channels", FIGURE4_CHANNELS)), style=cfg.get("figure", "paper"))
            if norms is not None and layer in norms.files:
                paths += heatmap(run, norms[layer], layer)
    finally:
        if norms is not None:
            norms.close()
    return paths

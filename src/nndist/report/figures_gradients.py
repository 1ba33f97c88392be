"""Figures of a ``gradients`` run: the paper's Figure 4 and channel-to-channel heatmaps.

Figure 4 draws, for the first 15 channels of a layer, box plots of Emission and Absorption
built from the streamed summaries' quantiles (box: q25-q75, line: median, whiskers: q05-q95),
so it needs no per-sample values in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..paper import FIGURE4_CHANNELS
from ..results import RunDir, layout, load_run
from .figures import _plt, require_tables, save_figure


def figure4(run: RunDir, stats: pd.DataFrame, layer: str) -> list[Path]:
    """Box plots of Em and Ab for the first 15 channels of ``layer``."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), squeeze=False)
    for ax, stat, color in zip(axes[0], ("absorption", "emission"), ("#1f77b4", "#d62728")):
        d = stats[(stats["layer"] == layer) & (stats["stat"] == stat)].sort_values("channel").head(FIGURE4_CHANNELS)
        boxes = [
            {"label": str(int(r.channel)), "med": r.q50, "q1": r.q25, "q3": r.q75, "whislo": r.q05, "whishi": r.q95, "fliers": []}
            for r in d.itertuples()
        ]
        if boxes:
            ax.bxp(boxes, showfliers=False, patch_artist=True, boxprops={"facecolor": color, "alpha": 0.45}, medianprops={"color": "k"})
        ax.set_title(f"{layer}: {stat.capitalize()} (n={int(d['n'].max()) if len(d) else 0})", fontsize=9)
        ax.set_xlabel("channel", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Figure 4: distribution of Absorption and Emission of the first 15 channels", fontsize=10)
    fig.subplots_adjust(left=0.06, right=0.99, top=0.82, bottom=0.15, wspace=0.15)
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


def write_gradient_figures(run_dir: str | Path | RunDir) -> list[Path]:
    """Draws Figure 4 and the heatmap of every layer of a gradients run directory."""
    run = run_dir if isinstance(run_dir, RunDir) else load_run(run_dir)
    require_tables(run, "gradients")
    stats = run.table("gradients")
    paths: list[Path] = []
    norms_file = run.file(layout.CHANNEL_NORMS)
    norms = np.load(norms_file) if norms_file.is_file() else None
    try:
        for layer in dict.fromkeys(stats["layer"]):
            paths += figure4(run, stats, layer)
            if norms is not None and layer in norms.files:
                paths += heatmap(run, norms[layer], layer)
    finally:
        if norms is not None:
            norms.close()
    return paths

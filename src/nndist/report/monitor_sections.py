"""The report sections of a ``monitor`` run: its figures, its layers and the last recorded step."""

from __future__ import annotations

from typing import Any

import pandas as pd

from ..results import RunDir, layout
from .html import _figure, _table
from .monitor_figures import MONITOR_TABLES, whole_rows

__all__ = ["monitor_sections"]

_CAPTIONS = {
    "weights": "Weights", "grads": "Gradients (.grad at the logging step)", "features": "Features (layer outputs)",
}
_SHOWN = ["step", "layer", "param", "n", "mean", "std", "min", "max", "q05", "q50", "q95", "kurtosis", "ks_normal", "nonfinite"]


def monitor_sections(run: RunDir, embed: bool) -> dict[str, Any]:
    """``{"figures", "runs", "tables", "layers"}`` for the report template."""
    figures = []
    for table in MONITOR_TABLES:
        figures.append(_figure(run, layout.figure_file("bands", table),
                               f"{_CAPTIONS[table]}: median, q25-q75 and q05-q95 per layer against the step", embed))
    figures.append(_figure(run, layout.figure_file("std_heatmap"), "log10 std per layer (rows) and step (columns)", embed))
    for table in MONITOR_TABLES:
        figures.append(_figure(run, layout.figure_file("last_histograms", table),
                               f"{_CAPTIONS[table]}: histograms at the last recorded step", embed))
    if run.table("gradients") is not None:
        figures.append(_figure(run, layout.figure_file("channel_gradients"),
                               "Emission of the first channels on the probe batch against the step", embed))
    figures = [f for f in figures if f["src"] is not None] or figures[:1]

    info = run.manifest.get("layers") or {}
    last: dict[str, pd.DataFrame] = {t: df[df["step"] == df["step"].max()] for t in MONITOR_TABLES
                                     if (df := whole_rows(run, t)) is not None}
    recs = []
    for layer, entry in info.items():
        rec: dict[str, Any] = {"layer": layer, "type": entry.get("type"),
                               "params": ", ".join(f"{p} {tuple(s)}" for p, s in (entry.get("params") or {}).items()),
                               "channel dim": entry.get("channel_dim")}
        for table, df in last.items():
            row = df[df["layer"] == layer]
            rec[f"{table} std"] = float(row["std"].iloc[0]) if len(row) else float("nan")
        recs.append(rec)
    tables: list[tuple[str, Any]] = [("Layers (std at the last recorded step)", _table(pd.DataFrame(recs) if recs else None,
                                                                                   source="manifest.json / tables"))]
    for table in MONITOR_TABLES:
        df = run.table(table)
        if df is not None and not df.empty:
            df = df[(df["step"] == df["step"].max()) & df["channel"].isna()]
            tables.append((f"{_CAPTIONS[table]} at step {int(df['step'].max())}",
                           _table(df[[c for c in _SHOWN if c in df.columns]], source=layout.table_file(table))))
        else:
            tables.append((_CAPTIONS[table], None))
    g = run.table("gradients")
    if g is not None and not g.empty:
        g = g[g["step"] == g["step"].max()]
        tables.append((f"Emission and Absorption per channel at step {int(g['step'].max())}",
                       _table(g, source=layout.table_file("gradients"))))
    return {"figures": figures, "runs": None, "tables": tables, "layers": list(info)}

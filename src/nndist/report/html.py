"""One self-contained HTML page per run directory: claims, figures, the explorer, tables, configuration.

The page (``RUN_DIR/report.html``) needs no network: styling and script (table sorting, a
self-check, the explorer with its plotting library and data: :mod:`.explorer`) are inline, a
Content-Security-Policy forbids every request but images beside the page, and figures are
referenced by relative paths (``figures/...``) or, with ``embed_figures=True``, embedded as base64. Everything taken from the
run (layer names, paths, config values) is HTML-escaped by Jinja2's autoescape. Whatever the run
has not produced (a figure, a table) is shown as "not produced".
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence
from urllib.parse import quote

import numpy as np
import pandas as pd

from .._version import __version__
from ..io import write_text
from ..paper import CONSTANT_INITS
from ..results import RunDir, layout, load_run
from .claims import CLAIM_KINDS, evaluate_claims
from .explorer import embedded_json, explorer_data, explorer_scripts
from .figures_gradients import figure_layers

__all__ = ["MAX_TABLE_ROWS", "render_report", "write_report"]

MAX_TABLE_ROWS = 300  # longer tables are truncated, with a note naming the full file


def _fmt(x: Any) -> str:
    if x is None:
        return ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isnan(x):
            return "–"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.3e}"
        return f"{x:.4g}"
    return str(x)


def _sort_key(x: Any) -> str:
    """Value for the inline sorter: numbers sort numerically, the rest as text."""
    if isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, (bool, np.bool_)):
        x = float(x)
        return "" if math.isnan(x) else repr(x if math.isfinite(x) else (1e308 if x > 0 else -1e308))
    return ""


def _table(df: pd.DataFrame | None, *, source: str, limit: int = MAX_TABLE_ROWS,
           row_class: Sequence[str] | None = None) -> dict | None:
    """A table for the template: header, formatted cells (with sort keys), truncation note."""
    if df is None:
        return None
    n = len(df)
    shown = df.head(limit)
    rows = []
    for i, rec in enumerate(shown.itertuples(index=False)):
        rows.append({"cls": row_class[i] if row_class is not None else "",
                     "cells": [{"text": _fmt(v), "key": _sort_key(v)} for v in rec]})
    note = f"Showing the first {limit} of {n} rows; the full table is {source}." if n > limit else ""
    return {"columns": [str(c) for c in df.columns], "rows": rows, "note": note, "source": source, "n": n}


def _flatten(obj: Any, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, list) and len(obj) > 20:
        out.append((prefix, f"[{len(obj)} items: {json.dumps(obj[:5], default=str)[1:-1]}, …]"))
    else:
        out.append((prefix, obj if isinstance(obj, str) else json.dumps(obj, default=str)))
    return out


def _figure(run: RunDir, rel: str, caption: str, embed: bool) -> dict:
    path = run.file(rel)
    fig = {"caption": caption, "name": rel, "src": None}
    if path.is_file():
        if embed:
            fig["src"] = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            fig["src"] = quote(rel)
    return fig


def _reproduce_sections(run: RunDir, embed: bool) -> dict:
    figures = [
        _figure(run, layout.figure_file("fig1_loss"), "Figure 1: training loss per initialisation", embed),
        _figure(run, layout.figure_file("fig2_weights"), "Figure 2: weight distributions before and after training", embed),
        _figure(run, layout.figure_file("fig3_features"), "Figure 3: feature distributions before and after training", embed),
    ]
    if run.file(layout.figure_file("evolution")).is_file():
        figures.append(_figure(run, layout.figure_file("evolution"), "Evolution over epochs", embed))

    status = run.run_status()
    runs_df, classes = None, []
    if status:
        recs = []
        for (init, seed), e in sorted(status.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            recs.append({"init": init, "seed": seed, "status": e.get("status", ""),
                         "diverged at step": e.get("diverged_at_step")})
            classes.append("diverged" if e.get("status") == "diverged" else
                           ("running" if e.get("status") in ("running", "pending") else ""))
        runs_df = pd.DataFrame(recs)

    # Final training loss and accuracy per run.
    acc = run.table("accuracy")
    finals = run.final_losses()
    final_df = None
    if not finals.empty:
        final_df = finals.rename(columns={"final_loss": "final train loss"})[["init", "seed", "final train loss", "epochs"]]
        if acc is not None and not acc.empty:
            a = acc[acc["epoch"] == acc.groupby(["init", "seed"])["epoch"].transform("max")]
            piv = a.pivot_table(index=["init", "seed"], columns="split", values="accuracy").reset_index()
            piv.columns = [c if c in ("init", "seed") else f"final {c} accuracy" for c in piv.columns]
            final_df = final_df.merge(piv, on=["init", "seed"], how="left")
        final_df["status"] = finals["status"].to_numpy()
    final_cls = [("diverged" if s == "diverged" else "") for s in final_df["status"]] if final_df is not None else None

    tables = [
        ("Final training loss and accuracy", _table(final_df, source="loss.parquet / accuracy.parquet",
                                                      row_class=final_cls)),
        ("Weights before and after training", _table(_before_after(run.table("weights"), ["layer", "param"]),
                                                      source="weights.parquet")),
        ("Features before and after training", _table(_before_after(run.table("features"), ["layer", "input"]),
                                                       source="features.parquet")),
    ]
    shifts = run.table("shifts")
    if shifts is not None:
        tables.append(("Distribution shift (before -> after)", _table(shifts, source="shifts.parquet")))
    return {"figures": figures, "runs": _table(runs_df, source="manifest.json", row_class=classes),
            "tables": tables, "layers": None}


def _before_after(df: pd.DataFrame | None, keys: list[str]) -> pd.DataFrame | None:
    if df is None or df.empty:
        return None
    idx = ["init", "seed", *keys]
    cols = [c for c in ("mean", "std", "kurtosis", "ks_normal") if c in df.columns]
    b = df[df["stage"] == "before"][idx + cols]
    a = df[df["stage"] == "after"][idx + cols]
    m = b.merge(a, on=idx, how="outer", suffixes=(" before", " after"))
    if "std before" in m and "std after" in m:
        m["std ratio"] = m["std after"] / m["std before"].where(m["std before"] > 0)
    order = idx + [f"{c} {s}" for c in cols for s in ("before", "after")] + (["std ratio"] if "std ratio" in m else [])
    return m[[c for c in order if c in m.columns]]


def _gradients_sections(run: RunDir, embed: bool) -> dict:
    g = run.table("gradients")
    layers = run.layer_order(g)
    figures = [_figure(run, layout.figure_file("overview"), "Emission and Absorption across layers", embed)]
    for layer in figure_layers(run, layers)[:60]:  # a very deep model: keep the page usable
        figures.append(_figure(run, layout.figure_file("fig4", layer),
                               f"Figure 4: Absorption and Emission per channel, {layer}", embed))
        figures.append(_figure(run, layout.figure_file("heatmap", layer),
                               f"Channel-to-channel mean ||LG|| (c_out x c_in), {layer}", embed))

    info = run.manifest.get("layers") or {}
    recs = []
    for layer in layers or list(info):
        rec: dict[str, Any] = {"layer": layer}
        if isinstance(info.get(layer), dict):
            rec.update({k: info[layer].get(k) for k in ("type", "c_out", "c_in")})
        for stat in ("emission", "absorption"):
            if g is not None:
                sub = g[(g["layer"] == layer) & (g["stat"] == stat)]
                rec[f"sum of channel means ({stat[:2].title()})"] = float(sub["mean"].sum()) if len(sub) else float("nan")
                rec[f"median channel std ({stat[:2].title()})"] = float(sub["std"].median()) if len(sub) else float("nan")
            rec[f"per-sample {stat}"] = run.file(layout.per_sample_file(layer, stat)).is_file()
        recs.append(rec)
    layer_df = pd.DataFrame(recs) if recs else None
    unsupported = run.manifest.get("unsupported") or {}
    uns_df = pd.DataFrame([{"module": k, "type": v if not isinstance(v, dict) else json.dumps(v)}
                           for k, v in unsupported.items()]) if unsupported else None
    tables = [
        ("Layers", _table(layer_df, source="gradients.parquet / manifest.json")),
        ("Channel statistics (Emission, Absorption)", _table(g, source="gradients.parquet")),
    ]
    if uns_df is not None:
        tables.append(("Modules not analysed (no gradient handler)", _table(uns_df, source="manifest.json")))
    return {"figures": figures, "runs": None, "tables": tables, "layers": layers}


def _monitor_sections(run: RunDir, embed: bool) -> dict:
    from .monitor_sections import monitor_sections  # it builds on this module's helpers

    return monitor_sections(run, embed)
def _compare_sections(run: RunDir, embed: bool) -> dict:
    figures = [
        _figure(run, layout.figure_file("compare_shift"), "Shift of each layer against depth: relative change, W1, KS", embed),
        _figure(run, layout.figure_file("compare_histograms"), "Value distributions of the most changed tensors, A and B overlaid", embed),
    ]
    m = run.manifest
    sources = pd.DataFrame([{k: s.get(k) for k in ("label", "kind", "path", "model", "init", "tensors", "summarised",
                                                    "values", "prefix_stripped")} for s in m.get("sources") or []])
    sources = sources.dropna(axis=1, how="all") if not sources.empty else None
    table = run.table("compare")
    others = None if table is None else table[table["status"] != "compared"]
    classes = None if table is None else ["" if s == "compared" else "running" for s in table["status"].head(MAX_TABLE_ROWS)]
    tables = [
        ("Sources", _table(sources, source="manifest.json")),
        ("Tensors, most changed first", _table(table, source="compare.parquet", row_class=classes)),
        ("Tensors not compared value by value (one side only, shape mismatch, not summarised)",
         _table(others if others is not None and len(others) else None, source="compare.parquet")),
    ]
    return {"figures": figures, "runs": None, "tables": tables, "layers": None}


#: The sections of each kind of run's report: ``fn(run, embed_figures) -> {"figures", "runs", "tables", "layers"}``.
SECTIONS: dict[str, Callable[[RunDir, bool], dict]] = {
    layout.REPRODUCE: _reproduce_sections,
    layout.GRADIENTS: _gradients_sections,
    layout.MONITOR: _monitor_sections,
    layout.COMPARE: _compare_sections,
}


def render_report(run_dir: str | os.PathLike[str] | RunDir, *, embed_figures: bool = False,
                  claims: pd.DataFrame | None = None) -> str:
    """The report page of a run directory, as an HTML string.

    Args:
        run_dir: A run directory (or an opened :class:`~nndist.claims.RunDir`).
        embed_figures: Embed the PNG figures as base64 instead of referencing ``figures/...``.
        claims: The claims table (default: :func:`~nndist.claims.evaluate_claims` of the run).

    Raises:
        NndistError: If the run directory, its manifest or a table is missing or invalid.
    """
    import jinja2

    run = run_dir if isinstance(run_dir, RunDir) else load_run(run_dir)
    claims = evaluate_claims(run) if claims is None else claims
    sections = SECTIONS[run.kind](run, embed_figures)
    explorer = explorer_data(run)
    summary = claims[claims["level"] == "summary"]
    details = claims[claims["level"] == "detail"]
    counts = summary["verdict"].value_counts().to_dict()
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    m = run.manifest
    meta = {k: _fmt(m.get(k)) for k in ("started", "finished") if m.get(k)}
    if run.kind == layout.GRADIENTS:
        meta["samples"] = _fmt(m.get("n_samples"))
        meta["model"] = _fmt(m.get("model")) + (" (random weights)" if m.get("random_weights") else "")
    if run.kind == layout.COMPARE:
        meta.update({k: str(v) for k, v in (m.get("counts") or {}).items() if v})
    config = _flatten(m.get("config") or {})
    extra = _flatten({k: m[k] for k in ("versions", "seeds", "pairs") if k in m})
    if isinstance(m.get("subsets"), dict):
        extra += [(f"subsets.{k}", f"{len(v)} indices") for k, v in m["subsets"].items() if isinstance(v, list)]
    if isinstance(m.get("sample_order"), list):
        extra.append(("sample_order", f"{len(m['sample_order'])} dataset indices"))
    return env.get_template("report.html").render(
        title=f"nndist {run.kind} run: {run.path.resolve().name}",
        run_path=str(run.path.resolve()),
        kind=run.kind,
        meta=meta,
        config=config,
        extra=extra,
        sections=sections,
        claims=[{"row": r, "details": details[details["id"] == r["id"]].to_dict("records")}
                for r in summary.to_dict("records")],
        counts=counts,
        claims_apply=run.kind in CLAIM_KINDS,
        explorer=explorer,
        explorer_json=embedded_json(explorer),
        scripts=explorer_scripts(),
        constant_inits=CONSTANT_INITS,
        notices=[str(n) for n in m.get("notices") or []],
        generated=_dt.datetime.now().isoformat(timespec="seconds"),
        version=__version__,
    )


def write_report(run_dir: str | os.PathLike[str], *, embed_figures: bool = False,
                 claims: pd.DataFrame | None = None) -> Path:
    """Writes ``RUN_DIR/report.html`` atomically and returns its path.

    Args:
        run_dir: A ``reproduce`` or ``gradients`` run directory.
        embed_figures: Embed the figures as base64 (a single movable file) instead of linking them.
        claims: The claims table, if already evaluated.

    Raises:
        NndistError: If the run directory, its manifest or a table is missing or invalid.
    """
    run = load_run(run_dir)
    html = render_report(run, embed_figures=embed_figures, claims=claims)
    path = run.file(layout.REPORT)
    write_text(path, html)
    return path

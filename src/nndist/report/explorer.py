"""The report's explorer: every distribution of a run, one at a time, in the browser.

The static Figures 2 and 3 are grids of dozens of panels; the explorer shows one distribution
large, picked with a row of selects (run, table, layer, tensor or input, stage or step, pair),
with its overlaid series (before and after, A and B, the first and a later step), linear or log
y, and the summary numbers beside it. Gradients runs add per-channel box plots of Emission and
Absorption (from the streamed quantiles of ``gradients.parquet``), sortable by channel, median,
spread or mean.

The page stays self-contained: Plotly's cartesian bundle (``assets/plotly-cartesian.min.js``,
MIT, see ``assets/README.md``) and ``assets/explorer.js`` are inlined into ``report.html``, and
the data is embedded as JSON. Each kind of run has an adapter in :data:`EXPLORERS` that reads
its tables through :class:`~nndist.results.RunDir` and returns::

    {"title", "selectors": [{"key", "label"}], "items": [item], "notes": [str], "boxes": {...}}
    item = {"keys": {selector key: value}, "grid": [lo, hi, bins],
            "series": [{"name", "density": [bins floats]}],
            "stats": {"columns": [...], "rows": [[series name, value, ...]]},
            "numbers": [[name, value], ...]}

Sizes are bounded: every histogram is re-binned onto at most :data:`MAX_BINS` linear bins,
numbers keep :data:`DIGITS` significant digits, monitor steps are thinned to :data:`MAX_STEPS`
per tensor, a compare run shows its :data:`MAX_ITEMS` most changed tensors, and the items stop
at :data:`MAX_NUMBERS` numbers in all (a note says what was left out).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..paper import FIGURE4_CHANNELS
from ..results import RunDir, layout
from .compare_figures import depth_order
from .histview import TAIL, bins_for, display_grid, padded_grid, series_densities

__all__ = ["DIGITS", "EXPLORERS", "MAX_BINS", "MAX_ITEMS", "MAX_NUMBERS", "MAX_STEPS", "explorer_data",
           "explorer_scripts"]

MAX_BINS = 60
DIGITS = 4
MAX_STEPS = 12
MAX_ITEMS = 600
MAX_NUMBERS = 1_500_000
#: Per-sample rows read for a gradients layer's pooled histogram (evenly spaced).
MAX_SAMPLE_ROWS = 20_000
STAT_COLUMNS = ("n", "mean", "std", "min", "max", "skew", "kurtosis", "q05", "q50", "q95", "ks_normal")
_COMPARE_STATS = ("n", "mean", "std", "kurtosis")
ASSETS = Path(__file__).parent / "assets"
PLOTLY_FILE = "plotly-cartesian.min.js"


def _num(x: Any) -> float | int | str | None:
    """A JSON-safe number with :data:`DIGITS` significant digits (inf as a string, NaN as null)."""
    if x is None or isinstance(x, str):
        return x
    if isinstance(x, (bool, np.bool_)):
        return int(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return None
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return float(f"{v:.{DIGITS}g}")


def _nums(values: Iterable[Any]) -> list[Any]:
    return [_num(v) for v in values]


def _item(keys: dict[str, Any], names: Sequence[str], densities: Sequence[np.ndarray], grid: np.ndarray,
          stats: Sequence[Sequence[Any]], numbers: Sequence[tuple[str, Any]] = (),
          columns: Sequence[str] = STAT_COLUMNS) -> dict[str, Any]:
    """One explorer item: the series' densities on ``grid``, their statistics (one row per series,
    in ``columns``) and the item's own numbers."""
    return {
        "keys": {k: str(v) for k, v in keys.items()},
        "grid": [float(grid[0]), float(grid[-1]), len(grid) - 1],  # exact: the bins are these edges
        "series": [{"name": name, "density": _nums(d)} for name, d in zip(names, densities)],
        "stats": {"columns": list(columns), "rows": [[name, *_nums(row)] for name, row in zip(names, stats)]},
        "numbers": [[k, _num(v)] for k, v in numbers],
    }


def _hist_item(keys: dict[str, Any], names: Sequence[str], hists: Sequence[pd.DataFrame], n: float,
               stats: Sequence[Sequence[Any]], numbers: Sequence[tuple[str, Any]] = (),
               columns: Sequence[str] = STAT_COLUMNS) -> dict[str, Any]:
    """An item from stored histograms (``left``, ``right``, ``count``), on one grid for all series."""
    grid = display_grid(hists, bins=bins_for(n, MAX_BINS))
    return _item(keys, names, series_densities(hists, grid), grid, stats, numbers, columns)


def _stat_row(df: pd.DataFrame | None) -> list[Any]:
    if df is None or df.empty:
        return [None] * len(STAT_COLUMNS)
    return [df[c].iloc[0] if c in df else None for c in STAT_COLUMNS]  # column by column: n stays an int


def _groups(df: pd.DataFrame | None, keys: list[str]) -> dict[tuple, pd.DataFrame]:
    if df is None or df.empty:
        return {}
    return {(k if isinstance(k, tuple) else (k,)): g for k, g in df.groupby(keys, sort=False, dropna=False)}


# ------------------------------------------------------------------------------------ reproduce
def _reproduce(run: RunDir) -> dict[str, Any]:
    hist = _groups(run.table("histograms"), ["table", "init", "seed", "layer", "param", "input", "stage"])
    shifts = _groups(run.table("shifts"), ["table", "init", "seed", "layer", "param", "input"])
    empty = pd.DataFrame({"left": [], "right": [], "count": []})
    items = []
    multi_seed = False
    for table, what in (("weights", "param"), ("features", "input")):
        df = run.table(table)
        if df is None or df.empty:
            continue
        multi_seed = multi_seed or df["seed"].nunique() > 1
        stats = _groups(df, ["init", "seed", "layer", what, "stage"])
        for (init, seed, layer, name), g in df.groupby(["init", "seed", "layer", what], sort=False):
            stages = sorted(dict.fromkeys(g["stage"]), key=layout.stage_order)
            later = [s for s in stages if s != layout.BEFORE] or stages[:1]
            param, inp = (name, "") if table == "weights" else ("", name)
            shift = shifts.get((table, init, seed, layer, param, inp))
            for stage in later:
                shown = list(dict.fromkeys([layout.BEFORE, stage] if layout.BEFORE in stages else [stage]))
                hs = [hist.get((table, init, seed, layer, param, inp, s), empty) for s in shown]
                rows = [_stat_row(stats.get((init, seed, layer, name, s))) for s in shown]
                n = max(float(r[0] or 0) for r in rows)
                numbers = []
                if shift is not None and stage == layout.AFTER:
                    numbers = [("W1 before → after", shift["wasserstein"].iloc[0]), ("KS before → after", shift["ks"].iloc[0])]
                keys = {"run": (init, seed), "table": table, "layer": layer, "what": name, "stage": stage}
                items.append((keys, shown, hs, n, rows, numbers))
    label = (lambda i, s: f"{i} (seed {s})") if multi_seed else (lambda i, s: str(i))
    built = []
    for keys, shown, hs, n, rows, numbers in items:
        keys["run"] = label(*keys["run"])
        built.append(_hist_item(keys, shown, hs, n, rows, numbers))
    return {
        "title": "Weights and features, before and after training",
        "selectors": [{"key": "run", "label": "Run (init)"}, {"key": "table", "label": "Table"},
                      {"key": "layer", "label": "Layer"}, {"key": "what", "label": "Tensor or input"},
                      {"key": "stage", "label": "Stage (against before)", "default": "last"}],
        "items": built,
        "notes": [],
    }


# ------------------------------------------------------------------------------------ gradients
def _values_grid(arrays: Sequence[np.ndarray], bins: int) -> np.ndarray:
    """The grid of :func:`~nndist.report.histview.display_grid`, from values instead of histograms."""
    pooled = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    bulk = tuple(float(v) for v in np.quantile(pooled, [TAIL, 1 - TAIL])) if pooled.size else None
    return padded_grid(bulk, bins)


def _density(values: np.ndarray, grid: np.ndarray) -> np.ndarray:
    v = np.clip(values[np.isfinite(values)], grid[0], grid[-1])  # tails into the end bins
    counts, _ = np.histogram(v, bins=grid)
    total = counts.sum()
    return counts / (total * np.diff(grid)) if total else counts.astype(np.float64)


def _value_stats(values: np.ndarray) -> list[Any]:
    v = values[np.isfinite(values)].astype(np.float64)
    if v.size == 0:
        return [0] + [None] * (len(STAT_COLUMNS) - 1)
    mean, std = v.mean(), v.std()
    z = (v - mean) / std if std > 0 else None
    skew = float((z**3).mean()) if z is not None else None
    kurt = float((z**4).mean() - 3) if z is not None else None
    q05, q50, q95 = np.quantile(v, [0.05, 0.5, 0.95])
    return [v.size, mean, std, v.min(), v.max(), skew, kurt, q05, q50, q95, None]


def _channel_row(stats: pd.DataFrame | None, channel: int) -> list[Any]:
    return _stat_row(None if stats is None else stats[stats["channel"] == channel])


def _gradients(run: RunDir) -> dict[str, Any]:
    g = run.table("gradients")
    layers = run.layer_order(g)
    boxes: dict[str, Any] = {}
    stats = _groups(g, ["layer", "stat"])
    for layer in layers:
        entry = {}
        for stat in ("emission", "absorption"):
            d = stats.get((layer, stat))
            if d is None:
                continue
            d = d.sort_values("channel")
            entry[stat] = {c: _nums(d[c]) for c in ("channel", "q05", "q25", "q50", "q75", "q95", "mean", "std", "n")}
        if entry:
            boxes[layer] = entry
    items, notes = [], []
    for layer in layers:
        em, ab = run.per_sample(layer, "emission"), run.per_sample(layer, "absorption")
        if em is None or ab is None:
            continue
        step = max(1, math.ceil(em.shape[0] / MAX_SAMPLE_ROWS))
        em, ab = np.asarray(em[::step], dtype=np.float64), np.asarray(ab[::step], dtype=np.float64)
        if step > 1 and not notes:
            notes.append(f"Pooled histograms use every {step}th sample ({em.shape[0]} of them).")
        views = [("all channels", em.reshape(-1), ab.reshape(-1), None)]
        views += [(f"channel {c}", em[:, c] if c < em.shape[1] else None, ab[:, c] if c < ab.shape[1] else None, c)
                  for c in range(min(FIGURE4_CHANNELS, max(em.shape[1], ab.shape[1])))]
        for view, e, a, c in views:
            shown = [(n, v) for n, v in (("Emission", e), ("Absorption", a)) if v is not None]
            grid = _values_grid([v for _, v in shown], bins_for(sum(v.size for _, v in shown) / len(shown), MAX_BINS))
            if c is None:
                names = [n for n, _ in shown]
                rows = [_value_stats(v) for _, v in shown]
            else:
                names = [f"{n} ({'out' if n == 'Emission' else 'in'} channel {c})" for n, _ in shown]
                rows = [_channel_row(stats.get((layer, n.lower())), c) for n, _ in shown]
            items.append(_item({"layer": layer, "channel": view}, names, [_density(v, grid) for _, v in shown], grid, rows))
    if not items:
        notes.append("No per-sample arrays in this run (--no-per-sample): the histograms need them; the box plots come from gradients.parquet.")
    return {
        "title": "Emission and Absorption per layer and channel",
        "selectors": [{"key": "layer", "label": "Layer"}, {"key": "channel", "label": "Channel"}],
        "items": items,
        "boxes": boxes,
        "notes": notes,
    }


# ------------------------------------------------------------------------------------ compare
def _compare(run: RunDir) -> dict[str, Any]:
    table = run.table("compare")
    hist = _groups(run.table("histograms"), ["source", "tensor"])
    empty = pd.DataFrame({"left": [], "right": [], "count": []})
    notes = []
    shown = table.head(MAX_ITEMS)
    if len(table) > MAX_ITEMS:
        notes.append(f"The explorer holds the {MAX_ITEMS} highest-ranked of {len(table)} rows; compare.parquet has them all.")
    depth = {t: i for i, t in enumerate(depth_order(run))}
    shown = shown.assign(_depth=shown["tensor"].map(depth)).sort_values("_depth", kind="stable", na_position="last")
    multi = len(set(zip(table["a"], table["b"]))) > 1
    items: list[dict[str, Any]] = []
    first, initial = (table.index[0] if len(table) else None), None  # the most changed row opens first
    for row in shown.itertuples():
        layer, _, param = row.tensor.rpartition(".")
        sides = [("A", row.a, "a"), ("B", row.b, "b")]  # the labels go into the numbers: they can be long paths
        sides = [s for s in sides if (s[1], row.tensor) in hist]
        names = [s[0] for s in sides]
        hs = [hist[(s[1], row.tensor)] for s in sides]
        n = max([float(h["count"].sum()) for h in hs], default=1.0)
        rows = [[int(h["count"].sum()), getattr(row, f"mean_{s[2]}"), getattr(row, f"std_{s[2]}"),
                 getattr(row, f"kurtosis_{s[2]}")] for s, h in zip(sides, hs)]
        numbers = [("A", row.a), ("B", row.b), ("status", row.status), ("shape A", row.shape_a or "–"),
                   ("shape B", row.shape_b or "–"),
                   ("relative change", row.rel_change), ("cosine", row.cosine), ("sign flips", row.sign_flip),
                   ("W1", row.w1), ("KS", row.ks)]
        keys = {"pair": f"{row.a} → {row.b}", "layer": layer or row.tensor, "tensor": param or row.tensor}
        if not multi:
            keys.pop("pair")
        items.append(_hist_item(keys, names, hs or [empty], n, rows, numbers, columns=_COMPARE_STATS))
        if row.Index == first:
            initial = items[-1]["keys"]
    selectors = [{"key": "layer", "label": "Layer"}, {"key": "tensor", "label": "Tensor"}]
    if multi:
        selectors.insert(0, {"key": "pair", "label": "Pair (A → B)"})
    return {"title": "Tensors of A and B", "selectors": selectors, "items": items, "notes": notes, "initial": initial}


# ------------------------------------------------------------------------------------ monitor
def _thin(steps: Sequence[Any], most: int) -> list[Any]:
    """At most ``most`` steps, evenly spaced, the first and the last always kept."""
    steps = list(steps)
    if len(steps) <= most:
        return steps
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, most)).astype(int))
    return [steps[i] for i in idx]


_OUTPUT = "output"  # the tensor name the explorer shows for a layer's output (features)


def _monitor(run: RunDir) -> dict[str, Any]:
    hist_df = run.table("histograms")
    if hist_df is not None and "channel" in hist_df:
        hist_df = hist_df[hist_df["channel"].isna()]
    if hist_df is not None and "param" in hist_df:
        hist_df = hist_df.assign(param=hist_df["param"].fillna(_OUTPUT))
    hist = _groups(hist_df, ["table", "layer", "param", "step"])
    empty = pd.DataFrame({"left": [], "right": [], "count": []})
    items, notes = [], []
    for table in ("weights", "grads", "features"):
        df = run.table(table)
        if df is None or df.empty:
            continue
        whole = df[df["channel"].isna()] if "channel" in df else df
        if "param" not in whole:  # features: one output per layer (a null param in histograms)
            whole = whole.assign(param=_OUTPUT)
        stats = _groups(whole, ["layer", "param", "step"])
        for (layer, param), g in whole.groupby(["layer", "param"], sort=False):
            steps = sorted(dict.fromkeys(g["step"]))
            kept = _thin(steps, MAX_STEPS)
            if len(kept) < len(steps) and not notes:
                notes.append(f"Steps are thinned to at most {MAX_STEPS} per tensor (first and last kept); the tables have all.")
            first = kept[0]
            for step in kept:
                shown = list(dict.fromkeys([first, step]))
                names = [f"step {s}" for s in shown]
                hs = [hist.get((table, layer, param, s), empty) for s in shown]
                rows = [_stat_row(stats.get((layer, param, s))) for s in shown]
                n = max(float(r[0] or 0) for r in rows)
                keys = {"table": table, "layer": layer, "param": param, "step": step}
                items.append(_hist_item(keys, names, hs, n, rows))
    return {
        "title": "Weights, gradients and features over training",
        "selectors": [{"key": "table", "label": "Table"}, {"key": "layer", "label": "Layer"},
                      {"key": "param", "label": "Tensor"}, {"key": "step", "label": "Step (against the first)", "default": "last"}],
        "items": items,
        "notes": notes,
    }


#: The explorer adapter of each kind of run: ``fn(run) -> data`` (see the module docstring).
EXPLORERS: dict[str, Callable[[RunDir], dict[str, Any]]] = {
    layout.REPRODUCE: _reproduce,
    layout.GRADIENTS: _gradients,
    layout.MONITOR: _monitor,
    layout.COMPARE: _compare,
}


def _size(item: dict[str, Any]) -> int:
    return sum(len(s["density"]) for s in item["series"]) + sum(len(r) for r in item["stats"]["rows"])


def explorer_data(run: RunDir) -> dict[str, Any]:
    """The explorer's data of a run (see the module docstring), bounded by :data:`MAX_NUMBERS`.

    A run whose tables are missing (unfinished, ``--no-report``) gets an explorer without items.
    """
    builder = EXPLORERS.get(run.kind)
    if builder is None:
        return {"title": "", "selectors": [], "items": [], "notes": [f"no explorer for {run.kind} runs"]}
    data = builder(run)
    total, kept = 0, []
    for item in data["items"]:
        total += _size(item)
        if total > MAX_NUMBERS:
            data["notes"].append(f"The explorer holds the first {len(kept)} of {len(data['items'])} distributions (size limit).")
            break
        kept.append(item)
    data["items"] = kept
    data.setdefault("boxes", {})
    return data


def embedded_json(data: Any) -> str:
    """JSON for a ``<script type="application/json">`` element: ``<``, ``>`` and ``&`` escaped,
    so no value can close the element or open a comment."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@lru_cache(maxsize=None)
def _asset(name: str) -> str:
    text = (ASSETS / name).read_text(encoding="utf-8")
    if "</script" in text.lower():  # would end the inline element early
        raise RuntimeError(f"{name} holds '</script'; it cannot be inlined")
    return text


def explorer_scripts() -> dict[str, str]:
    """The inline scripts of the explorer: Plotly's cartesian bundle and ``explorer.js``."""
    return {"plotly": _asset(PLOTLY_FILE), "explorer": _asset("explorer.js")}

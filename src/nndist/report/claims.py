"""The paper's claims, tested on a run's own data.

:func:`evaluate_claims` reads a run directory (docs/CONTRACTS.md) and returns one summary row per
claim of the paper plus detail rows (per seed, init, layer), each with a verdict:

* ``holds`` / ``fails``: the stated rule is met / not met wherever it was measured;
* ``mixed``: it flips between seeds, or holds for some inits/layers and fails for others;
* ``not measured``: the run does not contain what the claim needs (the other kind of run, a
  missing table, a missing init).

Claims 1-12 are about the initialisation study (a ``reproduce`` run); 13-15 about channel-wise
gradients (a ``gradients`` run). Other kinds of run (:data:`CLAIM_KINDS` lists the two that
claims apply to) get an empty table, not fifteen "not measured" rows. Every rule and threshold is written into the ``rule`` column, and
the measured values into ``numbers``, so a reader can judge the verdict.

Conventions:

* Final training loss = mean loss over the steps of the last epoch (loss.parquet).
* A *diverged* run (manifest ``runs[*].status == "diverged"``, or a non-finite final loss) ranks
  as having an infinite final loss; its after-training statistics are not used. A run still
  ``running`` (or ``pending``) is left out.
* Constant inits are ``ones`` and ``zeros``; claims about distributions use the others.
* Layer depth is the order of first appearance in the table (the order in which the producer
  visits ``model.named_modules()``), unless the manifest names ``config.layers``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from ..errors import NndistError
from ..io import atomic_path
from ..paper import CONSTANT_INITS, PAPER_INITS
from ..results import TABLES, RunDir, layout, load_run
from ..results.layout import GRADIENTS, REPRODUCE
from ..stats.heterogeneity import brown_forsythe, kruskal_wallis

__all__ = ["CLAIMS", "CLAIM_COLUMNS", "CLAIM_KINDS", "INITS", "WEAK_IMAGES", "evaluate_claims", "run_images", "verdict_text", "write_claims"]

INITS = PAPER_INITS
CLAIM_COLUMNS = ["id", "level", "claim", "scope", "verdict", "evidence", "numbers", "rule"]
#: The kinds of run the paper's claims are about (the others have no claims to test).
CLAIM_KINDS: tuple[str, ...] = (REPRODUCE, GRADIENTS)
HOLDS, FAILS, MIXED, NOT_MEASURED = "holds", "fails", "mixed", "not measured"

# Thresholds, stated in the rule column of every row that uses them.
MEAN_OVER_STD = 0.1  # claim 5: |mean| < 0.1 std
ZEROS_LOSS_TOL = 0.05  # claim 3: |loss - ln 10| <= 0.05 at every step
ZERO_WEIGHT_TOL = 1e-8  # claim 3: max |w| <= 1e-8
GAUSS_KS = 0.05  # claim 8: KS to the fitted normal < max(0.05, 1.63/sqrt(n))
GAUSS_KURT = 1.0  # claim 8: |excess kurtosis| < 1
FEATURE_MEAN_BEFORE = 0.1  # claim 9: |mean| <= 0.1 std before training
FEATURE_MEAN_AFTER = 1.0  # claim 9: |mean| < 1.0 after training
FEATURE_STD_FACTOR = 1.5  # claim 10: std after >= 1.5 x std before
FEATURE_STD_TOL = 0.3  # claim 12: |std - 1| <= 0.3 at initialisation
HETERO_P = 0.01  # claim 13: p < 0.01 (Kruskal-Wallis and Brown-Forsythe)
HETERO_CV = 0.1  # claim 13 without per-sample arrays: CV across channels > 0.1
HETERO_MAX_ROWS = 2000  # claim 13: at most this many samples (evenly spaced) per test
IDENTITY_RTOL = 1e-4  # claim 15: max relative difference of the totals
WEAK_IMAGES = 1000  # a verdict measured on fewer images is marked weak
EXACT_CLAIMS = (3, 15)  # exact properties: few images do not weaken them

CLAIMS: dict[int, tuple[str, str]] = {
    1: ("Orthogonal init converges fastest (lowest final training loss), followed by Kaiming.", REPRODUCE),
    2: ("Xavier converges slower than Kaiming.", REPRODUCE),
    3: ("Zeros init shows no training dynamics (loss stays at ln 10, weights stay zero).", REPRODUCE),
    4: ("Ones init has a high training loss (above every non-constant init's).", REPRODUCE),
    5: ("After training, the mean of every layer's weights is almost zero.", REPRODUCE),
    6: ("After training, the std of weights and biases increases in every layer.", REPRODUCE),
    7: ("Orthogonal init has the largest weight and bias variance in every layer.", REPRODUCE),
    8: ("Uniform-initialised weights become Gaussian after training; normal-initialised stay Gaussian.", REPRODUCE),
    9: ("Features have zero mean before training and |mean| below 1.0 after.", REPRODUCE),
    10: ("Feature std increases significantly after training.", REPRODUCE),
    11: ("After training, feature std grows with depth.", REPRODUCE),
    12: ("At initialisation, features have std close to 1.0.", REPRODUCE),
    13: ("Each channel has a different median and variance of Emission and Absorption within a layer.", GRADIENTS),
    14: ("Emission has a higher variance than Absorption.", GRADIENTS),
    15: ("Total outgoing and incoming gradients are similar: an EXACT identity, "
         "sum_c Em_c = sum_c Ab_c for every sample.", GRADIENTS),
}



# --------------------------------------------------------------------------------------------
# Verdict helpers
# --------------------------------------------------------------------------------------------


def _combine(verdicts: Iterable[str]) -> str:
    """holds if all measured hold, fails if all fail, mixed if both, not measured if none."""
    vs = {v for v in verdicts if v != NOT_MEASURED}
    if not vs:
        return NOT_MEASURED
    if vs == {HOLDS}:
        return HOLDS
    if vs == {FAILS}:
        return FAILS
    return MIXED


def _v(ok: bool) -> str:
    return HOLDS if ok else FAILS


def _g(x: float) -> str:
    """Short number: 3 significant digits; inf for diverged."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    if math.isinf(x):
        return "inf (diverged)" if x > 0 else "-inf"
    return f"{x:.3g}"


def _clip(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class _Claim:
    """Collects the rows of one claim: details first, then a summary row put in front."""

    def __init__(self, cid: int, rule: str) -> None:
        self.cid, self.rule = cid, rule
        self.details: list[dict] = []

    def detail(self, scope: str, verdict: str, numbers: str, rule: str | None = None) -> None:
        self.details.append(self._row("detail", scope, verdict, numbers, rule))

    def _row(self, level: str, scope: str, verdict: str, numbers: str, rule: str | None = None) -> dict:
        return {"id": self.cid, "level": level, "claim": CLAIMS[self.cid][0], "scope": scope,
                "verdict": verdict, "numbers": _clip(numbers), "rule": rule or self.rule}

    def rows(self, numbers: str | None = None, verdict: str | None = None, unit: str = "cases") -> list[dict]:
        verdict = verdict or _combine(d["verdict"] for d in self.details)
        if numbers is None:
            counted = [d for d in self.details if d["verdict"] != NOT_MEASURED]
            held = [d["scope"] for d in counted if d["verdict"] == HOLDS]
            other = [f"{d['scope']} ({d['verdict']})" for d in counted if d["verdict"] != HOLDS]
            numbers = f"holds in {len(held)} of {len(counted)} {unit}"
            if other and held:
                numbers += "; not in: " + ", ".join(other)
            if not counted:
                numbers = "; ".join(dict.fromkeys(d["numbers"] for d in self.details)) or "nothing to measure"
        return [self._row("summary", "all", verdict, numbers)] + self.details


def _not_measured(cid: int, why: str, rule: str = "") -> list[dict]:
    c = _Claim(cid, rule or "-")
    return c.rows(numbers=why, verdict=NOT_MEASURED)


def _by_seed(c: _Claim, per_seed: dict[int, tuple[str, str]], scope: str = "seed {s}") -> None:
    for s, (verdict, numbers) in sorted(per_seed.items()):
        c.detail(scope.format(s=s), verdict, numbers)


def _seed_summary(c: _Claim, per_seed: dict[int, tuple[str, str]]) -> list[dict]:
    verdict = _combine(v for v, _ in per_seed.values())
    if len(per_seed) == 1:
        numbers = next(iter(per_seed.values()))[1]
    elif verdict == MIXED:
        numbers = "flips between seeds: " + ", ".join(f"seed {s} {v}" for s, (v, _) in sorted(per_seed.items()))
    else:
        numbers = f"{verdict} for all {len(per_seed)} seeds; seed {min(per_seed)}: {per_seed[min(per_seed)][1]}"
    return c.rows(numbers=numbers, verdict=verdict)


# --------------------------------------------------------------------------------------------
# Reproduce-run claims (1-12)
# --------------------------------------------------------------------------------------------


class _Study:
    """The tables of a reproduce run, with run status applied."""

    def __init__(self, run: RunDir) -> None:
        self.run = run
        self.status = run.run_status()

    def state(self, init: str, seed: int) -> str:
        return str(self.status.get((init, int(seed)), {}).get("status", "done"))

    def excluded(self, init: str, seed: int, after: bool) -> bool:
        st = self.state(init, seed)
        return st in ("running", "pending") or (after and st == "diverged")

    def final_losses(self) -> dict[int, dict[str, float]] | None:
        """seed -> init -> final training loss (:meth:`RunDir.final_losses`); running runs left out."""
        finals = self.run.final_losses()
        if finals.empty:
            return None
        out: dict[int, dict[str, float]] = {}
        for rec in finals.itertuples(index=False):
            if rec.status not in ("running", "pending"):
                out.setdefault(int(rec.seed), {})[str(rec.init)] = float(rec.final_loss)
        # a diverged run may have no rows at all
        for (init, seed), entry in self.status.items():
            if entry.get("status") == "diverged" and seed in out:
                out[seed][init] = math.inf
        return out

    def before_after(self, name: str, keys: Sequence[str]) -> pd.DataFrame | None:
        """One row per (init, seed, *keys) with columns <stat>_before / <stat>_after."""
        df = self.run.table(name)
        if df is None:
            return None
        idx = ["init", "seed", *keys]
        cols = [c for c in ("n", "mean", "std", "kurtosis", "ks_normal", "min", "max") if c in df.columns]
        b = df[df["stage"] == "before"][idx + cols]
        a = df[df["stage"] == "after"][idx + cols]
        if b.empty and a.empty:
            return None
        m = b.merge(a, on=idx, how="outer", suffixes=("_before", "_after"))
        m["diverged"] = [self.state(i, s) == "diverged" for i, s in zip(m["init"], m["seed"])]
        m["running"] = [self.state(i, s) in ("running", "pending") for i, s in zip(m["init"], m["seed"])]
        return m[~m["running"]]


def _ranking(final: dict[str, float]) -> str:
    return " < ".join(f"{i} {_g(v)}" for i, v in sorted(final.items(), key=lambda kv: kv[1]))


def _claim1(st: _Study) -> list[dict]:
    rule = ("per seed: orthogonal has the lowest final training loss (mean over the last epoch) and a "
            "Kaiming init (normal or uniform) the second lowest; a diverged init counts as infinite loss")
    finals = st.final_losses()
    if finals is None:
        return _not_measured(1, "loss.parquet not produced", rule)
    c, per_seed = _Claim(1, rule), {}
    for s, final in finals.items():
        if "orthogonal" not in final or not any(i.startswith("kaiming") for i in final):
            continue
        order = sorted(final, key=lambda i: final[i])
        ok = order[0] == "orthogonal" and math.isfinite(final["orthogonal"]) and len(order) > 1 \
            and order[1].startswith("kaiming")
        per_seed[s] = (_v(ok), _ranking(final))
    if not per_seed:
        return _not_measured(1, "needs the orthogonal and a kaiming init; the run has neither or not both", rule)
    _by_seed(c, per_seed)
    return _seed_summary(c, per_seed)


def _claim2(st: _Study) -> list[dict]:
    rule = ("per seed: final training loss of each Xavier init > that of the Kaiming init with the same "
            "distribution (normal/uniform; all Kaiming inits when no same-distribution one was run); "
            "diverged = infinite loss")
    finals = st.final_losses()
    if finals is None:
        return _not_measured(2, "loss.parquet not produced", rule)
    c, pairs = _Claim(2, rule), {}
    for s, final in finals.items():
        xs = [i for i in final if i.startswith("xavier")]
        ks = [i for i in final if i.startswith("kaiming")]
        for x in xs:
            same = x.replace("xavier", "kaiming")
            for k in ([same] if same in ks else ks):
                ok = final[x] > final[k]
                pairs.setdefault(f"{x} vs {k}", []).append(
                    (s, _v(ok), f"seed {s}: {_g(final[x])} {'>' if ok else '<='} {_g(final[k])}"))
    if not pairs:
        return _not_measured(2, "needs a xavier and a kaiming init; the run lacks one of them", rule)
    for scope, items in pairs.items():
        v = _combine(v for _, v, _ in items)
        c.detail(scope, v, ("flips between seeds; " if v == MIXED else "") + "; ".join(t for _, _, t in items))
    return c.rows(unit="xavier/kaiming pairs")


def _claim3(st: _Study) -> list[dict]:
    rule = (f"every step's loss within {ZEROS_LOSS_TOL} of ln 10 = {math.log(10):.4f}, and every studied "
            f"layer's weights and biases stay zero (max |value| <= {ZERO_WEIGHT_TOL:g}) at every stage")
    loss = st.run.table("loss")
    w = st.run.table("weights")
    if loss is None and w is None:
        return _not_measured(3, "loss.parquet and weights.parquet not produced", rule)
    has_zeros = (loss is not None and (loss["init"] == "zeros").any()) or (w is not None and (w["init"] == "zeros").any())
    if not has_zeros:
        return _not_measured(3, "the run has no zeros init", rule)
    c = _Claim(3, rule)
    if loss is not None:
        z = loss[loss["init"] == "zeros"]
        items = []
        for s, g in z.groupby("seed"):
            if st.excluded("zeros", s, after=False):
                continue
            dev = np.abs(g["loss"].to_numpy(dtype=float) - math.log(10))
            dev = np.where(np.isfinite(dev), dev, np.inf)
            diverged = st.state("zeros", s) == "diverged"
            ok = not diverged and float(dev.max()) <= ZEROS_LOSS_TOL
            items.append((_v(ok), f"seed {s}: loss {_g(float(g['loss'].min()))}..{_g(float(g['loss'].max()))}, "
                          f"max |loss - ln 10| = {_g(float(dev.max()))}" + (" (diverged)" if diverged else "")))
        v = _combine(x for x, _ in items)
        c.detail("zeros (loss)", v, ("flips between seeds; " if v == MIXED else "") + "; ".join(t for _, t in items)
                 if items else "the zeros run has not finished")
    else:
        c.detail("zeros (loss)", NOT_MEASURED, "loss.parquet not produced")
    if w is not None and (w["init"] == "zeros").any():
        z = w[w["init"] == "zeros"]
        for layer in st.run.layer_order(z):
            g = z[z["layer"] == layer]
            items = []
            for s, gs in g.groupby("seed"):
                if st.excluded("zeros", s, after=False):
                    continue
                amax = float(np.nanmax(np.abs(gs[["min", "max"]].to_numpy(dtype=float)))) if "min" in gs else \
                    float(np.nanmax(np.abs(gs["mean"]) + gs["std"]))
                items.append((_v(amax <= ZERO_WEIGHT_TOL), f"seed {s}: max |w|, |b| = {_g(amax)}"))
            v = _combine(x for x, _ in items)
            c.detail(f"zeros/{layer}", v, "; ".join(t for _, t in items) if items else "the zeros run has not finished")
    else:
        c.detail("zeros (weights)", NOT_MEASURED, "weights.parquet not produced or has no zeros rows")
    return c.rows(unit="checks")


def _claim4(st: _Study) -> list[dict]:
    rule = ("per seed: the final training loss of ones > that of every non-constant init that did not diverge "
            "(diverged non-constant inits are left out and named; a diverged ones run counts as infinite loss)")
    finals = st.final_losses()
    if finals is None:
        return _not_measured(4, "loss.parquet not produced", rule)
    c, per_seed = _Claim(4, rule), {}
    for s, final in finals.items():
        others = {i: v for i, v in final.items() if i not in CONSTANT_INITS and math.isfinite(v)}
        gone = sorted(i for i, v in final.items() if i not in CONSTANT_INITS and not math.isfinite(v))
        if "ones" not in final or not others:
            continue
        top = max(others, key=lambda i: others[i])
        ok = final["ones"] > others[top]
        per_seed[s] = (_v(ok), f"ones {_g(final['ones'])} vs highest non-constant {top} {_g(others[top])}"
                       + (f" (diverged, left out: {', '.join(gone)})" if gone else ""))
    if not per_seed:
        return _not_measured(4, "needs the ones init and a non-constant init", rule)
    _by_seed(c, per_seed)
    return _seed_summary(c, per_seed)


def _eligible(m: pd.DataFrame, after: bool) -> pd.DataFrame:
    m = m[~m["init"].isin(CONSTANT_INITS)]
    return m[~m["diverged"]] if after else m


def _detail_groups(c: _Claim, df: pd.DataFrame, by: Sequence[str], ok: pd.Series, text: pd.Series,
                   layer_order: list[str]) -> None:
    """Detail rows per group (e.g. init/layer); within a group, all seeds and sub-keys."""
    df = df.assign(_ok=ok.to_numpy(), _txt=text.to_numpy())
    if "layer" in by:
        df = df.assign(_li=df["layer"].map({n: i for i, n in enumerate(layer_order)}).fillna(len(layer_order)))
        df = df.sort_values([b for b in by if b != "layer"] + ["_li"], kind="stable")
    for key, g in df.groupby(list(by), sort=False):
        key = key if isinstance(key, tuple) else (key,)
        verdicts = [HOLDS if o else FAILS for o in g["_ok"]]
        v = _combine(verdicts)
        seeds_flip = v == MIXED and g.groupby("seed")["_ok"].all().nunique() > 1 \
            if "seed" in g and g["seed"].nunique() > 1 else False
        c.detail("/".join(str(k) for k in key), v,
                 ("flips between seeds; " if seeds_flip else "") + "; ".join(g["_txt"]))


def _seed_prefix(df: pd.DataFrame) -> pd.Series:
    if df["seed"].nunique() > 1:
        return "seed " + df["seed"].astype(str) + " "
    return pd.Series("", index=df.index)


def _claim5(st: _Study) -> list[dict]:
    rule = f"after training, |mean| < {MEAN_OVER_STD} x std of the weights, for every layer of every non-constant, non-diverged init"
    m = st.before_after("weights", ["layer", "param"])
    if m is None or "mean_after" not in m:
        return _not_measured(5, "weights.parquet (after stage) not produced", rule)
    m = _eligible(m[m["param"] == "weight"], after=True).dropna(subset=["mean_after", "std_after"])
    if m.empty:
        return _not_measured(5, "no non-constant, non-diverged init with after-training weights", rule)
    ratio = m["mean_after"].abs() / m["std_after"].where(m["std_after"] > 0)
    ok = ratio < MEAN_OVER_STD
    text = _seed_prefix(m) + "|mean|/std = " + ratio.map(_g)
    c = _Claim(5, rule)
    _detail_groups(c, m, ["init", "layer"], ok.fillna(False), text, st.run.layer_order(m))
    return c.rows(unit="init/layer pairs")


def _claim6(st: _Study) -> list[dict]:
    rule = "std after training > std before, for weights and biases of every layer of every non-constant, non-diverged init"
    m = st.before_after("weights", ["layer", "param"])
    if m is None or "std_after" not in m:
        return _not_measured(6, "weights.parquet (before and after stages) not produced", rule)
    m = _eligible(m, after=True).dropna(subset=["std_before", "std_after"])
    if m.empty:
        return _not_measured(6, "no non-constant, non-diverged init with before and after weights", rule)
    ok = m["std_after"] > m["std_before"]
    text = _seed_prefix(m) + m["param"] + " " + m["std_before"].map(_g) + " -> " + m["std_after"].map(_g)
    c = _Claim(6, rule)
    _detail_groups(c, m, ["init", "layer"], ok, text, st.run.layer_order(m))
    return c.rows(unit="init/layer pairs")


def _claim7(st: _Study) -> list[dict]:
    rule = ("after training, per seed, layer and param (weight, bias): the orthogonal init's std is the largest "
            "of all non-constant, non-diverged inits")
    m = st.before_after("weights", ["layer", "param"])
    if m is None or "std_after" not in m:
        return _not_measured(7, "weights.parquet (after stage) not produced", rule)
    m = _eligible(m, after=True).dropna(subset=["std_after"])
    if "orthogonal" not in set(m["init"]) or m["init"].nunique() < 2:
        why = "the orthogonal init diverged" if st.state("orthogonal", 0) == "diverged" else \
            "needs the orthogonal init and another non-constant init"
        return _not_measured(7, why, rule)
    rows = []
    for (s, layer, param), g in m.groupby(["seed", "layer", "param"], sort=False):
        if "orthogonal" not in set(g["init"]) or len(g) < 2:
            continue
        orth = float(g.loc[g["init"] == "orthogonal", "std_after"].iloc[0])
        rest = g[g["init"] != "orthogonal"]
        top = rest.loc[rest["std_after"].idxmax()]
        rows.append({"seed": s, "layer": layer, "param": param, "ok": orth > float(top["std_after"]),
                     "txt": f"orthogonal {_g(orth)} vs largest other {top['init']} {_g(float(top['std_after']))}"})
    df = pd.DataFrame(rows)
    c = _Claim(7, rule)
    text = _seed_prefix(df) + df["txt"]
    _detail_groups(c, df, ["layer", "param"], df["ok"], text, st.run.layer_order(m))
    return c.rows(unit="layer/param pairs")


def _claim8(st: _Study) -> list[dict]:
    rule = (f"weights of uniform inits: KS to the fitted normal and |excess kurtosis| both decrease from before to "
            f"after; weights of normal inits after training: KS < max({GAUSS_KS}, 1.63/sqrt(n)) and "
            f"|excess kurtosis| < {GAUSS_KURT} (non-diverged runs)")
    m = st.before_after("weights", ["layer", "param"])
    need = {"ks_normal_before", "ks_normal_after", "kurtosis_before", "kurtosis_after"}
    if m is None or not need <= set(m.columns):
        return _not_measured(8, "weights.parquet with before/after ks_normal and kurtosis not produced", rule)
    m = _eligible(m[m["param"] == "weight"], after=True).dropna(subset=sorted(need))
    uni = m[m["init"].str.endswith("_uniform")]
    nor = m[m["init"].str.endswith("_normal")]
    if uni.empty and nor.empty:
        return _not_measured(8, "needs a *_uniform or *_normal init with before/after weights", rule)
    c = _Claim(8, rule)
    if not uni.empty:
        ok = (uni["ks_normal_after"] < uni["ks_normal_before"]) & (uni["kurtosis_after"].abs() < uni["kurtosis_before"].abs())
        text = (_seed_prefix(uni) + "KS " + uni["ks_normal_before"].map(_g) + " -> " + uni["ks_normal_after"].map(_g)
                + ", kurtosis " + uni["kurtosis_before"].map(_g) + " -> " + uni["kurtosis_after"].map(_g))
        _detail_groups(c, uni, ["init", "layer"], ok, text, st.run.layer_order(m))
    if not nor.empty:
        n = nor["n_after"] if "n_after" in nor else pd.Series(1e9, index=nor.index)
        ks_tol = np.maximum(GAUSS_KS, 1.63 / np.sqrt(n.astype(float).clip(lower=1)))
        ok = (nor["ks_normal_after"] < ks_tol) & (nor["kurtosis_after"].abs() < GAUSS_KURT)
        text = (_seed_prefix(nor) + "after: KS " + nor["ks_normal_after"].map(_g) + ", kurtosis "
                + nor["kurtosis_after"].map(_g))
        _detail_groups(c, nor, ["init", "layer"], ok, text, st.run.layer_order(m))
    return c.rows(unit="init/layer pairs")


def _features(st: _Study, cid: int, rule: str) -> tuple[pd.DataFrame | None, list[dict] | None]:
    m = st.before_after("features", ["layer", "input"])
    if m is None:
        return None, _not_measured(cid, "features.parquet not produced", rule)
    return m, None


def _claim9(st: _Study) -> list[dict]:
    rule = (f"before training |mean| <= {FEATURE_MEAN_BEFORE} x std (all runs); after training |mean| < "
            f"{FEATURE_MEAN_AFTER} (non-diverged runs); every layer and input of every non-constant init")
    m, nm = _features(st, 9, rule)
    if nm:
        return nm
    m = _eligible(m, after=False)
    if m.empty or "mean_before" not in m:
        return _not_measured(9, "no non-constant init with features before training", rule)
    after_ok = (m["mean_after"].abs() < FEATURE_MEAN_AFTER) | m["diverged"] | m["mean_after"].isna()
    ok = (m["mean_before"].abs() <= FEATURE_MEAN_BEFORE * m["std_before"]) & after_ok
    text = (_seed_prefix(m) + m["input"] + ": " + m["mean_before"].map(_g) + " -> "
            + m["mean_after"].map(_g).where(~m["diverged"], "diverged"))
    c = _Claim(9, rule)
    _detail_groups(c, m, ["init", "layer"], ok, text, st.run.layer_order(m))
    return c.rows(unit="init/layer pairs")


def _claim10(st: _Study) -> list[dict]:
    rule = (f"std after / std before >= {FEATURE_STD_FACTOR} for every layer and input of every non-constant, "
            "non-diverged init")
    m, nm = _features(st, 10, rule)
    if nm:
        return nm
    m = _eligible(m, after=True).dropna(subset=["std_before", "std_after"]) if "std_after" in m else m.iloc[:0]
    if m.empty:
        return _not_measured(10, "no non-constant, non-diverged init with features before and after", rule)
    factor = m["std_after"] / m["std_before"].where(m["std_before"] > 0)
    ok = (factor >= FEATURE_STD_FACTOR).fillna(False)
    text = _seed_prefix(m) + m["input"] + " x" + factor.map(_g)
    c = _Claim(10, rule)
    _detail_groups(c, m, ["init", "layer"], ok, text, st.run.layer_order(m))
    return c.rows(unit="init/layer pairs")


def _claim11(st: _Study) -> list[dict]:
    rule = ("after training, per init, seed and input, feature std strictly increases from each studied layer to "
            "the next deeper one (non-constant, non-diverged inits)")
    m, nm = _features(st, 11, rule)
    if nm:
        return nm
    m = _eligible(m, after=True).dropna(subset=["std_after"]) if "std_after" in m else m.iloc[:0]
    order = st.run.layer_order(m)
    if m.empty or len(order) < 2:
        return _not_measured(11, "needs after-training features of at least two layers", rule)
    rank = {n: i for i, n in enumerate(order)}
    rows = []
    for (init, s, inp), g in m.groupby(["init", "seed", "input"], sort=False):
        g = g.assign(_r=g["layer"].map(rank)).sort_values("_r")
        stds = g["std_after"].to_numpy(dtype=float)
        rows.append({"init": init, "seed": s, "ok": bool(np.all(np.diff(stds) > 0)),
                     "txt": f"{inp}: " + " < ".join(_g(x) for x in stds)})
    df = pd.DataFrame(rows)
    c = _Claim(11, rule + f" (layer order: {', '.join(order)})")
    _detail_groups(c, df, ["init"], df["ok"], _seed_prefix(df) + df["txt"], order)
    return c.rows(unit="inits")


def _claim12(st: _Study) -> list[dict]:
    rule = (f"before training |std - 1| <= {FEATURE_STD_TOL} for every layer and input of every non-constant init "
            "(diverged runs included: their initial state is valid)")
    m, nm = _features(st, 12, rule)
    if nm:
        return nm
    m = _eligible(m, after=False).dropna(subset=["std_before"]) if "std_before" in m else m.iloc[:0]
    if m.empty:
        return _not_measured(12, "no non-constant init with features before training", rule)
    ok = (m["std_before"] - 1.0).abs() <= FEATURE_STD_TOL
    text = _seed_prefix(m) + m["input"] + " " + m["std_before"].map(_g)
    c = _Claim(12, rule)
    _detail_groups(c, m, ["init", "layer"], ok, text, st.run.layer_order(m))
    return c.rows(unit="init/layer pairs")


# --------------------------------------------------------------------------------------------
# Gradients-run claims (13-15)
# --------------------------------------------------------------------------------------------

STATS = ("emission", "absorption")


def _per_sample(run: RunDir, layer: str, stat: str) -> np.ndarray | None:
    return run.per_sample(layer, stat)


def _grad_layers(run: RunDir) -> list[str]:
    g = run.table("gradients")
    layers = run.layer_order(g)
    if not layers and run.kind == GRADIENTS and run.file(layout.PER_SAMPLE_DIR).is_dir():
        names = {p.name.rsplit(".", 2)[0] for p in run.file(layout.PER_SAMPLE_DIR).glob("*.npy")}
        layers = sorted(names)
    return layers


def _subsample(arr: np.ndarray, limit: int = HETERO_MAX_ROWS) -> np.ndarray:
    idx = np.linspace(0, arr.shape[0] - 1, min(limit, arr.shape[0])).round().astype(int)
    return np.asarray(arr[np.unique(idx)], dtype=np.float64)


def _claim13(run: RunDir) -> list[dict]:
    rule = (f"per layer and statistic: with per-sample arrays, Kruskal-Wallis H test over channels (medians differ) "
            f"and Brown-Forsythe test (Levene, center=median; variances differ), both p < {HETERO_P}, on up to "
            f"{HETERO_MAX_ROWS} evenly spaced samples; without them, from gradients.parquet, coefficient of variation "
            f"across channels of the channel medians (q50) and of the channel stds, both > {HETERO_CV}")
    layers = _grad_layers(run)
    if not layers:
        return _not_measured(13, "gradients.parquet and per_sample/ not produced", rule)
    g = run.table("gradients")
    c = _Claim(13, rule)
    for layer in layers:
        for stat in STATS:
            arr = _per_sample(run, layer, stat)
            scope = f"{layer} ({stat})"
            if arr is not None and arr.shape[1] >= 2 and arr.shape[0] >= 3:
                x = _subsample(arr)
                if np.ptp(x) == 0:
                    c.detail(scope, FAILS, "all values equal")
                    continue
                h, h_p = kruskal_wallis(x)
                w, w_p = brown_forsythe(x)
                ok = h_p < HETERO_P and w_p < HETERO_P
                c.detail(scope, _v(ok), f"Kruskal-Wallis H = {_g(h)}, p = {_g(h_p)}; "
                         f"Brown-Forsythe W = {_g(w)}, p = {_g(w_p)} "
                         f"({x.shape[0]} samples x {x.shape[1]} channels)")
            elif g is not None and "q50" in g:
                sub = g[(g["layer"] == layer) & (g["stat"] == stat)]
                if len(sub) < 2:
                    c.detail(scope, NOT_MEASURED, "fewer than two channels")
                    continue
                cv_med = float(sub["q50"].std(ddof=0) / abs(sub["q50"].mean())) if sub["q50"].mean() else math.inf
                cv_std = float(sub["std"].std(ddof=0) / abs(sub["std"].mean())) if sub["std"].mean() else math.inf
                ok = cv_med > HETERO_CV and cv_std > HETERO_CV
                c.detail(scope, _v(ok), f"CV of channel medians {_g(cv_med)}, CV of channel stds {_g(cv_std)} "
                         f"({len(sub)} channels; no per-sample arrays)")
            else:
                c.detail(scope, NOT_MEASURED, "neither per-sample arrays nor gradients.parquet rows")
    return c.rows(unit="layer/statistic pairs")


def _channel_vars(run: RunDir, layer: str, stat: str) -> tuple[np.ndarray | None, str]:
    arr = _per_sample(run, layer, stat)
    if arr is not None:
        return np.asarray(arr, dtype=np.float64).var(axis=0), "per-sample arrays"
    g = run.table("gradients")
    if g is None:
        return None, ""
    sub = g[(g["layer"] == layer) & (g["stat"] == stat)]
    return (sub["std"].to_numpy(dtype=float) ** 2 if len(sub) else None), "gradients.parquet"


def _claim14(run: RunDir) -> list[dict]:
    rule = ("per layer: the median over channels of the variance over samples of Emission > that of Absorption "
            "(population variance)")
    layers = _grad_layers(run)
    if not layers:
        return _not_measured(14, "gradients.parquet and per_sample/ not produced", rule)
    c = _Claim(14, rule)
    for layer in layers:
        ve, src = _channel_vars(run, layer, "emission")
        va, _ = _channel_vars(run, layer, "absorption")
        if ve is None or va is None or not len(ve) or not len(va):
            c.detail(layer, NOT_MEASURED, "emission or absorption missing")
            continue
        me, ma = float(np.median(ve)), float(np.median(va))
        c.detail(layer, _v(me > ma), f"median channel variance Em {_g(me)} vs Ab {_g(ma)}"
                 + (f" (x{_g(me / ma)})" if ma > 0 else "") + f", from {src}")
    return c.rows(unit="layers")


def _claim15(run: RunDir) -> list[dict]:
    rule = (f"exact identity (both totals are the sum of ||LG^(c1->c2)|| over all channel pairs): "
            f"max over samples of |sum_c Em_c - sum_c Ab_c| / max(|sum Em|, |sum Ab|) < {IDENTITY_RTOL:g} from "
            "per-sample arrays (float64 sums); without them, the same on the channel means in gradients.parquet")
    layers = _grad_layers(run)
    if not layers:
        return _not_measured(15, "gradients.parquet and per_sample/ not produced", rule)
    definition = (run.manifest.get("config") or {}).get("definition", "paper")
    if definition != "paper":
        return _not_measured(15, f"the identity is that of eq. 19-20; this run measured definition={definition}", rule)
    g = run.table("gradients")
    c = _Claim(15, rule)
    for layer in layers:
        em, ab = _per_sample(run, layer, "emission"), _per_sample(run, layer, "absorption")
        if em is not None and ab is not None and em.shape[0] == ab.shape[0]:
            te = np.asarray(em, dtype=np.float64).sum(axis=1)
            ta = np.asarray(ab, dtype=np.float64).sum(axis=1)
            src = f"{em.shape[0]} samples"
        elif g is not None:
            sub = g[g["layer"] == layer]
            te = np.array([sub.loc[sub["stat"] == "emission", "mean"].sum()])
            ta = np.array([sub.loc[sub["stat"] == "absorption", "mean"].sum()])
            src = "channel means from gradients.parquet"
        else:
            c.detail(layer, NOT_MEASURED, "no emission/absorption data")
            continue
        scale = np.maximum(np.maximum(np.abs(te), np.abs(ta)), np.finfo(np.float64).tiny)
        rel = float(np.max(np.abs(te - ta) / scale))
        c.detail(layer, _v(rel < IDENTITY_RTOL), f"max relative difference {rel:.2e} ({src})")
    return c.rows(unit="layers")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------

_REPRODUCE_FUNCS: dict[int, Callable[[_Study], list[dict]]] = {
    1: _claim1, 2: _claim2, 3: _claim3, 4: _claim4, 5: _claim5, 6: _claim6,
    7: _claim7, 8: _claim8, 9: _claim9, 10: _claim10, 11: _claim11, 12: _claim12,
}
_GRADIENT_FUNCS: dict[int, Callable[[RunDir], list[dict]]] = {13: _claim13, 14: _claim14, 15: _claim15}


def evaluate_claims(run_dir: str | os.PathLike[str] | RunDir) -> pd.DataFrame:
    """Tests the paper's claims on a run directory.

    Args:
        run_dir: A ``reproduce`` or ``gradients`` run directory (or an opened :class:`RunDir`).

    Returns:
        DataFrame with columns ``id, level, claim, scope, verdict, numbers, rule``: for each claim
        1-15 one ``summary`` row (scope ``all``) followed by its ``detail`` rows. ``verdict`` is
        ``holds``, ``fails``, ``mixed`` or ``not measured``. Empty (the columns only) for a
        kind of run outside :data:`CLAIM_KINDS`.

    Raises:
        NndistError: If the run directory or one of its tables is missing or invalid.
    """
    run = run_dir if isinstance(run_dir, RunDir) else load_run(run_dir)
    rows: list[dict] = []
    if run.kind not in CLAIM_KINDS:
        return pd.DataFrame(rows, columns=CLAIM_COLUMNS)
    study = _Study(run) if run.kind == REPRODUCE else None
    for cid, (_, kind) in CLAIMS.items():
        if kind != run.kind:
            # run the claim on nothing, to state its rule, then say why it was not measured
            empty = RunDir(path=run.path, manifest={"kind": kind}, _tables=dict.fromkeys(TABLES[kind]))
            empty_rows = _REPRODUCE_FUNCS[cid](_Study(empty)) if kind == REPRODUCE else _GRADIENT_FUNCS[cid](empty)
            rule = empty_rows[0]["rule"]
            rows += _not_measured(cid, f"needs a {kind} run; this is a {run.kind} run", rule)
        elif study is not None:
            rows += _REPRODUCE_FUNCS[cid](study)
        else:
            rows += _GRADIENT_FUNCS[cid](run)
    images = run_images(run)
    for row in rows:
        weak = images is not None and images < WEAK_IMAGES and row["id"] not in EXACT_CLAIMS and row["verdict"] != NOT_MEASURED
        row["evidence"] = f"{images} images: weak" if weak else ""
        if row["id"] not in EXACT_CLAIMS:
            row["rule"] += f"; a verdict from fewer than {WEAK_IMAGES} images is marked weak"
    return pd.DataFrame(rows, columns=CLAIM_COLUMNS)


def run_images(run: RunDir) -> int | None:
    """How many images a run's claims rest on: the training subset, or the measured samples."""
    m = run.manifest
    if run.kind == REPRODUCE:
        return len((m.get("subsets") or {}).get("train") or []) or None
    return int(m["n_samples"]) if m.get("n_samples") is not None else None


def verdict_text(row: dict | pd.Series) -> str:
    """A verdict with its evidence: ``holds`` or ``holds (60 images: weak)``."""
    evidence = row.get("evidence") if hasattr(row, "get") else None
    return f"{row['verdict']} ({evidence})" if isinstance(evidence, str) and evidence else str(row["verdict"])


def write_claims(run_dir: str | os.PathLike[str], claims: pd.DataFrame | None = None) -> Path:
    """Evaluates the claims and writes them to ``RUN_DIR/claims.csv`` atomically.

    Args:
        run_dir: A ``reproduce`` or ``gradients`` run directory.
        claims: The table of :func:`evaluate_claims`, if already computed.

    Returns:
        The path of claims.csv.

    Raises:
        NndistError: As :func:`evaluate_claims`.
    """
    run = load_run(run_dir)
    df = evaluate_claims(run) if claims is None else claims
    path = run.file(layout.CLAIMS)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path

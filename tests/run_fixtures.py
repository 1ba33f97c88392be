"""Synthetic run directories, written by the project's own writer, for the report layer.

The reporting code (claims, HTML report, TensorBoard) only reads run directories, so its tests
build realistic ones here from planted data instead of training anything. Every file goes through
:class:`nndist.results.RunWriter` (file names, columns, row order, run keys), summaries and
histograms through :class:`nndist.stats.Summary`, and figures through the report's own figure
code, so these directories cannot drift from the ones the studies write:

* :func:`make_reproduce_run` writes what ``nndist reproduce`` writes: manifest.json, loss,
  accuracy, weights, features, histograms and shifts tables, and small matplotlib figures.
  With ``paper=True`` every measured quantity follows the paper (claims 1-12 hold); with
  ``paper=False`` every one contradicts it (claims 1-12 fail).
* :func:`make_gradients_run` writes what ``nndist gradients`` writes: per-sample emission and
  absorption arrays built from a tensor of local-gradient norms ||LG^{c1->c2}||, so the exact
  identity sum_c Em_c = sum_c Ab_c holds, gradients.parquet, channel_norms.npz and figures.
  With ``paper=True`` channels differ and emission varies more than absorption (claims 13-15
  hold); with ``paper=False`` channels are alike and absorption varies more.

Summary rows and histograms are computed from actual samples, so they agree exactly.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from nndist.io import write_json, write_parquet
from nndist.paper import INPUT_TYPES, PAPER_INITS, PAPER_LAYERS
from nndist.report import draw_figures
from nndist.results import RunWriter, layout
from nndist.stats import Summary
from nndist.stats.tables import histogram_rows, summary_row

ALL_INITS = PAPER_INITS
LAYERS = PAPER_LAYERS
INPUTS = INPUT_TYPES

# Final training loss per init: the paper's order, and one that contradicts every ordering claim.
_FINAL_LOSS_PAPER = {"orthogonal": 0.80, "kaiming_normal": 0.95, "kaiming_uniform": 1.00,
                     "xavier_normal": 1.20, "xavier_uniform": 1.25, "ones": 2.10, "zeros": math.log(10)}
_FINAL_LOSS_CONTRARY = {"orthogonal": 1.40, "kaiming_normal": 1.30, "kaiming_uniform": 1.35,
                        "xavier_normal": 0.90, "xavier_uniform": 0.95, "ones": 0.70, "zeros": 1.60}


def summarize(x: np.ndarray) -> Summary:
    """The project's summary of a 1-d sample (float64)."""
    return Summary().update(np.asarray(x, dtype=np.float64))


def _draw(rng: np.random.Generator, shape: str, n: int, mean: float, std: float) -> np.ndarray:
    """n values with the given mean/std and shape: 'normal', 'uniform', 'heavy' (Laplace), 'const'."""
    if shape == "const" or std == 0:
        return np.full(n, mean)
    if shape == "uniform":
        z = rng.uniform(-math.sqrt(3), math.sqrt(3), n)
    elif shape == "bimodal":
        z = rng.choice([-1.0, 1.0], n) + rng.normal(0, 0.05, n)
    elif shape == "heavy":
        z = rng.laplace(0.0, 1 / math.sqrt(2), n)
    else:
        z = rng.standard_normal(n)
    z = (z - z.mean()) / z.std()
    return mean + std * z


def make_reproduce_run(
    root: str | Path,
    *,
    inits: Sequence[str] = ALL_INITS,
    seeds: Sequence[int] = (0,),
    epochs: int = 3,
    steps_per_epoch: int = 4,
    layers: Sequence[str] = LAYERS,
    paper: bool = True,
    diverged: Iterable[str] = (),
    figures: bool = True,
    every_epoch: bool = True,
    n_values: int = 600,
    seed: int = 0,
) -> Path:
    """Writes a fake ``nndist reproduce`` run directory at ``root`` and returns it.

    Args:
        inits: Initialisation schemes run.
        seeds: Training seeds (more than one gives ``<init>/seed<S>`` run keys).
        paper: True: the data follows the paper's claims 1-12; False: it contradicts them.
        diverged: Inits whose runs diverged (loss turns NaN in the last epoch; no after stats).
        figures: Write figures/fig1_loss.png etc.
        every_epoch: Also write epoch_K stages and figures/evolution.png.
        n_values: Sample size behind each weight/feature summary.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    diverged = set(diverged)
    final = _FINAL_LOSS_PAPER if paper else _FINAL_LOSS_CONTRARY
    n_steps = epochs * steps_per_epoch

    loss_rows, acc_rows, w_rows, f_rows, h_rows, s_rows = [], [], [], [], [], []
    runs = {}
    stages = ["before"] + ([f"epoch_{k}" for k in range(1, epochs)] if every_epoch else []) + ["after"]

    for s in seeds:
        for init in inits:
            is_div = init in diverged
            runs[layout.run_key(init, s)] = {
                "init": init, "seed": s, "status": "diverged" if is_div else "done",
                "diverged_at_step": (n_steps - 2) if is_div else None,
            }
            # loss: exponential decay from ln 10 to the final value; zeros stays at ln 10 (paper)
            target = final[init] + 0.01 * s
            for step in range(n_steps):
                epoch = step // steps_per_epoch + 1
                if init == "zeros" and paper:
                    loss = math.log(10) + rng.normal(0, 0.003)
                else:
                    frac = step / max(n_steps - 1, 1)
                    loss = target + (math.log(10) - target) * math.exp(-6 * frac) + rng.normal(0, 0.005)
                if is_div and step >= n_steps - 2:
                    loss = float("nan")
                loss_rows.append((init, s, epoch, step, loss))
            for epoch in range(epochs + 1):
                for split in ("train", "valid"):
                    acc = 0.1 if init == "zeros" else 0.1 + 0.5 * epoch / epochs * (2.3 - final[init]) / 1.5
                    acc_rows.append((init, s, epoch, split, float(np.clip(acc, 0, 1)), 2.3 - 0.1 * epoch))

            _weights_and_features(rng, init, s, layers, stages, paper, is_div, n_values, w_rows, f_rows, h_rows, s_rows)

    writer = RunWriter(root, layout.REPRODUCE)
    order = {(init, s): i for i, (s, init) in enumerate((s, init) for s in seeds for init in inits)}
    writer.write_table("loss", pd.DataFrame(loss_rows, columns=["init", "seed", "epoch", "step", "loss"]), order)
    writer.write_table("accuracy", pd.DataFrame(acc_rows, columns=["init", "seed", "epoch", "split", "accuracy", "loss"]), order)
    writer.write_table("weights", pd.DataFrame(w_rows), order)
    writer.write_table("features", pd.DataFrame(f_rows), order)
    writer.write_table("histograms", pd.DataFrame(h_rows), order)
    writer.write_table("shifts", pd.DataFrame(s_rows, columns=["table", "init", "seed", "layer", "param", "input", "wasserstein", "ks"]), order)
    writer.write_manifest({
        "config": {
            "profile": "quick", "data": "shapes", "model": "paper_cnn", "inits": list(inits),
            "seeds": len(seeds), "epochs": epochs, "batch_size": 64, "lr": 1e-4,
            "weight_decay": 0.0, "every_epoch": every_epoch, "layers": list(layers),
        },
        "versions": {"nndist": "0.1.0", "torch": "2.4.0", "python": "3.11"},
        "seeds": {"data_order": 0, "init": {layout.run_key(i, s): 1 + s for s in seeds for i in inits}},
        "subsets": {"train": list(range(64)), "valid": list(range(32))},
        "runs": runs,
        "started": "2024-01-01T10:00:00",
        "finished": "2024-01-01T10:05:00",
    })
    if figures:
        draw_figures(root)
    return root


def _weights_and_features(rng, init, s, layers, stages, paper, is_div, n_values, w_rows, f_rows, h_rows, s_rows):
    uniform_init = init.endswith("_uniform")
    samples: dict[tuple, np.ndarray] = {}
    for li, layer in enumerate(layers):
        base = 0.05 / (li + 1)
        if init == "orthogonal":
            std0 = base * (1.6 if paper else 0.5)
        elif init.startswith("kaiming"):
            std0 = base * 1.2
        else:
            std0 = base
        for param in ("weight", "bias"):
            for k, stage in enumerate(stages):
                if is_div and stage != "before":
                    continue
                t = k / (len(stages) - 1)  # 0 before .. 1 after
                if init == "zeros":
                    mean, std, shape = 0.0, 0.0, "const"
                    if not paper and stage != "before":
                        mean, std, shape = 0.01, 0.02, "normal"
                elif init == "ones":
                    mean, std, shape = (1.0, 0.0, "const") if stage == "before" else (0.98, 0.02 * t, "normal")
                else:
                    growth = (1 + 0.4 * t) if paper else (1 - 0.3 * t)
                    std = std0 * growth * (0.8 if param == "bias" else 1.0)
                    mean = (0.01 if paper else 0.5) * std * t
                    if stage == "before":
                        shape = "uniform" if uniform_init else "normal"
                    elif paper:
                        shape = "normal" if (uniform_init and t == 1) else ("uniform" if uniform_init else "normal")
                    else:
                        shape = ("bimodal" if t == 1 else "uniform") if uniform_init else "heavy"
                n = n_values if param == "weight" else max(16, n_values // 20)
                x = _draw(rng, shape, n, mean, std)
                if uniform_init and paper and 0 < t < 1:
                    x = _draw(rng, "normal", n, mean, std) if rng.random() < t else x
                samples[("weights", layer, param, stage)] = x
                keys = {"init": init, "seed": s, "layer": layer, "param": param, "stage": stage}
                summary = summarize(x)
                w_rows.append(summary_row(summary, keys))
                h_rows.extend(histogram_rows(summary, dict(keys, table="weights", input="")))
        for inp in INPUTS:
            for k, stage in enumerate(stages):
                if is_div and stage != "before":
                    continue
                t = k / (len(stages) - 1)
                if init == "zeros":
                    mean, std = 0.0, 0.0
                elif init == "ones":
                    mean, std = 5.0 * (li + 1), 4.0 * (li + 1)
                elif paper:
                    std_after = 2.0 + li  # grows with depth, >= 2x the initial ~1.0
                    std = (1.0 + 0.03 * li) * (1 - t) + std_after * t
                    mean = 0.01 + 0.3 * t
                else:
                    std_after = 2.0 - 0.3 * li  # shrinks with depth, below 1.5x the initial 3.0
                    std = 3.0 * (1 - t) + std_after * t
                    mean = 0.8 + 0.7 * t
                x = _draw(rng, "normal", n_values, mean, std)
                samples[("features", layer, inp, stage)] = x
                keys = {"init": init, "seed": s, "layer": layer, "input": inp, "stage": stage}
                summary = summarize(x)
                f_rows.append(summary_row(summary, keys))
                h_rows.extend(histogram_rows(summary, dict(keys, table="features", param="")))
    for (table, layer, what, stage), x in samples.items():
        if stage == "before" and (table, layer, what, "after") in samples:
            y = samples[(table, layer, what, "after")]
            param, inp = (what, "") if table == "weights" else ("", what)
            s_rows.append((table, init, s, layer, param, inp, float(stats.wasserstein_distance(x, y)),
                           float(stats.ks_2samp(x, y).statistic)))


def make_gradients_run(
    root: str | Path,
    *,
    layers: dict[str, tuple[int, int]] | None = None,
    n_samples: int = 300,
    paper: bool = True,
    per_sample: bool = True,
    figures: bool = True,
    seed: int = 0,
) -> Path:
    """Writes a fake ``nndist gradients`` run directory at ``root`` and returns it.

    The per-sample local-gradient norms M[n, c1, c2] = ||LG^{c1->c2}(x_n)|| are drawn first;
    emission is M summed over c2 (N, C_out), absorption M summed over c1 (N, C_in), exactly as
    eqs. (19)-(20), so total emission equals total absorption for every sample.

    Args:
        layers: layer name -> (c_out, c_in).
        paper: True: channels differ and emission varies more than absorption; False: the
            channels are alike and absorption varies more.
        per_sample: Write per_sample/<layer>.<stat>.npy (else only gradients.parquet).
    """
    root = Path(root)
    writer = RunWriter(root, layout.GRADIENTS)
    rng = np.random.default_rng(seed)
    layers = layers or {"layer1.0.conv1": (16, 16), "layer2.0.conv1": (32, 16)}
    rows, norms = [], {}
    for layer, (c_out, c_in) in layers.items():
        if paper:
            a = rng.lognormal(0, 0.6, c_out)[None, :, None]  # channel-specific scale of emitters
            b = rng.lognormal(0, 0.3, c_in)[None, None, :]
            s = rng.lognormal(0, 0.8, (n_samples, c_out, 1))  # sample-wise fluctuation per emitter
            m = a * b * s * rng.uniform(0.9, 1.1, (n_samples, c_out, c_in))
        else:
            s = rng.lognormal(0, 0.8, (n_samples, 1, c_in))  # fluctuation per absorber, alike channels
            m = s * rng.uniform(0.5, 1.5, (n_samples, c_out, c_in))
        m = (m * 1e-3).astype(np.float64)
        em = m.sum(axis=2).astype(np.float32)  # (N, C_out)
        ab = m.sum(axis=1).astype(np.float32)  # (N, C_in)
        norms[layer] = m.mean(axis=0)
        for stat, arr in (("emission", em), ("absorption", ab)):
            if per_sample:
                writer.per_sample_array(layer, stat, arr.shape, create=True)[:] = arr
                writer.publish_per_sample(layer, stat)
            summary = Summary(channels=arr.shape[1]).update(arr.astype(np.float64))
            rows += [dict(layer=layer, channel=c, stat=stat, **row) for c, row in enumerate(summary.rows())]
    writer.write_table("gradients", pd.DataFrame(rows))
    writer.write_arrays(layout.CHANNEL_NORMS, norms)
    if per_sample:
        writer.write_array(layout.PER_SAMPLE_ORDER, np.arange(n_samples, dtype=np.int64))
    writer.write_manifest({
        "config": {"model": "cifar_resnet20", "weights": "resnet20-12fca82f.th", "data": "cifar10",
                   "samples": n_samples, "batch_size": 128},
        "versions": {"nndist": "0.1.0", "torch": "2.4.0"},
        "model": "cifar_resnet20",
        "layers": {name: {"type": "Conv2d", "c_out": co, "c_in": ci} for name, (co, ci) in layers.items()},
        "unsupported": {"fc": "Linear"},
        "n_samples": n_samples,
        "sample_order": list(range(n_samples)),
    })
    if figures:
        draw_figures(root)
    return root


def edit_table(run_dir: str | Path, name: str, fn: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """Rewrites table ``name`` (``"loss"`` or ``"loss.parquet"``) as ``fn(table)``, unchecked (to plant faults)."""
    path = Path(run_dir) / layout.table_file(name.removesuffix(".parquet"))
    write_parquet(path, fn(pd.read_parquet(path)))


def edit_manifest(run_dir: str | Path, fn: Callable[[dict], None]) -> None:
    """Edits the manifest in place with ``fn(manifest)``."""
    path = Path(run_dir) / layout.MANIFEST
    manifest = json.loads(path.read_text())
    fn(manifest)
    write_json(path, manifest)

"""TensorBoard event files rebuilt from a run's tables (so they are complete after a resume).

:func:`write_tensorboard` writes ``RUN_DIR/tb/events.out.tfevents.*.nndist-tables`` with
:class:`torch.utils.tensorboard.SummaryWriter`:

Reproduce runs
    * scalars ``loss/<init>`` per optimisation step (loss.parquet);
    * scalars ``accuracy/<split>/<init>`` and ``eval_loss/<split>/<init>`` per epoch (epoch 0 =
      before training; accuracy.parquet);
    * histograms ``weights/<init>/<layer>/<param>`` and ``features/<init>/<layer>/<input>`` per
      stage, at step 0 for ``before``, K for ``epoch_K`` and the last epoch for ``after``
      (histograms.parquet, with count/sum/sum of squares/min/max made exact from the summary
      tables: sum = n·mean, sum of squares = n·(std² + mean²) with the population std).
    With several seeds every ``<init>`` above reads ``<init>/seed<S>``.

Gradients runs
    * histograms ``emission/<layer>`` and ``absorption/<layer>`` with the channel index as the
      step, so TensorBoard's histogram view shows one distribution per channel, for the first
      channels of each layer (the run's ``channels`` option, 15 by default, as Figure 4);
      from ``per_sample/<layer>.<stat>.npy`` when present, else an approximation from the
      quantiles in gradients.parquet (exact count, sum, sum of squares, min and max).

Compare runs
    * histograms ``weights/<tensor>`` with the source's position as the step (0 = A, 1 = B, ...)
      from histograms.parquet, moments from compare.parquet;
    * scalars ``shift/rel_change``, ``shift/w1``, ``shift/ks`` with the tensor's depth position as
      the step (``shift/<col>/<B>`` per pair with three or more sources).

The events are written into a temporary directory and moved into ``tb/`` when complete; the
previous ``*.nndist-tables`` files are replaced, other event files (e.g. written live during
training) are left alone.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import NndistError
from ..paper import FIGURE4_CHANNELS
from ..results import RunDir, layout, load_run

__all__ = ["TB_SUFFIX", "write_tensorboard"]

TB_SUFFIX = ".nndist-tables"
_QUANTILES = [("min", 0.0), ("q01", 0.01), ("q05", 0.05), ("q25", 0.25), ("q50", 0.5),
              ("q75", 0.75), ("q95", 0.95), ("q99", 0.99), ("max", 1.0)]


def _summary_writer():
    try:
        import tensorboard  # noqa: F401  (torch's SummaryWriter needs it)
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise NndistError("TensorBoard output needs the tensorboard package; install it with "
                          "pip install 'nndist[tb]'") from None
    return SummaryWriter


def _run_name(init: str, seed: int, multi_seed: bool) -> str:
    return f"{init}/seed{seed}" if multi_seed else str(init)


def _moments(n: float, mean: float, std: float) -> tuple[float, float]:
    """sum and sum of squares from the population mean and std."""
    return n * mean, n * (std * std + mean * mean)


def _raw_from_bins(left: np.ndarray, right: np.ndarray, count: np.ndarray) -> tuple[list[float], list[float]]:
    """Bucket limits (right edges) and counts, with empty buckets for gaps between stored bins."""
    order = np.argsort(left)
    limits, counts = [float(left[order[0]])], [0.0]
    for i in order:
        if left[i] > limits[-1]:
            limits.append(float(left[i]))
            counts.append(0.0)
        limits.append(float(right[i]))
        counts.append(float(count[i]))
    return limits, counts


def _add_raw(writer, tag: str, step: int, limits, counts, *, n, total, sumsq, vmin, vmax) -> None:
    writer.add_histogram_raw(tag, min=float(vmin), max=float(vmax), num=int(n), sum=float(total),
                             sum_squares=float(sumsq), bucket_limits=list(limits),
                             bucket_counts=list(counts), global_step=int(step))


def _write_reproduce(run: RunDir, writer, bins: int) -> None:
    loss = run.table("loss")
    acc = run.table("accuracy")
    seeds: set = set()
    for df in (loss, acc, run.table("weights")):
        if df is not None:
            seeds |= set(df["seed"].unique())
    multi = len(seeds) > 1
    last_epoch = run.last_epoch()
    if loss is not None and not loss.empty:
        for (init, seed), g in loss.groupby(["init", "seed"], sort=False):
            tag = f"loss/{_run_name(init, seed, multi)}"
            for step, value in zip(g["step"].to_numpy(), g["loss"].to_numpy(dtype=float)):
                if np.isfinite(value):  # a diverged run's NaN steps are not plotted
                    writer.add_scalar(tag, float(value), int(step))
    if acc is not None and not acc.empty:
        for (init, seed, split), g in acc.groupby(["init", "seed", "split"], sort=False):
            name = _run_name(init, seed, multi)
            for rec in g.itertuples(index=False):
                writer.add_scalar(f"accuracy/{split}/{name}", float(rec.accuracy), int(rec.epoch))
                if "loss" in g.columns and np.isfinite(rec.loss):
                    writer.add_scalar(f"eval_loss/{split}/{name}", float(rec.loss), int(rec.epoch))

    hist = run.table("histograms")
    if hist is None or hist.empty:
        return
    summaries = {"weights": run.table("weights"), "features": run.table("features")}
    stages = set(hist["stage"].unique())
    for table, what in (("weights", "param"), ("features", "input")):
        h = hist[hist["table"] == table]
        summ = summaries[table]
        if h.empty:
            continue
        index = {}
        if summ is not None:
            for rec in summ.itertuples(index=False):
                index[(rec.init, rec.seed, rec.layer, getattr(rec, what), rec.stage)] = rec
        for (init, seed, layer, sub, stage), g in h.groupby(["init", "seed", "layer", what, "stage"], sort=False):
            step = layout.stage_epoch(str(stage), last_epoch)
            if step is None or (stage == layout.epoch_stage(last_epoch) and layout.AFTER in stages):
                continue  # epoch_<last> duplicates 'after' at the same step
            limits, counts = _raw_from_bins(g["left"].to_numpy(float), g["right"].to_numpy(float),
                                            g["count"].to_numpy(float))
            rec = index.get((init, seed, layer, sub, stage))
            if rec is not None:
                total, sumsq = _moments(rec.n, rec.mean, rec.std)
                n, vmin, vmax = rec.n, rec.min, rec.max
            else:  # no summary row: moments from bin centres
                centres = (g["left"].to_numpy(float) + g["right"].to_numpy(float)) / 2
                c = g["count"].to_numpy(float)
                n, total, sumsq = c.sum(), (c * centres).sum(), (c * centres**2).sum()
                vmin, vmax = float(g["left"].min()), float(g["right"].max())
            tag = f"{table}/{_run_name(init, seed, multi)}/{layer}/{sub}"
            _add_raw(writer, tag, step, limits, counts, n=n, total=total, sumsq=sumsq, vmin=vmin, vmax=vmax)


def _write_gradients(run: RunDir, writer, bins: int) -> None:
    g = run.table("gradients")
    layers = run.layer_order(g)
    # As Figure 4: the first channels of each layer (a transformer has thousands per layer).
    channels = int((run.manifest.get("config") or {}).get("channels", FIGURE4_CHANNELS))
    if g is not None:
        g = g[g["channel"] < channels]
    for layer in layers:
        for stat in ("emission", "absorption"):
            arr = run.per_sample(layer, stat)  # (N, C), memory-mapped
            if arr is not None:
                for c in range(min(arr.shape[1], channels)):
                    x = np.asarray(arr[:, c], dtype=np.float64)
                    x = x[np.isfinite(x)]
                    if x.size == 0:
                        continue
                    counts, edges = np.histogram(x, bins=bins)
                    _add_raw(writer, f"{stat}/{layer}", c, edges[1:].tolist(), counts.tolist(), n=x.size,
                             total=x.sum(), sumsq=(x * x).sum(), vmin=x.min(), vmax=x.max())
            elif g is not None:
                sub = g[(g["layer"] == layer) & (g["stat"] == stat)]
                for rec in sub.itertuples(index=False):
                    cols = [name for name, _ in _QUANTILES if hasattr(rec, name)]
                    if len(cols) < 2 or not rec.n:
                        continue
                    qs = np.array([getattr(rec, name) for name in cols], dtype=float)
                    ps = np.array([p for name, p in _QUANTILES if name in cols])
                    qs = np.maximum.accumulate(qs)
                    # bucket i spans (q_i, q_{i+1}] and holds the probability mass between them
                    counts = np.diff(ps) * rec.n
                    total, sumsq = _moments(rec.n, rec.mean, rec.std)
                    _add_raw(writer, f"{stat}/{layer}", int(rec.channel), qs[1:].tolist(), counts.tolist(),
                             n=rec.n, total=total, sumsq=sumsq, vmin=qs[0], vmax=qs[-1])


def _write_monitor(run: RunDir, writer, bins: int) -> None:
    from .monitor_events import write_monitor_events  # it builds on this module's helpers

    write_monitor_events(run, writer, bins)


def _write_compare(run: RunDir, writer, bins: int) -> None:
    table, hist = run.table("compare"), run.table("histograms")
    if table is None or hist is None:
        return
    labels = [s.get("label") for s in run.manifest.get("sources") or []]
    step_of = {label: i for i, label in enumerate(labels)}
    moments = {}
    for rec in table.itertuples(index=False):
        moments.setdefault((rec.a, rec.tensor), (rec.mean_a, rec.std_a))
        moments.setdefault((rec.b, rec.tensor), (rec.mean_b, rec.std_b))
    for (source, tensor), g in hist.groupby(["source", "tensor"], sort=False):
        left, right, count = (g[c].to_numpy(float) for c in ("left", "right", "count"))
        limits, counts = _raw_from_bins(left, right, count)
        n = count.sum()
        mean, std = moments.get((source, tensor), (np.nan, np.nan))
        if np.isfinite(mean) and np.isfinite(std):
            total, sumsq = _moments(n, mean, std)
        else:
            centres = (left + right) / 2
            total, sumsq = (count * centres).sum(), (count * centres**2).sum()
        _add_raw(writer, f"weights/{tensor}", step_of.get(source, 0), limits, counts, n=n, total=total, sumsq=sumsq,
                 vmin=left.min(), vmax=right.max())
    depth = {t: i for i, t in enumerate(dict.fromkeys(hist["tensor"]))}
    pairs = list(dict.fromkeys(zip(table["a"], table["b"])))
    for a, b in pairs:
        rows = table[(table["a"] == a) & (table["b"] == b) & (table["status"] == "compared")]
        suffix = f"/{b}" if len(pairs) > 1 else ""
        for rec in sorted(rows.itertuples(index=False), key=lambda r: depth.get(r.tensor, len(depth))):
            for col in ("rel_change", "w1", "ks"):
                value = float(getattr(rec, col))
                if np.isfinite(value):
                    writer.add_scalar(f"shift/{col}{suffix}", value, depth.get(rec.tensor, len(depth)))


#: What each kind of run writes as TensorBoard events: ``fn(run, writer, bins)``.
WRITERS = {layout.REPRODUCE: _write_reproduce, layout.GRADIENTS: _write_gradients, layout.MONITOR: _write_monitor,
           layout.COMPARE: _write_compare}


def write_tensorboard(run_dir: str | os.PathLike[str], *, bins: int = 64) -> Path:
    """Writes TensorBoard event files for a run directory under ``RUN_DIR/tb``.

    Args:
        run_dir: A ``reproduce`` or ``gradients`` run directory.
        bins: Buckets per Emission/Absorption histogram built from per-sample arrays.

    Returns:
        The ``tb`` directory.

    Raises:
        NndistError: If tensorboard is not installed (the message says ``pip install 'nndist[tb]'``),
            or the run directory or one of its tables is missing or invalid.
    """
    SummaryWriter = _summary_writer()
    run = load_run(run_dir)
    tb = run.file(layout.TB_DIR)
    tb.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".nndist-tb.tmp-", dir=tb))
    try:
        writer = SummaryWriter(log_dir=str(tmp), filename_suffix=TB_SUFFIX)
        try:
            WRITERS[run.kind](run, writer, bins)
        finally:
            writer.close()
        for old in tb.glob(f"events.out.tfevents.*{TB_SUFFIX}"):
            old.unlink()
        for new in tmp.glob("events.out.tfevents.*"):
            os.replace(new, tb / new.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return tb


def read_scalars(tb_dir: str | os.PathLike[str]) -> pd.DataFrame:
    """All scalars in ``tb_dir`` as a table (tag, step, value); for checks and notebooks."""
    from tensorboard.backend.event_processing import event_accumulator

    acc = event_accumulator.EventAccumulator(str(tb_dir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    rows = [(tag, e.step, e.value) for tag in acc.Tags()["scalars"] for e in acc.Scalars(tag)]
    return pd.DataFrame(rows, columns=["tag", "step", "value"])

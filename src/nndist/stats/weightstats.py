"""Weight distribution tables of any tensor source, and the comparison of checkpoints.

Both read a source (a weights file or folder, an ``nn.Module``, a state dict: see
:mod:`nndist.models.weightfiles`) one tensor at a time and keep only :class:`~nndist.stats.Summary`
objects, so memory stays about the largest tensor (two of them for :func:`compare`), whatever
the size of the checkpoint::

    table = weight_table("Llama-3.2-1B/", group="model.layers.*")
    ranked = compare(["before.safetensors", "after.safetensors"])

:func:`weight_table`: one row per tensor (or per group of tensors, or per dim-0 channel):
``layer`` and ``param`` (the name split at its last dot), ``shape``, ``dtype``, then
:data:`~nndist.stats.SUMMARY_COLUMNS`. Tensors are fed to their summary in chunks of
:data:`CHUNK_ELEMENTS` values, so bfloat16/float16 are converted to float32 (exactly) a chunk at
a time, never as a whole copy. Moments are accumulated in float64 and merged with the exact
pairwise formulas: chunks of fewer than 4096 values are summarised as float64 (about 1e-12
relative to numpy), larger float32 chunks by the compiled kernel of :mod:`nndist.stats` (float64
sums, 1e-9 relative; on the CPU), per-channel summaries always as float64. min and max are
exact; quantiles come from the sketch.

Grouping (``group=``):

* ``"tensor"`` (default): one row per tensor.
* ``"layer"``: tensors that share the name before their last dot (``conv1.weight`` and
  ``conv1.bias``); a top-level tensor keeps its own row.
* ``"block"``: the name up to its first all-digit component that is not the last
  (``model.layers.3``, ``layer1.0``, ``blocks.11``); a name without one groups by layer.
* a dotted glob pattern, matched one component per ``*`` (``fnmatch`` within a component): with
  ``"model.layers.*"`` every ``model.layers.<i>.<anything>`` forms the group ``model.layers.<i>``;
  names the pattern does not cover keep their own row.

A group row has ``layer`` = the group's name and ``param``, ``shape``, ``dtype`` = its members'
relative names, shapes and dtypes joined by commas; its summary is the exact merge of the
members'. Integer and bool tensors are listed (shape, dtype, empty summary), never merged. A
group whose name is also the full name of another tensor (``a.weight`` grouped as ``a`` beside a
tensor ``a``) is an error: the two rows could not be told apart.

``per_channel=True`` adds, after each row, one row per dim-0 slice (``channel`` 0, 1, ...; null
on the whole rows): output channels of a conv or linear weight, entries of a bias. In a group,
channel ``c`` merges slice ``c`` of every member, so members must share dim 0 (``layer`` groups
of weight, bias and norm statistics do; mixed ``block`` groups are refused).

:func:`compare`: see its docstring for the columns, the pairing of three or more sources, the
ranking and how one-sided tensors are reported.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ..errors import NndistError
from ..io import write_parquet, write_text
from ..progress import progress_bar
from ..models.weightfiles import TensorInfo, TensorSource, as_source
from .distances import ks_distance, wasserstein
from .summary import SUMMARY_COLUMNS, Summary

__all__ = [
    "CHUNK_ELEMENTS",
    "COMPARE_COLUMNS",
    "COMPARE_STATUSES",
    "GROUPS",
    "WEIGHT_COLUMNS",
    "compare",
    "group_key",
    "shape_str",
    "summarise_channels",
    "summarise_tensor",
    "tensor_summaries",
    "value_change",
    "weight_table",
    "write_table",
]

#: Leading columns of :func:`weight_table` (then ``channel`` with ``per_channel``, then the summary).
WEIGHT_COLUMNS: tuple[str, ...] = ("layer", "param", "shape", "dtype")
#: Columns of :func:`compare` (after ``a``, ``b`` for three or more sources; then ``status``).
COMPARE_COLUMNS: tuple[str, ...] = (
    "tensor",
    "shape_a",
    "shape_b",
    "w1",
    "ks",
    "rel_change",
    "cosine",
    "sign_flip",
    "mean_a",
    "mean_b",
    "std_a",
    "std_b",
    "kurtosis_a",
    "kurtosis_b",
)
#: Values of the ``status`` column of :func:`compare`, in ranking order.
COMPARE_STATUSES: tuple[str, ...] = ("compared", "shape mismatch", "only in a", "only in b", "not summarised")
#: Named groupings of :func:`weight_table` (anything else is a glob pattern).
GROUPS: tuple[str, ...] = ("tensor", "layer", "block")
#: Values per chunk fed to a summary or to the float64 sums of :func:`value_change`.
CHUNK_ELEMENTS = 1 << 20

# Chunks smaller than this go to Summary as float64: nndist.stats hands float32 batches of at
# least 4096 values on the CPU to its compiled float64-accumulating kernel (1e-9 relative) and
# smaller ones to a float32 path (1e-6); float64 batches are exact to about 1e-12.
_FLOAT64_BELOW = 1 << 12
# Channels summarised together (one Summary(channels=...) each): bounded sketch memory.
_CHANNEL_BLOCK = 256
# Values per update of a channel block (float64 copies of this many values).
_CHANNEL_CHUNK = 1 << 20
_INT_COLUMNS = ("channel", "n", "nonfinite")


def shape_str(shape: Sequence[int]) -> str:
    """``"64x3x3x3"``; ``""`` for a scalar (0-d) tensor."""
    return "x".join(str(int(d)) for d in shape)


# ------------------------------------------------------------------------------------ summaries
def summarise_tensor(t: torch.Tensor, summary: Summary | None = None) -> Summary:
    """All values of a floating tensor in one scalar summary, :data:`CHUNK_ELEMENTS` at a time.

    Args:
        t: any shape, any floating dtype (half/bfloat16/float8 become float32 exactly, a chunk
            at a time).
        summary: a scalar summary to add to (merging several tensors); a new one if None.

    Returns:
        the summary.
    """
    s = Summary() if summary is None else summary
    flat = t.detach().reshape(-1)
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        chunk = flat[start : start + CHUNK_ELEMENTS]
        if chunk.numel() < _FLOAT64_BELOW:
            # Below the compiled kernel's size, Summary's float32 path keeps only ~1e-6 of the
            # moments; a float64 copy of a few thousand values is cheap and exact. (It also
            # keeps Summary's float32 bucket pass, which shifts a strided view in place, off a
            # one-element tensor, where that view is not copied and a model's parameter would
            # be overwritten.)
            chunk = chunk.to(torch.float64, copy=True)
        s.update(chunk)
    return s


def summarise_channels(t: torch.Tensor, summaries: list[Summary] | None = None) -> list[Summary]:
    """Per dim-0 slice summaries of a tensor of shape (C, ...), in blocks of channels.

    Channel ``c`` is ``t[c]`` (all its values). The summaries are ``Summary(channels=256)``
    blocks (the last one smaller): block ``i`` holds channels ``256 i, 256 i + 1, ...``.

    Args:
        t: floating tensor with at least one dimension.
        summaries: blocks from an earlier call on a tensor with the same dim 0, to merge into.

    Returns:
        the blocks of summaries.

    Raises:
        NndistError: ``t`` is 0-d, or ``summaries`` were made for another number of channels.
    """
    if t.dim() == 0:
        raise NndistError("per-channel summaries need a tensor with at least one dimension, got a scalar")
    c = t.shape[0]
    rows = t.detach().reshape(c, -1)  # (C, K)
    bounds = [(c0, min(c, c0 + _CHANNEL_BLOCK)) for c0 in range(0, c, _CHANNEL_BLOCK)]
    if summaries is None:
        summaries = [Summary(channels=c1 - c0) for c0, c1 in bounds]
    elif [s.channels for s in summaries] != [c1 - c0 for c0, c1 in bounds]:
        raise NndistError(f"per-channel summaries of {sum(s.channels or 1 for s in summaries)} channels "
                          f"cannot take a tensor with {c} channels")
    for (c0, c1), s in zip(bounds, summaries):
        block = rows[c0:c1]  # (cb, K)
        step = max(1, _CHANNEL_CHUNK // (c1 - c0))
        for k0 in range(0, block.shape[1], step):
            s.update(block[:, k0 : k0 + step].T)  # (k, cb): column j feeds channel c0 + j
    return summaries


def _channel_rows(blocks: list[Summary]) -> Iterator[tuple[int, dict[str, float | int]]]:
    c = 0
    for s in blocks:
        for row in s.rows():
            yield c, row
            c += 1


@contextlib.contextmanager
def _opened(obj: Any, *, buffers: bool = False) -> Iterator[TensorSource]:
    """A source for ``obj``; closed afterwards only if it was opened here."""
    if isinstance(obj, TensorSource):
        yield obj
        return
    src = as_source(obj, buffers=buffers)
    try:
        yield src
    finally:
        src.close()


def _progress(total: int, enabled: bool, desc: str) -> Any:
    return progress_bar(total, desc, "tensor", enabled=enabled, leave=False)


def tensor_summaries(
    source: Any,
    names: Sequence[str] | None = None,
    *,
    progress: bool = False,
    buffers: bool = False,
) -> dict[str, Summary]:
    """Scalar summaries of some (default: all) floating tensors of a source, read one at a time.

    For histograms of a few tensors after :func:`compare` (``Summary.histogram``).

    Args:
        source: a path, ``nn.Module``, state dict or :class:`~nndist.models.weightfiles.TensorSource`.
        names: the tensors to summarise; default every summarised (floating) tensor.
        progress: show a progress bar over tensors.
        buffers: for a module, include persistent buffers.

    Returns:
        ``{name: Summary}`` in the order of ``names`` (integer/bool tensors are left out).

    Raises:
        NndistError: a bad source, or a name it does not hold.
    """
    with _opened(source, buffers=buffers) as src:
        wanted = [i.name for i in src if i.summarised] if names is None else list(names)
        out: dict[str, Summary] = {}
        with _progress(len(wanted), progress, "summaries") as bar:
            for name in wanted:
                if name in src and not src.infos[name].summarised:
                    bar.update()
                    continue
                out[name] = summarise_tensor(src.read(name))
                bar.update()
        return out


# ------------------------------------------------------------------------------------ grouping
def _check_group(group: str) -> None:
    if group in GROUPS:
        return
    if not isinstance(group, str) or not group or any(not part for part in group.split(".")):
        raise NndistError(
            f"group must be one of {', '.join(GROUPS)} or a dotted glob pattern such as 'model.layers.*', "
            f"got {group!r}"
        )


def group_key(name: str, group: str) -> str:
    """The row a tensor named ``name`` falls into under ``group`` (see the module docstring).

    Examples::

        group_key("model.layers.3.mlp.up_proj.weight", "layer")            # "model.layers.3.mlp.up_proj"
        group_key("model.layers.3.mlp.up_proj.weight", "block")            # "model.layers.3"
        group_key("model.layers.3.mlp.up_proj.weight", "model.layers.*")   # "model.layers.3"
        group_key("lm_head.weight", "model.layers.*")                      # "lm_head.weight"

    Raises:
        NndistError: a ``group`` that is neither a named grouping nor a valid pattern.
    """
    _check_group(group)
    parts = name.split(".")
    if group == "tensor" or len(parts) == 1:
        return name
    if group == "block":
        for i, part in enumerate(parts[:-1]):
            if part.isdigit():
                return ".".join(parts[: i + 1])
        group = "layer"
    if group == "layer":
        return ".".join(parts[:-1])
    pattern = group.split(".")
    if len(parts) > len(pattern) and all(fnmatchcase(p, q) for p, q in zip(parts, pattern)):
        return ".".join(parts[: len(pattern)])
    return name


@dataclass
class _Row:
    """One row of a weight table before it is read: a group's name and its members."""

    key: str
    members: list[TensorInfo]

    @property
    def summarised(self) -> bool:
        return self.members[0].summarised

    def labels(self) -> dict[str, str]:
        ms = self.members
        if len(ms) == 1 and ms[0].name == self.key:
            layer, _, param = self.key.rpartition(".")
        else:
            layer, param = self.key, ",".join(m.name[len(self.key) + 1 :] for m in ms)
        return {
            "layer": layer,
            "param": param,
            "shape": ",".join(shape_str(m.shape) for m in ms),
            "dtype": ",".join(dict.fromkeys(m.dtype for m in ms)),
        }


def _plan(src: TensorSource, group: str, per_channel: bool) -> list[_Row]:
    """The rows of a weight table, in the order of their first tensor, checked before any read."""
    _check_group(group)
    rows: list[_Row] = []
    groups: dict[str, _Row] = {}
    for info in src:
        if not info.summarised:
            rows.append(_Row(info.name, [info]))
            continue
        key = group_key(info.name, group)
        if key not in groups:
            groups[key] = _Row(key, [])
            rows.append(groups[key])
        groups[key].members.append(info)
    for key, row in groups.items():
        names = [m.name for m in row.members]
        if key in src and names != [key]:
            raise NndistError(
                f"{src.label}: with group={group!r} the group {key!r} ({', '.join(names[:4])}"
                f"{' ...' if len(names) > 4 else ''}) and the tensor {key!r} get the same name; use a "
                "pattern that keeps them apart, or group='tensor'"
            )
        dims = {m.shape[0] if m.shape else None for m in row.members}
        if per_channel and len(row.members) > 1 and (len(dims) > 1 or None in dims):
            raise NndistError(
                f"{src.label}: per_channel merges slice c of every tensor of a group, but group {key!r} "
                f"holds shapes {', '.join(shape_str(m.shape) or '()' for m in row.members[:6])} (dim 0 differs); "
                "use group='layer' or group='tensor' with per_channel"
            )
    return rows


def _frame(records: list[dict[str, Any]], columns: Sequence[str]) -> pd.DataFrame:
    df = pd.DataFrame.from_records(records, columns=list(columns))
    for col in df.columns:
        if col in _INT_COLUMNS:
            df[col] = df[col].astype("Int64")
        elif col in SUMMARY_COLUMNS or col in COMPARE_COLUMNS[3:]:
            df[col] = df[col].astype("float64")
    return df


def weight_table(
    source: Any,
    *,
    group: str = "tensor",
    per_channel: bool = False,
    progress: bool = False,
    buffers: bool = False,
) -> pd.DataFrame:
    """Distribution of every tensor (or group of tensors) of a checkpoint or model.

    Args:
        source: a weights file or folder (:func:`~nndist.models.weightfiles.open_weights`), an
            ``nn.Module`` (its ``named_parameters()``), a state dict, or an open source.
        group: ``"tensor"``, ``"layer"``, ``"block"`` or a glob pattern (module docstring).
        per_channel: add one row per dim-0 slice after each row.
        progress: show a progress bar over tensors.
        buffers: for an ``nn.Module``, also its persistent buffers (then the table equals the
            one of a checkpoint saved from the module).

    Returns:
        columns :data:`WEIGHT_COLUMNS`, ``channel`` (only with ``per_channel``; nullable int,
        null on whole rows), then :data:`~nndist.stats.SUMMARY_COLUMNS` (``n`` and
        ``nonfinite`` nullable ints; all null on listed integer/bool rows).

    Raises:
        NndistError: a bad source (see :mod:`nndist.models.weightfiles`), a bad ``group``, a group
            whose name collides with a tensor's, or ``per_channel`` on a group whose members
            differ in dim 0. Raised before any tensor is read.
    """
    columns = list(WEIGHT_COLUMNS) + (["channel"] if per_channel else []) + list(SUMMARY_COLUMNS)
    records: list[dict[str, Any]] = []
    with _opened(source, buffers=buffers) as src:
        plan = _plan(src, group, per_channel)
        with _progress(len(src), progress, "weights") as bar:
            for row in plan:
                labels = row.labels()
                if not row.summarised:
                    records.append(labels)
                    bar.update()
                    continue
                whole = Summary()
                blocks: list[Summary] | None = None
                for info in row.members:
                    t = src.read(info.name)
                    summarise_tensor(t, whole)
                    if per_channel and t.dim() > 0:
                        blocks = summarise_channels(t, blocks)
                    del t  # before the next read: one tensor resident at a time
                    bar.update()
                records.append({**labels, **whole.rows()[0]})
                for c, stats in _channel_rows(blocks or []):
                    records.append({**labels, "channel": c, **stats})
    return _frame(records, columns)


# ------------------------------------------------------------------------------------ compare
def value_change(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """``(rel_change, cosine, sign_flip)`` of two tensors of one shape, with float64 sums.

    * ``rel_change = ||b - a|| / ||a||`` (Frobenius norms of the flattened tensors); ``inf``
      when ``a`` is all zeros and ``b`` is not, ``0`` when both are.
    * ``cosine = <a, b> / (||a|| ||b||)``, clipped to [-1, 1]; NaN if either is all zeros.
    * ``sign_flip``: the fraction of all entries whose signs are strictly opposite
      (``a_i > 0 > b_i`` or ``a_i < 0 < b_i``). A zero has no sign: an entry that becomes or
      stops being zero is not a flip (so zero-initialised tensors do not count as flipped).

    NaN values make ``rel_change`` and ``cosine`` NaN. The sums run over chunks of
    :data:`CHUNK_ELEMENTS` values converted to float64, so memory is bounded by the inputs.

    Raises:
        NndistError: if the shapes differ.
    """
    if a.shape != b.shape:
        raise NndistError(f"value_change needs tensors of one shape, got {shape_str(a.shape)} and {shape_str(b.shape)}")
    fa, fb = a.detach().reshape(-1), b.detach().reshape(-1)
    n = fa.numel()
    ss_a = ss_b = dot = ss_d = 0.0
    flips = 0
    for start in range(0, n, CHUNK_ELEMENTS):
        x = fa[start : start + CHUNK_ELEMENTS].to(torch.float64)
        y = fb[start : start + CHUNK_ELEMENTS].to(torch.float64)
        d = y - x
        ss_a += float(torch.dot(x, x))
        ss_b += float(torch.dot(y, y))
        dot += float(torch.dot(x, y))
        ss_d += float(torch.dot(d, d))
        flips += int(torch.count_nonzero((x > 0) & (y < 0))) + int(torch.count_nonzero((x < 0) & (y > 0)))
        del x, y, d
    if not (math.isfinite(ss_a) and math.isfinite(ss_d)):
        rel = math.nan
    elif ss_a > 0:
        rel = math.sqrt(ss_d) / math.sqrt(ss_a)
    else:
        rel = 0.0 if ss_d == 0 else math.inf
    if ss_a > 0 and ss_b > 0 and all(math.isfinite(v) for v in (ss_a, ss_b, dot)):
        cos = min(1.0, max(-1.0, dot / (math.sqrt(ss_a) * math.sqrt(ss_b))))
    else:
        cos = math.nan
    return rel, cos, (flips / n if n else math.nan)


@dataclass
class _Side:
    """One source's view of a tensor in a comparison."""

    info: TensorInfo | None = None
    tensor: torch.Tensor | None = None
    summary: Summary | None = None

    @classmethod
    def read(cls, src: TensorSource, name: str) -> _Side:
        if name not in src:
            return cls()
        info = src.infos[name]
        if not info.summarised:
            return cls(info)
        t = src.read(name)
        return cls(info, t, summarise_tensor(t))


def _compare_row(name: str, a: _Side, b: _Side) -> dict[str, Any]:
    row: dict[str, Any] = {
        "tensor": name,
        "shape_a": None if a.info is None else shape_str(a.info.shape),
        "shape_b": None if b.info is None else shape_str(b.info.shape),
    }
    for suffix, side in (("a", a), ("b", b)):
        if side.summary is not None:
            row[f"mean_{suffix}"] = float(side.summary.mean)
            row[f"std_{suffix}"] = float(side.summary.std)
            row[f"kurtosis_{suffix}"] = float(side.summary.kurtosis)
    if a.info is None:
        row["status"] = "only in b"
    elif b.info is None:
        row["status"] = "only in a"
    elif a.summary is None or b.summary is None:
        row["status"] = "not summarised"
    else:
        row["w1"] = float(wasserstein(a.summary, b.summary))
        row["ks"] = float(ks_distance(a.summary, b.summary))
        if a.info.shape == b.info.shape:
            assert a.tensor is not None and b.tensor is not None
            row["rel_change"], row["cosine"], row["sign_flip"] = value_change(a.tensor, b.tensor)
            row["status"] = "compared"
        else:
            row["status"] = "shape mismatch"
    return row


def _labels(srcs: Sequence[TensorSource], labels: Sequence[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(srcs):
            raise NndistError(f"compare got {len(labels)} labels for {len(srcs)} sources; pass one label per source")
        return [str(x) for x in labels]
    out = [s.label for s in srcs]
    return [f"{x} ({i + 1})" if out.count(x) > 1 else x for i, x in enumerate(out)]


def compare(
    sources: Sequence[Any],
    *,
    labels: Sequence[str] | None = None,
    against: str = "first",
    progress: bool = False,
    buffers: bool = False,
    on_summary: Callable[[int, str, Summary], None] | None = None,
) -> pd.DataFrame:
    """How the tensors of two or more checkpoints differ, ranked most changed first.

    Each tensor name is handled once: its tensor is read from each source in turn, compared
    and freed, so at most two tensors are resident.

    Pairs. Two sources are compared A vs B. With three or more, ``against="first"`` (default)
    compares each later source with the first (A-B, A-C, ...: drift from a reference, e.g.
    initialisation), ``against="previous"`` each with the one before (A-B, B-C, ...: steps of a
    training run); the columns ``a`` and ``b`` then name the pair's sources (labels).

    Columns: (``a``, ``b``), :data:`COMPARE_COLUMNS` and ``status``. ``w1`` (Wasserstein-1) and
    ``ks`` (two-sample KS at the bucket edges) compare the two value distributions
    (:func:`~nndist.stats.wasserstein`, :func:`~nndist.stats.ks_distance`); mean, std and
    excess kurtosis of each side are exact; ``rel_change``, ``cosine`` and ``sign_flip``
    (:func:`value_change`) compare the values entry by entry and need equal shapes. Nothing is
    dropped; ``status`` says what a row holds:

    * ``"compared"``: every column.
    * ``"shape mismatch"``: both shapes, the distribution and moment columns; no value columns.
    * ``"only in a"`` / ``"only in b"``: the present side's shape and moments, the rest null.
    * ``"not summarised"``: an integer or bool tensor on either side: shapes (and the moments of
      a floating side) only.

    Ranking (within each pair, pairs in order): status in that order; ``"compared"`` rows by
    ``rel_change`` descending (``inf``, a tensor that was all zeros, first; NaN last), ties by
    ``w1``; ``"shape mismatch"`` rows by ``w1`` descending; the rest in source order.

    Args:
        sources: two or more paths, ``nn.Module``\\ s, state dicts or open sources.
        labels: names of the sources in the ``a``/``b`` columns; default their labels (paths).
        against: ``"first"`` or ``"previous"``.
        progress: show a progress bar over tensor names.
        buffers: for ``nn.Module`` sources, include persistent buffers.
        on_summary: called as ``on_summary(source_index, name, summary)`` once for every
            floating tensor of every source that takes part in a pair, when it is read (to keep
            its histogram without reading the tensor again).

    Returns:
        the ranked table (a fresh 0..n-1 index).

    Raises:
        NndistError: fewer than two sources, a bad ``against`` or labels, or a bad source.
    """
    sources = list(sources)
    if len(sources) < 2:
        raise NndistError(f"compare needs two or more weights sources (A B [C ...]), got {len(sources)}")
    if against not in ("first", "previous"):
        raise NndistError(f"against must be 'first' or 'previous', got {against!r}")
    pairs = [(0 if against == "first" else j - 1, j) for j in range(1, len(sources))]
    records: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        srcs = [stack.enter_context(_opened(s, buffers=buffers)) for s in sources]
        names = _labels(srcs, labels)
        order = list(dict.fromkeys(n for s in srcs for n in s.names()))
        with _progress(len(order), progress, "compare") as bar:
            for position, name in enumerate(order):
                sides: dict[int, _Side] = {}
                for p, (i, j) in enumerate(pairs):
                    if name not in srcs[i] and name not in srcs[j]:
                        continue
                    for k in [k for k in sides if k not in (i, j)]:
                        del sides[k]  # free it before the next read
                    for k in (i, j):
                        if k not in sides:
                            sides[k] = _Side.read(srcs[k], name)
                            if on_summary is not None and sides[k].summary is not None:
                                on_summary(k, name, sides[k].summary)
                    row = _compare_row(name, sides[i], sides[j])
                    records.append({"a": names[i], "b": names[j], "_pair": p, "_order": position, **row})
                del sides
                bar.update()
    df = _frame(records, ["a", "b", "_pair", "_order", *COMPARE_COLUMNS, "status"])
    df["_rank"] = df["status"].map({s: i for i, s in enumerate(COMPARE_STATUSES)})
    mismatch = df["status"] == "shape mismatch"
    df["_w1"] = df["w1"].where(df["status"].eq("compared") | mismatch)
    df = df.sort_values(
        ["_pair", "_rank", "rel_change", "_w1", "_order"],
        ascending=[True, True, False, False, True],
        na_position="last",
        kind="stable",
    )
    keep = (["a", "b"] if len(sources) > 2 else []) + list(COMPARE_COLUMNS) + ["status"]
    return df[keep].reset_index(drop=True)


# ------------------------------------------------------------------------------------ output
def write_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Writes a table atomically as ``.csv`` or ``.parquet`` (by suffix).

    Raises:
        NndistError: another suffix, or an unwritable path.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        write_text(path, table.to_csv(index=False))
    elif suffix == ".parquet":
        write_parquet(path, table)
    else:
        raise NndistError(f"{path}: tables are written as .csv or .parquet; give the file one of those suffixes")
    return path

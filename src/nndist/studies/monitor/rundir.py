"""A monitor's run directory: opening it (new, replaced, resumed, refused), one step's rows, closing.

Opening ``out``:

* missing or empty: a new run;
* a finished monitor run: replaced (only the files a monitor run consists of are removed; other
  files in the folder are left alone), or continued with ``resume=True``;
* an unfinished monitor run (``status`` ``running`` in its manifest: still being written, or its
  script was killed): continued with ``resume=True``, else an error;
* another kind of run, or a folder with other files and no manifest: an error.

Continuing a run first finishes or undoes a compaction that a kill interrupted, then turns
compacted tables back into parts (one per step), so a replayed step replaces its part.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import NndistError
from ...io import clean_temporaries
from ...results import RunWriter, layout
from ...results.parts import PartTables
from ...stats import SUMMARY_COLUMNS, Summary
from ...stats.tables import scalar_columns

__all__ = ["HISTOGRAM_OCTAVE_BINS", "TABLES", "MonitorRun", "step_tables"]

#: The tables of a monitor run, written one part per logging step.
TABLES = ("weights", "grads", "features", "gradients", "histograms")
#: Buckets per octave of the stored histograms: every 8th global edge of the summaries' 64.
HISTOGRAM_OCTAVE_BINS = 8

Key = tuple[str, str, str | None]  # (table, layer, param or stat)


class MonitorRun:
    """The run directory of one monitor (rank 0 only).

    Args:
        path: ``out``.
        resume: continue a monitor run found there.

    Attributes:
        previous: the manifest of the run being continued, else None.
        last_step: the last recorded step of the run being continued, else None.

    Raises:
        NndistError: see the module docstring; nothing in the folder is changed then.
    """

    def __init__(self, path: str | Path, *, resume: bool) -> None:
        self.path = Path(path)
        self.writer = RunWriter(self.path, layout.MONITOR)
        self.parts = PartTables(self.path, layout.MONITOR, TABLES)
        self.previous: dict[str, Any] | None = None
        self.last_step: int | None = None
        out = self.path
        if out.exists() and not out.is_dir():
            raise NndistError(f"out={str(out)!r} exists and is not a directory; choose another out")
        entries = list(out.iterdir()) if out.is_dir() else []
        if entries:
            manifest = self.writer.read_manifest()
            if manifest is None:
                what = "an unreadable manifest.json" if self.writer.file(layout.MANIFEST).exists() else "files that are not an nndist run"
                raise NndistError(f"out={str(out)!r} holds {what}; choose an empty or new folder for the monitor")
            if manifest.get("kind") != layout.MONITOR:
                raise NndistError(f"out={str(out)!r} holds a {manifest.get('kind')!r} run, not a monitor run; "
                                  "choose another out")
            if resume:
                self._continue(manifest)
            elif manifest.get("status") != "finished":
                last = (manifest.get("steps") or {}).get("last")
                raise NndistError(f"out={str(out)!r} holds an unfinished monitor run (status {manifest.get('status')!r}"
                                  f"{'' if last is None else f', last step {last}'}); pass resume=True to continue it "
                                  "or choose another out")
            else:
                self._remove_run()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NndistError(f"out={str(out)!r} cannot be created ({exc.strerror}); choose another out") from None
        if not os.access(out, os.W_OK | os.X_OK):
            raise NndistError(f"out={str(out)!r} is not writable; choose another out")

    def _continue(self, manifest: dict[str, Any]) -> None:
        self.parts.recover()
        clean_temporaries(self.path)
        self.parts.explode()
        steps = self.parts.recorded_steps()
        self.previous = manifest
        self.last_step = steps[-1] if steps else None

    def _remove_run(self) -> None:
        """Removes the files of a finished monitor run (and nothing else)."""
        self.parts.recover()
        for name in TABLES:
            path = self.path / layout.table_file(name)
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        for rel in (layout.MANIFEST, layout.REPORT, layout.CLAIMS):
            self.writer.file(rel).unlink(missing_ok=True)
        shutil.rmtree(self.writer.file(layout.FIGURES_DIR), ignore_errors=True)
        tb = self.writer.file(layout.TB_DIR)
        if tb.is_dir():
            for events in tb.glob("events.out.tfevents.*.nndist-tables"):
                events.unlink()

    def write_step(self, step: int, tables: Mapping[str, Any]) -> None:
        """One logging step's tables (see :func:`step_tables`), durable when this returns."""
        self.parts.write_step(step, tables)

    def close(self) -> None:
        """Compacts every table into its single file."""
        self.parts.compact()


class _Chunks:
    """A table's columns built chunk by chunk (arrays or lists of equal length), joined once."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.chunks: dict[str, list[Any]] = {c: [] for c in self.names}
        self.rows = 0

    def add(self, rows: int, columns: Mapping[str, Any]) -> None:
        """``columns``: an array (numpy or pyarrow) or list of ``rows`` values, or one value repeated
        (an int as int64: pyarrow reads an object array value by value, 1.2 ms for the step
        column of a step's 22K histogram rows)."""
        import pyarrow as pa

        for c in self.names:
            v = columns[c]
            if not isinstance(v, (list, np.ndarray, pa.Array)):
                v = np.full(rows, v, dtype=np.int64 if type(v) is int else object)
            self.chunks[c].append(v)
        self.rows += rows

    def joined(self) -> dict[str, Any]:
        return {c: vs[0] if len(vs) == 1 else
                np.concatenate([np.asarray(v, dtype=object) if not isinstance(v, np.ndarray) else v for v in vs])
                if any(isinstance(v, np.ndarray) for v in vs) else [x for v in vs for x in v]
                for c, vs in self.chunks.items()}


def _channel_rows(out: _Chunks, s: Summary, keys: dict[str, Any]) -> None:
    rows = s.rows()
    out.add(len(rows), {**keys, "channel": list(range(len(rows))), **{c: [r[c] for r in rows] for c in SUMMARY_COLUMNS}})


def step_tables(parts: PartTables, step: int, keys: Sequence[Key], whole: Mapping[Hashable, Summary],
                channels: Mapping[Hashable, Summary]) -> dict[str, Any]:
    """One logging step's rows of every table, as pyarrow tables.

    Args:
        parts: the run's part tables (their schemas).
        step: the step.
        keys: ``(table, layer, param or stat)`` in row order; each key's scalar summary (in
            ``whole``) gives a row with a null channel and a histogram, its per-channel summary
            (in ``channels``) one row per channel. Keys of the ``gradients`` table have
            per-channel summaries only.
        whole: scalar summaries by key.
        channels: per-channel summaries by key.
    """
    out = {name: _Chunks(parts.schemas[name].names) for name in TABLES}
    present = [k for k in keys if k in whole]
    summary, hists = scalar_columns([whole[k] for k in present], HISTOGRAM_OCTAVE_BINS) if present else ({}, [])
    for table in ("weights", "grads", "features"):  # the whole-tensor rows of a table at once
        rows = [i for i, k in enumerate(present) if k[0] == table]
        if rows:
            subs = [present[i][2] for i in rows]
            out[table].add(len(rows), {"step": step, "layer": [present[i][1] for i in rows], "param": subs,
                                       "channel": [None] * len(rows), **{c: summary[c][rows] for c in SUMMARY_COLUMNS}})
    if hists:
        import pyarrow as pa

        sizes = np.array([h[0].size for h in hists])
        owner = pa.array(np.repeat(np.arange(len(present)), sizes))  # (table, layer, param) of each key, per bucket
        out["histograms"].add(int(sizes.sum()), {
            "step": step, **{name: pa.array([k[j] for k in present], type=parts.schemas["histograms"].field(name).type).take(owner)
                             for j, name in enumerate(("table", "layer", "param"))},
            **{name: np.concatenate([h[j] for h in hists]) for j, name in enumerate(("left", "right", "count"))}})
    for table, layer, sub in keys:
        if (table, layer, sub) in channels:
            key_cols = {"step": step, "layer": layer, "param": sub, "stat": sub}
            _channel_rows(out[table], channels[(table, layer, sub)], key_cols)
    return {name: parts.arrow(name, chunks.joined()) for name, chunks in out.items() if chunks.rows}


def layer_info(layers: Sequence[Any], channel_dims: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """The manifest's ``layers``: type, parameter names and shapes, channel dim of the output."""
    return {layer.name: {"type": layer.type, "params": {p: list(t.shape) for p, t in layer.params},
                         "channel_dim": channel_dims[layer.name]} for layer in layers}

"""``nndist compare``: how the tensors of two or more checkpoints differ, as a run directory.

Each source is named by a string, resolved in this order:

* an existing **run directory** (it holds ``manifest.json``): a ``reproduce`` run stands for
  two sources, its first run's ``before`` and ``after`` checkpoints
  (``checkpoints/<run key>/{before,after}.safetensors``, the first run of the manifest's
  ``runs``). ``RUN_DIR:<run key>`` picks another run (still before and after);
  ``RUN_DIR:<run key>:<stage>`` one checkpoint, ``RUN_DIR::<stage>`` the first run's. A
  ``gradients`` run stands for the weights file it measured (``config.weights``).
* an existing **weights file or folder**: anything :func:`~nndist.models.weightfiles.open_weights`
  reads (``.safetensors``, a sharded Hugging Face folder or its index, ``.pt/.pth/.bin``, ``.npz``).
* a **model name** of the registry (``paper_cnn``, ``cifar_resnet20``, ``torchvision:resnet18``):
  the model randomly initialised with ``init`` (PyTorch's default when None) from ``seed``;
  ``NAME@INIT`` gives that source its own scheme. Its tensors are its ``state_dict()``
  (parameters and buffers), as a checkpoint of it holds.

The sources are compared as :func:`~nndist.stats.weightstats.compare` does (A-B; with three or
more, each against the first or the previous) and the run directory gets ``compare.parquet`` (the
ranked table, with the pair's labels in ``a`` and ``b``), ``histograms.parquet`` (every summarised
tensor of every source, on the summaries' fixed edges, read in the same pass), the manifest
(sources, pairs, counts per status), figures and the report.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import NndistError, UnknownNameError
from ..inits import init_model
from ..models import MODELS, TORCHVISION_PREFIX, build_model
from ..models.registry import get_model_spec, is_path_like
from ..models.weightfiles import ModuleSource, TensorSource, open_weights
from ..report import draw_figures, finish_run_directory
from ..results import RunWriter, layout, load_run, utc_now, versions
from ..stats import Summary
from ..stats.weightstats import COMPARE_STATUSES, compare

__all__ = ["DEFAULT_TOP", "CompareSource", "open_source", "resolve_sources", "run_compare"]

#: Tensors drawn in the overlaid-histogram figure (the most changed ones).
DEFAULT_TOP = 8
_SEP = ":"
_HINT = ("pass a weights file or folder, a run directory (RUN_DIR, RUN_DIR:<run key>, "
         "RUN_DIR:<run key>:<stage>) or a model name with --init")


@dataclass(frozen=True)
class CompareSource:
    """One side of a comparison, resolved from the string that named it.

    Attributes:
        spec: the string as given (a run directory's expansion gets its own spec).
        label: how the source is named in the tables (``a``, ``b``, ``source``).
        kind: ``"file"`` (a weights file or folder), ``"model"`` (a randomly initialised model).
        path: the weights file or folder (kind ``file``).
        model, init, seed: the model name, init scheme (None: PyTorch's default) and seed (``model``).
        run: the run directory it was taken from, if any.
    """

    spec: str
    label: str
    kind: str
    path: str | None = None
    model: str | None = None
    init: str | None = None
    seed: int = 0
    run: str | None = None


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / layout.MANIFEST).is_file()


def _split_run_spec(spec: str) -> tuple[Path, str, str] | None:
    """``RUN_DIR[:key[:stage]]`` -> (run dir, key, stage) when the part before is a run directory."""
    for n in (1, 2):
        parts = spec.rsplit(_SEP, n)
        if len(parts) == n + 1 and _is_run_dir(Path(parts[0])):
            key, stage = (parts[1], "") if n == 1 else (parts[1], parts[2])
            return Path(parts[0]), key, stage
    return None


def _run_sources(root: Path, spec: str, key: str, stage: str) -> list[CompareSource]:
    run = load_run(root)
    if run.kind == layout.GRADIENTS:
        weights = (run.manifest.get("config") or {}).get("weights")
        if key or stage or not weights or not is_path_like(weights):
            raise NndistError(
                f"{root} is a gradients run{'' if weights else ' of a randomly initialised model'}: it stands for the "
                f"weights file it measured ({weights or 'none'}); pass that file, or a reproduce run"
            )
        return [CompareSource(spec, spec, "file", path=str(weights), run=str(root))]
    if run.kind != layout.REPRODUCE:
        raise NndistError(f"{root} is a {run.kind} run, which keeps no checkpoints to compare; {_HINT}")
    keys = list(run.manifest.get("runs") or {})
    if not keys and run.file(layout.CHECKPOINTS_DIR).is_dir():
        keys = sorted(p.name for p in run.file(layout.CHECKPOINTS_DIR).iterdir() if p.is_dir())
    if not keys:
        raise NndistError(f"{root}: the run has no runs in its manifest and no {layout.CHECKPOINTS_DIR}/; rerun it")
    key = key or keys[0]
    if key not in keys:
        raise NndistError(f"{root} has no run {key!r}; its runs: {', '.join(keys)} (RUN_DIR:<run key>[:<stage>])")
    stages = [stage] if stage else [layout.BEFORE, layout.AFTER]
    out = []
    for st in stages:
        if st not in (layout.BEFORE, layout.AFTER):
            raise NndistError(f"{root}: stage {st!r} has no checkpoint; checkpoints are kept at {layout.BEFORE} and {layout.AFTER}")
        file = run.file(layout.checkpoint_file(key, st))
        if not file.is_file():
            raise NndistError(
                f"{root}: {layout.checkpoint_file(key, st)} is missing (the run stopped before it was written); "
                f"finish it with nndist reproduce --resume {root}, or pass a checkpoint file"
            )
        label = f"{root}{_SEP}{key}{_SEP}{st}"
        out.append(CompareSource(label, label, "file", path=str(file), run=str(root)))
    return out


def _model_source(spec: str, init: str | None, seed: int) -> CompareSource:
    name, _, own_init = spec.partition("@")
    named = name in MODELS or name.startswith(TORCHVISION_PREFIX)
    if not named and is_path_like(spec):
        raise NndistError(f"{spec} does not exist; {_HINT}")
    try:
        get_model_spec(name)
    except UnknownNameError as exc:
        raise UnknownNameError(f"{spec} is neither a path nor a known model: {exc}") from None
    scheme = own_init or init
    label = f"{name} ({scheme or 'default init'}, seed {seed})"
    return CompareSource(spec, label, "model", model=name, init=scheme, seed=seed)


def resolve_sources(specs: Sequence[str], *, init: str | None = None, seed: int = 0) -> list[CompareSource]:
    """The sources that the strings ``specs`` name (see the module docstring).

    Args:
        specs: weights files or folders, run directories (``RUN_DIR[:<run key>[:<stage>]]``),
            model names (``NAME`` or ``NAME@INIT``).
        init: the init scheme of model-name sources without ``@INIT``.
        seed: the seed of model-name sources.

    Returns:
        the sources in order, a bare run directory expanded to two; labels made unique.

    Raises:
        NndistError: a string that names nothing, a run without the checkpoint asked for, an
            unknown model or init scheme, or fewer than two sources in all.
    """
    out: list[CompareSource] = []
    for spec in (str(s) for s in specs):
        path = Path(spec)
        if _is_run_dir(path):
            out += _run_sources(path, spec, "", "")
        elif path.exists():
            out.append(CompareSource(spec, spec, "file", path=spec))
        elif (split := _split_run_spec(spec)) is not None:
            out += _run_sources(split[0], spec, split[1], split[2])
        else:
            out.append(_model_source(spec, init, seed))
    if len(out) < 2:
        raise NndistError(
            f"compare needs two or more sources, got {len(out)} ({', '.join(s.label for s in out) or 'none'}); "
            "pass A B [C ...] (a run directory alone stands for its before and after checkpoints)"
        )
    labels = [s.label for s in out]
    return [
        s if labels.count(s.label) == 1 else CompareSource(**{**asdict(s), "label": f"{s.label} ({i + 1})"})
        for i, s in enumerate(out)
    ]


def open_source(source: CompareSource) -> TensorSource:
    """The tensors of a source: the opened weights file, or the built and initialised model.

    Raises:
        NndistError: a bad weights file (see :mod:`nndist.models.weightfiles`), an unknown init.
    """
    if source.kind == "file":
        assert source.path is not None
        return open_weights(source.path)
    assert source.model is not None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(source.seed)  # PyTorch's default init (and biases) draw from it
        model = build_model(source.model)
        if source.init is not None:
            init_model(model, source.init, generator=source.seed)
    return ModuleSource(model, buffers=True, label=source.label)


@dataclass
class _Histograms:
    """Histogram rows of every summary compare reads: (source, tensor, left, right, count)."""

    labels: list[str]
    parts: list[pd.DataFrame] = field(default_factory=list)

    def __call__(self, index: int, name: str, summary: Summary) -> None:
        edges, counts = summary.histogram()
        keep = np.flatnonzero(counts)
        if keep.size == 0:
            return
        self.parts.append(pd.DataFrame({
            "source": self.labels[index], "tensor": name,
            "left": edges[keep].astype(np.float64), "right": edges[keep + 1].astype(np.float64),
            "count": counts[keep].astype(np.int64),
        }))

    def table(self) -> pd.DataFrame:
        if not self.parts:
            return pd.DataFrame({"source": [], "tensor": [], "left": [], "right": [], "count": []})
        return pd.concat(self.parts, ignore_index=True)


def _describe(source: CompareSource, src: TensorSource) -> dict[str, Any]:
    infos = list(src.infos.values())
    entry: dict[str, Any] = {k: v for k, v in asdict(source).items() if v is not None}
    entry.update({
        "tensors": len(infos),
        "summarised": sum(i.summarised for i in infos),
        "values": int(sum(i.numel for i in infos)),
    })
    if getattr(src, "prefix", ""):
        entry["prefix_stripped"] = src.prefix
    files = getattr(src, "files", None)
    if files and len(files) > 1:
        entry["files"] = [str(f) for f in files]
    return entry


def run_compare(
    sources: Sequence[str],
    out_dir: str | os.PathLike[str] = "runs/compare",
    *,
    init: str | None = None,
    seed: int = 0,
    against: str = "first",
    top: int = DEFAULT_TOP,
    overwrite: bool = False,
    progress: bool = True,
    report: bool = True,
) -> Path:
    """Compares two or more checkpoints tensor by tensor and writes a ``compare`` run directory.

    Tensors are read one at a time from each source (at most two resident), so two 2 GB
    checkpoints compare in memory about their largest tensor.

    Args:
        sources: strings naming the sources (see :func:`resolve_sources`).
        out_dir: the run directory (files in ``docs/CONTRACTS.md``).
        init: init scheme of model-name sources without ``@INIT``.
        seed: seed of model-name sources.
        against: with three or more sources, compare each with the ``"first"`` or the ``"previous"``.
        top: how many of the most changed tensors the histogram figure overlays.
        overwrite: replace a non-empty ``out_dir``.
        progress: show a progress bar over tensors.
        report: also draw the figures and write TensorBoard events, claims and the report.

    Returns:
        the run directory.

    Raises:
        NndistError: a bad source or file (before anything is written), a bad ``against`` or
            ``top``, or an output directory that may not be written.
    """
    if int(top) < 1:
        raise NndistError(f"--top must be at least 1, got {top}")
    if against not in ("first", "previous"):
        raise NndistError(f"--against must be 'first' or 'previous', got {against!r}")
    resolved = resolve_sources(sources, init=init, seed=seed)
    started = utc_now()
    opened: list[TensorSource] = []
    writer = RunWriter(out_dir, layout.COMPARE)
    try:
        for s in resolved:
            opened.append(open_source(s))
        labels = [s.label for s in resolved]
        writer.prepare(overwrite=overwrite, resume=False)
        manifest: dict[str, Any] = {
            "config": {"sources": [str(s) for s in sources], "init": init, "seed": int(seed), "against": against,
                       "top": int(top)},
            "versions": versions(),
            "sources": [_describe(s, src) for s, src in zip(resolved, opened)],
            "started": started,
            "finished": None,
        }
        writer.write_manifest(manifest)
        hist = _Histograms(labels)
        t0 = time.perf_counter()
        table = compare(opened, labels=labels, against=against, progress=progress, on_summary=hist)
        seconds = time.perf_counter() - t0
        for src in opened:
            src.close()
        opened = []
        if "a" not in table:  # two sources: the library leaves the pair's labels out
            table.insert(0, "b", labels[1])
            table.insert(0, "a", labels[0])
        writer.write_table("compare", table)
        writer.write_table("histograms", hist.table())
        pairs = list(dict.fromkeys(zip(table["a"], table["b"])))
        counts = table["status"].value_counts()
        manifest.update({
            "pairs": [list(p) for p in pairs],
            "counts": {s: int(counts.get(s, 0)) for s in COMPARE_STATUSES},
            "timings": {"compare": seconds},
        })
        writer.write_manifest(manifest)
        writer.commit()  # an --overwrite run's results replace the old ones only now
        if report:
            draw_figures(writer.path)
            finish_run_directory(writer.path)
        manifest["finished"] = utc_now()
        writer.write_manifest(manifest)
    finally:
        for src in opened:
            src.close()
        writer.release()
    return writer.path

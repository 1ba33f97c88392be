"""Writing a run directory: the one writer every study (and the test fixtures) goes through.

:class:`RunWriter` knows where each file goes (:mod:`.layout`), which columns each table has and
how its rows are ordered (:mod:`.schema`), and writes every file atomically (temporary file, then
rename). It also prepares the directory (new, ``--overwrite`` or ``--resume``) and records the
package versions and times of every manifest.
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._version import __version__
from ..errors import NndistError
from ..io import atomic_path, clean_temporaries, write_json, write_parquet
from ..models import save_checkpoint
from ..stats import kernels
from . import layout
from .schema import TABLES
from .state import load_state, save_state

__all__ = ["RunWriter", "utc_now", "versions"]


def versions() -> dict[str, str]:
    """Versions of nndist, Python and the libraries that shape the results (for every manifest)."""
    import matplotlib
    import scipy
    import torchvision

    return {
        "nndist": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "numba": getattr(kernels.numba, "__version__", "not installed"),
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


def utc_now() -> str:
    """The time, for manifests (ISO 8601, UTC, seconds)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _ordered(df: pd.DataFrame, first: str | None, run_order: Mapping[tuple[str, int], int] | None) -> pd.DataFrame:
    """Rows by their ``first`` key (stage, step, epoch), then by the run's place in the config.

    Rows then come out the same whatever the number of processes that produced them.
    """
    if df.empty or run_order is None or "init" not in df:
        return df.reset_index(drop=True)
    keys = pd.DataFrame({"run": [run_order.get((i, s), -1) for i, s in zip(df["init"], df["seed"])]}, index=df.index)
    if first == "stage":
        keys["first"] = [layout.stage_order(v) for v in df["stage"]]
    elif first is not None:
        keys["first"] = df[first].to_numpy()
    order = keys.sort_values(["first", "run"] if first else ["run"], kind="stable").index
    return df.loc[order].reset_index(drop=True)


class RunWriter:
    """Writes the files of one run directory.

    Args:
        path: the run directory.
        kind: the kind of run (:data:`nndist.results.layout.KINDS`), written into the manifest.
    """

    def __init__(self, path: str | Path, kind: str) -> None:
        if kind not in layout.KINDS:
            raise ValueError(f"unknown run kind {kind!r}; known: {', '.join(layout.KINDS)}")
        self.path = Path(path)
        self.kind = kind

    def file(self, rel: str) -> Path:
        """The absolute path of a file named by :mod:`.layout`."""
        return self.path / rel

    # ------------------------------------------------------------------ the directory
    def prepare(self, *, overwrite: bool, resume: bool) -> dict[str, Any] | None:
        """Checks that the directory may be written: new, empty, or allowed by ``overwrite``/``resume``.

        Returns:
            The previous manifest when resuming, else None.

        Raises:
            NndistError: not a directory, not writable, not empty (without a flag), or (resume)
                no manifest or one of another kind.
        """
        out = self.path
        if out.exists() and not out.is_dir():
            raise NndistError(f"output path {out} exists and is not a directory; choose another --out")
        if resume:
            manifest = self.read_manifest()
            if manifest is None:
                raise NndistError(f"--resume {out}: no {layout.MANIFEST} there, so it is not a run directory to resume")
            if manifest.get("kind") != self.kind:
                raise NndistError(f"--resume {out}: it is a {manifest.get('kind')!r} run, not a {self.kind} run")
            clean_temporaries(out)
            return manifest
        if out.exists() and any(out.iterdir()):
            if not overwrite:
                raise NndistError(f"output directory {out} is not empty; pass --overwrite to replace it or --resume to continue it")
            shutil.rmtree(out)
        try:
            out.mkdir(parents=True, exist_ok=True)
            probe = out / ".nndist-write-probe"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise NndistError(f"output directory {out} is not writable ({exc.strerror}); choose another --out") from None
        return None

    # ------------------------------------------------------------------ manifest
    def read_manifest(self) -> dict[str, Any] | None:
        """The manifest written so far (None if there is none or it is unreadable)."""
        try:
            return json.loads(self.file(layout.MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: Mapping[str, Any]) -> None:
        """Writes ``manifest.json``: ``kind`` first, then the given fields."""
        write_json(self.file(layout.MANIFEST), {"kind": self.kind, **{k: v for k, v in manifest.items() if k != "kind"}})

    # ------------------------------------------------------------------ tables
    def write_table(self, name: str, df: pd.DataFrame, run_order: Mapping[tuple[str, int], int] | None = None) -> Path:
        """Writes table ``name`` of this kind of run (:data:`nndist.results.schema.TABLES`) in order.

        Args:
            name: the table.
            df: its rows; every fixed column of the table must be there.
            run_order: ``(init, seed) -> position`` of the runs in the config (reproduce tables).

        Raises:
            ValueError: a fixed column is missing (a programming error, not a user's).
        """
        spec = TABLES[self.kind][name]
        missing = [c for c in spec.columns if c not in df.columns]
        if missing:
            raise ValueError(f"table {name} lacks the column(s) {', '.join(missing)}")
        path = self.file(layout.table_file(name))
        write_parquet(path, _ordered(df, spec.order, run_order))
        return path

    # ------------------------------------------------------------------ arrays and checkpoints
    def per_sample_array(self, layer: str, stat: str, shape: tuple[int, int], *, create: bool) -> np.memmap:
        """A (N, C) float32 per-sample array being filled (``.partial`` until :meth:`publish_per_sample`)."""
        path = self._partial(layer, stat)
        path.parent.mkdir(parents=True, exist_ok=True)
        if create or not path.exists():
            return np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        return np.load(path, mmap_mode="r+")

    def _partial(self, layer: str, stat: str) -> Path:
        final = self.file(layout.per_sample_file(layer, stat))
        return final.parent / f".{final.name}.partial"

    def publish_per_sample(self, layer: str, stat: str) -> None:
        """Renames a completed per-sample array to its final name."""
        self._partial(layer, stat).replace(self.file(layout.per_sample_file(layer, stat)))

    def write_array(self, rel: str, array: np.ndarray) -> None:
        """One ``.npy`` file."""
        with atomic_path(self.file(rel)) as tmp, open(tmp, "wb") as fh:
            np.save(fh, array)

    def write_arrays(self, rel: str, arrays: Mapping[str, np.ndarray]) -> None:
        """One ``.npz`` file of named arrays."""
        with atomic_path(self.file(rel)) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    def write_checkpoint(self, key: str, stage: str, model: nn.Module, config: Mapping[str, Any]) -> Path:
        """A run's checkpoint at a stage, as safetensors with ``config`` in the metadata."""
        return save_checkpoint(self.file(layout.checkpoint_file(key, stage)), model, config)

    # ------------------------------------------------------------------ resume state
    @property
    def state_path(self) -> Path:
        return self.file(layout.STATE_FILES[self.kind])

    def save_state(self, state: Mapping[str, Any]) -> None:
        """Writes the resume state atomically."""
        save_state(self.state_path, state)

    def load_state(self, versions: Sequence[int]) -> dict[str, Any] | None:
        """The resume state, or None if there is none (see :func:`nndist.results.state.load_state`)."""
        if not self.state_path.is_file():
            return None
        return load_state(self.state_path, versions, "training" if self.kind == layout.REPRODUCE else self.kind)

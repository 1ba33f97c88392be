"""Reading a run directory: the one reader that claims, figures, TensorBoard and the report use.

:func:`load_run` opens a directory and checks its manifest; :class:`RunDir` reads each table on
first use (a missing table is None, a table without its documented key columns an error) and
answers the questions several readers ask in the same way: the status of each run, the layer
order, a run's final training loss, a layer's per-sample arrays.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import NndistError
from . import layout
from .schema import TABLES

__all__ = ["RunDir", "load_run"]

# What a reader needs of each table: its key columns and the values it reads.
_REQUIRED: dict[str, dict[str, tuple[str, ...]]] = {
    kind: {name: spec.keys + ("n", "mean", "std") if "n" in spec.values else spec.columns for name, spec in tables.items()}
    for kind, tables in TABLES.items()
}


@dataclass
class RunDir:
    """A run directory and its manifest; tables are read on first use (missing -> None)."""

    path: Path
    manifest: dict
    _tables: dict = field(default_factory=dict, repr=False)

    @property
    def kind(self) -> str:
        return str(self.manifest.get("kind"))

    def file(self, rel: str) -> Path:
        """The absolute path of a file named by :mod:`nndist.results.layout`."""
        return self.path / rel

    def table(self, name: str) -> pd.DataFrame | None:
        """Table ``name`` (``"loss"``, ``"weights"``, ...), or None when it is absent.

        Raises:
            NndistError: If the file cannot be read or lacks a documented column.
        """
        if name not in self._tables:
            self._tables[name] = _read_table(self.file(layout.table_file(name)), _REQUIRED.get(self.kind, {}).get(name, ()))
        return self._tables[name]

    def run_status(self) -> dict[tuple[str, int], dict]:
        """(init, seed) -> manifest run entry (status, diverged_at_step)."""
        out = {}
        for key, entry in (self.manifest.get("runs") or {}).items():
            if not isinstance(entry, dict):
                continue
            init, seed = layout.parse_run_key(str(key))
            out[(str(entry.get("init", init)), int(entry.get("seed", seed)))] = entry
        return out

    def state(self, init: str, seed: int) -> str:
        """A run's status: ``done``, ``diverged``, ``running`` or ``pending`` (``done`` if unrecorded)."""
        return str(self.run_status().get((init, int(seed)), {}).get("status", "done"))

    def layer_order(self, df: pd.DataFrame | None = None) -> list[str]:
        """Layers in depth order: config.layers / manifest layers if given, else table order."""
        cfg = self.manifest.get("config") or {}
        named = cfg.get("layers") if isinstance(cfg.get("layers"), list) else None
        if named is None and isinstance(self.manifest.get("layers"), dict):
            named = list(self.manifest["layers"])
        seen = [str(x) for x in pd.unique(df["layer"])] if df is not None and "layer" in df else []  # first-seen order
        if named:
            named = [str(x) for x in named]
            return [x for x in named if not seen or x in seen] + [x for x in seen if x not in named]
        return seen

    def last_epoch(self) -> int:
        """The last training epoch recorded (0 before any)."""
        epochs = [int(t["epoch"].max()) for t in (self.table("loss"), self.table("accuracy")) if t is not None and not t.empty]
        return max(epochs, default=0)

    def final_losses(self) -> pd.DataFrame:
        """Each run's final training loss: the mean loss over the steps of its last epoch.

        Returns:
            Columns ``init``, ``seed``, ``epochs`` (its last epoch), ``final_loss`` and ``status``;
            a diverged run (or a non-finite final loss) has ``final_loss = inf``. Empty when no
            loss was recorded.
        """
        loss = self.table("loss")
        cols = ["init", "seed", "epochs", "final_loss", "status"]
        if loss is None or loss.empty:
            return pd.DataFrame(columns=cols)
        last = loss["epoch"] == loss.groupby(["init", "seed"], sort=False)["epoch"].transform("max")
        g = loss[last].groupby(["init", "seed"], sort=False)
        out = g["loss"].mean().rename("final_loss").reset_index()
        out["epochs"] = g["epoch"].max().to_numpy()
        out["status"] = [self.state(i, s) for i, s in zip(out["init"], out["seed"])]
        bad = (out["status"] == "diverged") | ~np.isfinite(out["final_loss"].to_numpy(dtype=float))
        out.loc[bad, "final_loss"] = math.inf
        return out[cols]

    def per_sample(self, layer: str, stat: str) -> np.ndarray | None:
        """A layer's per-sample (N, C) array of ``stat``, memory-mapped; None if absent.

        Raises:
            NndistError: the file is not a readable (N, C) array.
        """
        path = self.file(layout.per_sample_file(layer, stat))
        if not path.is_file():
            return None
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as exc:
            raise NndistError(f"{path} cannot be read as a .npy array ({exc}); rerun `nndist gradients`") from None
        if arr.ndim != 2:
            raise NndistError(f"{path} has shape {arr.shape}; expected (N, C) as in docs/CONTRACTS.md")
        return arr


def load_run(run_dir: str | os.PathLike[str]) -> RunDir:
    """Opens a run directory written by ``nndist reproduce`` or ``nndist gradients``.

    Raises:
        NndistError: If the directory or its manifest.json is missing or invalid; the message
            names the path and what is missing.
    """
    path = Path(run_dir)
    hint = "pass a directory written by `nndist reproduce` or `nndist gradients`"
    if not path.exists():
        raise NndistError(f"run directory {path} does not exist; {hint}")
    if not path.is_dir():
        raise NndistError(f"{path} is not a directory; {hint}")
    mpath = path / layout.MANIFEST
    if not mpath.is_file():
        raise NndistError(f"{path} is not an nndist run directory: manifest.json is missing; {hint}")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NndistError(f"{mpath} is not valid JSON ({exc}); rerun the command that wrote {path}") from None
    if not isinstance(manifest, dict) or manifest.get("kind") not in layout.KINDS:
        kind = manifest.get("kind") if isinstance(manifest, dict) else None
        expected = " or ".join(repr(k) for k in layout.KINDS)
        raise NndistError(f"{mpath} has kind {kind!r}; expected {expected} (the \"kind\" key is missing or wrong)")
    return RunDir(path=path, manifest=manifest)


def _read_table(path: Path, required: tuple[str, ...]) -> pd.DataFrame | None:
    """A table from its file, or from its folder of part files while a monitor runs (None if neither)."""
    if path.is_dir():
        if not any(layout.parse_part_step(p.name) is not None for p in path.iterdir()):
            return None
    elif not path.is_file():
        return None
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a bad file
        raise NndistError(f"{path} cannot be read as Parquet ({type(exc).__name__}: {exc}); rerun the run") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise NndistError(f"{path} lacks the column(s) {', '.join(missing)} required by docs/CONTRACTS.md")
    return df

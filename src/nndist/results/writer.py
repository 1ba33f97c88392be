"""Writing a run directory: the one writer every study (and the test fixtures) goes through.

:class:`RunWriter` knows where each file goes (:mod:`.layout`), which columns each table has and
how its rows are ordered (:mod:`.schema`), and writes every file atomically (temporary file, then
rename). It also prepares the directory (new, ``--overwrite`` or ``--resume``) and records the
package versions and times of every manifest.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import os
import platform
import shutil
import sys
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

__all__ = ["RunLock", "RunWriter", "utc_now", "versions"]


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
        self.target = Path(path)  # where the run's results end up
        self.path = self.target  # where files are written now: the staging folder of an --overwrite run
        self.kind = kind
        self._lock: RunLock | None = None

    def file(self, rel: str) -> Path:
        """The absolute path of a file named by :mod:`.layout` (in the folder being written)."""
        return self.path / rel

    # ------------------------------------------------------------------ the directory
    def prepare(self, *, overwrite: bool, resume: bool) -> dict[str, Any] | None:
        """Locks the run directory and checks that it may be written.

        A new or empty directory is written in place. With ``overwrite`` a non-empty one stays as
        it is until the new run has finished: the new run writes into a staging folder beside it
        (:func:`~nndist.results.layout.staging_dir`) and :meth:`commit` swaps it in, so an
        interrupted or killed ``--overwrite`` run leaves the old results intact. The lock
        (:class:`RunLock`) is held until :meth:`release`, or until the process dies.

        Returns:
            The previous manifest when resuming, else None.

        Raises:
            NndistError: another process holds the directory; not a directory, not writable, not
                empty (without a flag), or (resume) no manifest or one of another kind.
        """
        out = self.target
        if out.exists() and not out.is_dir():
            raise NndistError(f"output path {out} exists and is not a directory; choose another --out")
        self._lock = RunLock.acquire(out)
        try:
            _finish_interrupted_swap(out)
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
                staging = layout.staging_dir(out)
                shutil.rmtree(staging, ignore_errors=True)  # an earlier --overwrite run that did not finish
                self.path = staging
            _make_writable(self.path, out)
        except BaseException:
            self.release()
            raise
        return None

    def commit(self) -> None:
        """The run has finished: an ``--overwrite`` run's results replace the old ones now."""
        if self.path == self.target:
            return
        retired = layout.retired_dir(self.target)
        shutil.rmtree(retired, ignore_errors=True)
        os.replace(self.target, retired)
        os.replace(self.path, self.target)  # between the two renames, _finish_interrupted_swap recovers
        self.path = self.target
        shutil.rmtree(retired, ignore_errors=True)

    def release(self) -> None:
        """Releases the run directory's lock (also released by the OS if the process dies)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def remove_state(self) -> None:
        """Deletes the resume state of a completed run."""
        shutil.rmtree(self.file(layout.STATE_DIR), ignore_errors=True)

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

    def write_arrays(self, rel: str, arrays: Mapping[str, np.ndarray], *, compressed: bool = False) -> None:
        """One ``.npz`` file of named arrays (deflated with ``compressed``)."""
        with atomic_path(self.file(rel)) as tmp, open(tmp, "wb") as fh:
            (np.savez_compressed if compressed else np.savez)(fh, **arrays)

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


def _make_writable(path: Path, out: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".nndist-write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise NndistError(f"output directory {out} is not writable ({exc.strerror}); choose another --out") from None


def _finish_interrupted_swap(out: Path) -> None:
    """Completes a swap that a killed process left half done (see :meth:`RunWriter.commit`)."""
    retired, staging = layout.retired_dir(out), layout.staging_dir(out)
    if not retired.exists():
        return
    if not out.exists() and staging.exists():
        os.replace(staging, out)  # the new run had finished: its results go in
    if out.exists():
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(retired, out)  # nothing to swap in: the old results come back


class RunLock:
    """An exclusive ``flock`` on the file beside a run directory (:func:`~nndist.results.layout.lock_file`).

    The OS releases it when the process dies, so a killed run never blocks the next one. The file
    holds the owner's pid, command and start time, for the message another process gets.
    """

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self.fd = path, fd

    @classmethod
    def acquire(cls, run_dir: Path) -> "RunLock":
        """Takes the lock of ``run_dir``, or raises naming the process that holds it."""
        path = layout.lock_file(run_dir)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NndistError(f"output directory {run_dir} is not writable ({exc.strerror}); choose another --out") from None
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise NndistError(f"output directory {run_dir} is not writable ({exc.strerror}); choose another --out") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(fd, 4096).decode("utf-8", "replace")
                os.close(fd)
                raise NndistError(
                    f"output directory {run_dir} is in use by another nndist process ({_owner(owner)}); "
                    "wait for it to finish or choose another --out"
                ) from None
            # The file may have been removed by its last owner between our open and our lock.
            if os.path.exists(path) and os.fstat(fd).st_ino == os.stat(path).st_ino:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": platform.node(), "command": " ".join(sys.argv),
                                 "started": utc_now()}).encode())
        return cls(path, fd)

    def release(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _owner(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']}, {info['command']!r}, started {info['started']}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"

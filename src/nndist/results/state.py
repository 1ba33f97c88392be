"""Resume state: what a study saves to continue after being killed, and how it is encoded.

A state file is a ``torch.save`` dict that loads with ``torch.load(weights_only=True)``: tensors,
numbers, strings, lists and dicts only. Tables travel as encoded Parquet chunks
(:class:`TableChunks`): each save encodes only the rows added since the last one, so a long run's
hundreds of thousands of rows are not copied, pickled and unpickled at every epoch end. Summaries
travel as packs (:func:`nndist.stats.pack`). Earlier state versions (numpy arrays converted to
tensors by :func:`to_saveable`) are still read by :func:`from_saved`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..errors import NndistError
from ..io import atomic_path
from ..stats import Summary, pack, unpack
from .schema import columns

__all__ = [
    "TableChunks",
    "decode_chunks",
    "encode_rows",
    "from_saved",
    "load_state",
    "pack_summaries",
    "save_state",
    "to_saveable",
    "unpack_summaries",
]


def encode_rows(rows: Sequence[Mapping[str, Any]], kind: str, table: str) -> torch.Tensor:
    """Rows of ``table`` as the bytes of one Parquet file, in a uint8 tensor (loads with weights_only)."""
    buf = io.BytesIO()
    pd.DataFrame(list(rows), columns=columns(kind, table)).to_parquet(buf, index=False)
    return torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)


def decode_chunks(chunks: Sequence[torch.Tensor], kind: str, table: str) -> pd.DataFrame:
    """The rows of encoded chunks of ``table`` (of a ``kind`` of run), in order, as one DataFrame."""
    frames = [pd.read_parquet(io.BytesIO(c.numpy().tobytes())) for c in chunks]
    frames = [f for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=columns(kind, table))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


class TableChunks:
    """Append-only tables encoded incrementally: each :meth:`update` encodes only the new rows.

    A table's chunk count changes exactly when it gained rows, so a writer that remembers the
    count behind each file neither decodes nor rewrites an unchanged table.

    Args:
        kind: the kind of run whose tables these are.
        tables: the table names.
    """

    def __init__(self, kind: str, tables: Sequence[str]) -> None:
        self.kind = kind
        self.chunks: dict[str, list[torch.Tensor]] = {name: [] for name in tables}
        self.encoded: dict[str, int] = {name: 0 for name in tables}

    def update(self, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> dict[str, list[torch.Tensor]]:
        """Encodes the rows of each table past those already encoded; returns every table's chunks."""
        for name in self.chunks:
            table = rows[name]
            if len(table) > self.encoded[name]:
                self.chunks[name].append(encode_rows(table[self.encoded[name] :], self.kind, name))
                self.encoded[name] = len(table)
        return {name: list(c) for name, c in self.chunks.items()}


def pack_summaries(summaries: Mapping[tuple, Summary]) -> list[Any]:
    """``{key: Summary}`` as ``[[list(key), packed tensor], ...]`` for a state file."""
    return [[list(k), pack([s])] for k, s in summaries.items()]


def unpack_summaries(items: Sequence[Any]) -> dict[tuple, Summary]:
    """Inverse of :func:`pack_summaries`; also reads the state-dict form of earlier versions."""
    out = {}
    for k, v in items:
        out[tuple(k)] = unpack(v)[0] if isinstance(v, torch.Tensor) else Summary.from_state_dict(from_saved(v))
    return out


def to_saveable(obj: Any) -> Any:
    """numpy -> torch, so that a state loads with ``torch.load(weights_only=True)``."""
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_saveable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_saveable(v) for v in obj]
    return obj


def from_saved(obj: Any) -> Any:
    """Inverse of :func:`to_saveable`: torch -> numpy, recursively."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: from_saved(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_saved(v) for v in obj]
    return obj


def save_state(path: Path, state: Mapping[str, Any]) -> None:
    """Writes a state file atomically (temp file, then rename)."""
    with atomic_path(path) as tmp:
        torch.save(dict(state), tmp)


def load_state(path: Path, versions: Sequence[int], what: str) -> dict[str, Any]:
    """Reads a state file written by :func:`save_state`.

    Raises:
        NndistError: unreadable, or of a version not in ``versions`` (one line naming the fix).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable state is one user-facing error
        raise NndistError(f"cannot read {what} state {path} ({type(exc).__name__}); start again with --overwrite") from None
    if not isinstance(state, dict) or state.get("version") not in versions:
        raise NndistError(f"{what} state {path} was written by another nndist version; start again with --overwrite")
    return state

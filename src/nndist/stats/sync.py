"""Summaries between processes: one flat float64 tensor, one collective, exact merges.

This is the single cross-rank path for summaries: both studies and the monitor use it.
:func:`pack` puts any number of summaries into one flat float64 tensor (the fields of
:meth:`Summary.state_dict`; integer counts are exact in float64 up to 2^53), :func:`unpack`
reverses it exactly. :func:`merge_to_main` merges every rank's summaries into rank 0's with one
``gather`` (rank 0 gets the merged summaries, the others None), :func:`all_reduce` merges them on
every rank with one ``all_gather``; both pad the packs to a common length found by one tiny
``all_reduce``. Without a process group (one process) both return the inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .summary import STATE_ARRAYS, STATE_FORMAT, STATE_VERSION, Summary, SummaryError

__all__ = ["all_reduce", "merge_to_main", "pack", "unpack"]

# Leading marker of each packed summary, to catch a tensor that is not a pack.
_PACK_MAGIC = 20240917.0
_PACK_HEADER = 9  # magic, version, channels (-1 for scalar), alpha, min_abs, neg_off, Kn, pos_off, Kp


def _parts(s: Summary) -> list[np.ndarray]:
    state = s.state_dict()
    header = np.array([
        _PACK_MAGIC, STATE_VERSION, -1 if state["channels"] is None else state["channels"], state["relative_accuracy"],
        state["min_abs"], state["neg_offset"], state["neg"].shape[1], state["pos_offset"], state["pos"].shape[1],
    ], dtype=np.float64)
    return [header, *(state[name].astype(np.float64) for name in STATE_ARRAYS),
            state["neg"].reshape(-1).astype(np.float64), state["pos"].reshape(-1).astype(np.float64)]


def pack(summaries: Iterable[Summary], length: int | None = None) -> torch.Tensor:
    """Packs summaries into one flat float64 CPU tensor, exactly.

    Layout: ``[count, summary_1, summary_2, ...]`` then NaN padding up to ``length``. Each
    summary is a 9-value header (magic, version, channels or -1, alpha, min_abs, negative offset
    and width, positive offset and width), its eleven (C,) state arrays and its two stores.

    Args:
        summaries: the summaries to pack.
        length: total length to pad to with NaN; None for no padding.

    Raises:
        SummaryError: if the pack is longer than ``length``.
    """
    items = list(summaries)
    parts = [np.array([float(len(items))])]
    for s in items:
        if not isinstance(s, Summary):
            raise SummaryError(f"pack() takes Summary objects, got {type(s).__name__}")
        parts += _parts(s)
    flat = np.concatenate(parts)
    if length is not None:
        if flat.size > length:
            raise SummaryError(f"packed summaries need {flat.size} values, more than length={length}")
        flat = np.concatenate([flat, np.full(length - flat.size, np.nan)])
    return torch.from_numpy(flat)


def unpack(packed: torch.Tensor | np.ndarray) -> list[Summary]:
    """Inverse of :func:`pack` (trailing padding is ignored).

    Raises:
        SummaryError: if the data is not a pack.
    """
    flat = (packed.detach().to("cpu", torch.float64).numpy() if isinstance(packed, torch.Tensor)
            else np.asarray(packed, dtype=np.float64)).reshape(-1)

    def bad(why: str) -> SummaryError:
        return SummaryError(f"not a packed Summary tensor ({why}): pass the output of pack()")

    if flat.size == 0 or not np.isfinite(flat[0]):
        raise bad("no count")
    pos, out = 1, []
    for _ in range(int(flat[0])):
        head = flat[pos : pos + _PACK_HEADER]
        if head.size < _PACK_HEADER or head[0] != _PACK_MAGIC or head[1] != STATE_VERSION:
            raise bad("bad header")
        channels = None if int(head[2]) == -1 else int(head[2])
        c = 1 if channels is None else channels
        neg_off, kn, pos_off, kp = (int(v) for v in head[5:9])
        pos += _PACK_HEADER
        if flat.size < pos + c * (len(STATE_ARRAYS) + kn + kp):
            raise bad("truncated")
        state: dict[str, Any] = {"format": STATE_FORMAT, "version": STATE_VERSION, "channels": channels,
                                 "relative_accuracy": float(head[3]), "min_abs": float(head[4])}
        for name in STATE_ARRAYS:
            state[name], pos = flat[pos : pos + c], pos + c
        state["neg_offset"], state["neg"], pos = neg_off, flat[pos : pos + c * kn].reshape(c, kn), pos + c * kn
        state["pos_offset"], state["pos"], pos = pos_off, flat[pos : pos + c * kp].reshape(c, kp), pos + c * kp
        out.append(Summary.from_state_dict(state))
    return out


def _padded_pack(summaries: Sequence[Summary], group: Any, device: torch.device) -> torch.Tensor:
    local = pack(summaries)
    size = torch.tensor([local.numel()], dtype=torch.int64, device=device)
    dist.all_reduce(size, op=dist.ReduceOp.MAX, group=group)
    return pack(summaries, length=int(size.item())).to(device)


def _merged(per_rank: list[list[Summary]], count: int) -> list[Summary]:
    if any(len(r) != count for r in per_rank):
        raise SummaryError("ranks passed different numbers of summaries to the merge")
    merged = [s.copy() for s in per_rank[0]]
    for other in per_rank[1:]:
        for m, s in zip(merged, other):
            m.merge(s)
    return merged


def all_reduce(summaries: Sequence[Summary], group: Any = None, device: torch.device | str | None = None) -> list[Summary]:
    """Merges each summary across all ranks of a ``torch.distributed`` group, on every rank.

    One tiny ``all_reduce`` (MAX of the pack lengths) and one ``all_gather`` of the padded packs,
    however many summaries there are. The inputs are not modified.

    Args:
        summaries: this rank's summaries; every rank passes the same number, in the same order.
        group: process group (None for the default group).
        device: device of the exchanged tensors (``"cuda"`` for NCCL); default CPU.

    Raises:
        SummaryError: if ranks pass different numbers or kinds of summaries.
    """
    device = torch.device("cpu") if device is None else torch.device(device)
    padded = _padded_pack(summaries, group, device)
    gathered = [torch.empty_like(padded) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, padded, group=group)
    return _merged([unpack(t) for t in gathered], len(summaries))


def merge_to_main(summaries: Sequence[Summary], group: Any = None, device: torch.device | str | None = None) -> list[Summary] | None:
    """Merges each summary of every rank into rank 0's: the merged list there, None elsewhere.

    One process (no process group): the summaries themselves. Otherwise one tiny ``all_reduce``
    and one ``gather`` of the padded packs to rank 0. Counts and buckets merge exactly, moments
    with the exact pairwise formulas in rank order, so the result does not depend on timing.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size(group) == 1:
        return list(summaries)
    device = torch.device("cpu") if device is None else torch.device(device)
    padded = _padded_pack(summaries, group, device)
    main = dist.get_rank(group) == 0
    gathered = [torch.empty_like(padded) for _ in range(dist.get_world_size(group))] if main else None
    dist.gather(padded, gathered, dst=0, group=group)
    return _merged([unpack(t) for t in gathered], len(summaries)) if main else None
